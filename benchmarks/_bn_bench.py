"""What ``bn_classifier.py`` and ``bn_denoiser.py`` share: flags, the methods compared, the seed sweep.

Each benchmark describes its network and data as a :class:`Task`; this module trains the dense
model once per seed, prunes a copy of it with every method at every ratio, gives every method the
same number of optimizer steps after the dense model, and writes the table, the raw rows (JSON)
and a plot of the score against the steps taken.

Methods, at equal steps ``T = prune_iters + finetune_iters`` after the dense model:

* ``assl``: ``Schedule.for_steps(prune_iters)`` with the trace's groups aligned, ``slim()``, then
  ``T - (steps the schedule took)`` fine-tuning steps;
* ``assl_noalign``: the same with ``for_steps(prune_iters, align=False)``;
* ``l1``: one-shot ``prune_now("l1")`` of the dense model, then ``T`` fine-tuning steps;
* ``tp_groupnorm``: Torch-Pruning's GroupNormPruner (its defaults: ``reg=1e-4``, group L2
  importance) regularizing for ``prune_iters`` steps, pruning at the same ratio, then
  ``finetune_iters`` steps; skipped with a note when ``torch_pruning`` is not installed, and
  reported as failed, with its error, when it crashes on the network;
* ``scratch``: the slim architecture of ``l1``, re-initialized, trained for the dense steps plus ``T``.

Every method uses Adam on all parameters (the Pruner needs no param group of its own), a fresh
one after slimming. ``--lr_schedule finetune`` (default): ASSL's schedule and TP's regularization
run at ``--lr``, and each method's last phase (fine-tuning; scratch's and the dense model's whole
training) anneals from ``--lr`` to zero on a cosine, as in the usual prune-then-fine-tune recipe.
``--lr_schedule whole``: one cosine over the ``T`` steps after the dense model, which pruning
shares with fine-tuning (scratch: one cosine over all of its steps). Either way every method
ends on an annealed learning rate, so the scores compared are not those of a noisy last step.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _sr_bench import figure, mean_sd, save, spread

import assl
from assl._slim import max_rel_err

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
METHODS = ("assl", "assl_noalign", "l1", "tp_groupnorm", "scratch")


@dataclass
class Task:
    """A network and its data, as the methods see them.

    Attributes:
        name: For the header of the output, e.g. ``"BN ResNet on digits"``.
        metric: The score's name in the table, e.g. ``"accuracy"``.
        digits: Decimals of the score in the table.
        build: A fresh dense model (seeded by the caller).
        batches: ``seed -> (input, target)`` training batches, forever.
        loss: ``(output, target) -> scalar``.
        score: The model's score on the held-out data (higher is better); called in eval mode.
        example: Real inputs for the Pruner: tracing, liveness and slim()'s check.
        macs_input: One input for the MACs count, and ``macs_factor`` x that count is reported.
        macs_unit: The MACs column's header, e.g. ``"MMACs / image"``.
        output_layers: The layers that make the model's output (Torch-Pruning must leave them).
        notes: Lines for under the table (e.g. the score of a trivial baseline).
    """

    name: str
    metric: str
    digits: int
    build: Callable[[], nn.Module]
    batches: Callable[[int], Batches]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    score: Callable[[nn.Module], float]
    example: torch.Tensor
    macs_input: torch.Tensor
    macs_factor: float
    macs_unit: str
    output_layers: Callable[[nn.Module], list[nn.Module]]
    notes: list[str] = field(default_factory=list)


def build_parser(description: str | None, defaults: dict, *, methods: bool = True) -> argparse.ArgumentParser:
    """The flags both benchmarks take; ``defaults`` sets the task's own values of the sizes.

    ``methods=False`` leaves out ``--methods`` and ``--tp_reg`` (for a study that runs ASSL only).
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few minutes: fewer steps, 1 seed")
    p.add_argument("--smoke", action="store_true", help="seconds: used by the test suite")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.75], help="fractions of channels removed")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--batch_size", type=int)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, for every method and phase")
    p.add_argument("--dense_iters", type=int, help="steps of the dense model")
    p.add_argument("--prune_iters", type=int, help="ASSL's schedule (Schedule.for_steps) and TP's regularization")
    p.add_argument("--finetune_iters", type=int, help="fine-tuning steps after ASSL and TP (L1 gets both budgets)")
    p.add_argument("--eval_every", type=int, help="score every this many steps for the plot (0: only at the ends)")
    p.add_argument(
        "--lr_schedule",
        default="finetune",
        choices=("finetune", "whole"),
        help="a cosine over each method's fine-tuning (pruning at --lr), or one over all steps after the dense model",
    )
    if methods:
        p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
        p.add_argument("--tp_reg", type=float, default=1e-4, help="GroupNormPruner's reg (its default)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    p.add_argument("--out", default=None, help="folder for the table, the JSON rows and the plots")
    p.set_defaults(**defaults)
    return p


def parse_args(p: argparse.ArgumentParser, argv: list[str] | None, quick: dict, smoke: dict) -> argparse.Namespace:
    """Parse with ``--quick`` / ``--smoke`` as defaults: flags given explicitly still win."""
    pre, _ = p.parse_known_args(argv)
    if pre.quick:
        p.set_defaults(**quick)
    if pre.smoke:
        p.set_defaults(**smoke)
    a = p.parse_args(argv)
    if any(not 0 < r < 1 for r in a.ratios):
        p.error(f"--ratios must lie in (0, 1), got {a.ratios}")
    if a.prune_iters < 10:
        p.error("--prune_iters must be at least 10 (Schedule.for_steps needs a few steps per phase)")
    return a


def describe(task: Task, a: argparse.Namespace) -> str:
    """One line on the task, budget and machine."""
    return (
        f"{task.name}: {a.dense_iters} dense steps, then {a.prune_iters} + {a.finetune_iters} steps per method, "
        f"batch {a.batch_size}, Adam {a.lr:g} ({a.lr_schedule} cosine), ratios {a.ratios}, {a.seeds} seeds, "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


# --------------------------------------------------------------------------- training


def _score(task: Task, model: nn.Module) -> float:
    """``task.score`` in eval mode, without gradients; the model's mode is restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(task.score(model))
    finally:
        model.train(was)


def cosine(lr: float, start: int, length: int) -> Callable[[int], float]:
    """The learning rate of step ``k``: a cosine from ``lr`` at ``start`` to 0 at ``start + length``."""
    return lambda k: 0.5 * lr * (1 + math.cos(math.pi * min(max(k - start, 0), length) / max(length, 1)))


def train(
    task: Task,
    model: nn.Module,
    stream: Batches,
    steps: int,
    lr: Callable[[int], float],
    *,
    first: int = 0,
    pruner: assl.Pruner | None = None,
    before_step: Callable[[], None] | None = None,
    curve: list | None = None,
    every: int = 0,
) -> int:
    """Up to ``steps`` Adam steps (fewer when ``pruner`` is done); returns the steps taken.

    Steps are numbered from ``first`` on: step ``k`` runs at learning rate ``lr(k)``, and every
    ``every``-th one puts ``(k + 1, score)`` into ``curve``. ``before_step``: called between
    ``backward()`` and the optimizer step.
    """
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr(first))
    if pruner is not None:
        pruner.attach(opt)
    done = 0
    while done < steps and not (pruner is not None and pruner.done):
        for group in opt.param_groups:
            group["lr"] = lr(first + done)
        x, y = next(stream)
        loss = task.loss(model(x), y)
        if pruner is not None:
            loss = loss + pruner.alignment_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if before_step is not None:
            before_step()
        opt.step()
        done += 1
        if curve is not None and every and (first + done) % every == 0:
            curve.append((first + done, _score(task, model)))
    if pruner is not None:
        pruner.detach()
    return done


def size(task: Task, model: nn.Module) -> tuple[int, float]:
    """Parameters, and MACs of ``task.macs_input`` times ``task.macs_factor``."""
    graph = assl.trace(model, task.macs_input)
    return sum(p.numel() for p in model.parameters()), graph.count_macs() * task.macs_factor


def _reinit(model: nn.Module) -> nn.Module:
    """Fresh weights (and BatchNorm statistics) for every layer that has ``reset_parameters``, then
    the model's own ``init_weights()`` if it has one (as its constructor does)."""
    for m in model.modules():
        if m is not model and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    if hasattr(model, "init_weights"):
        model.init_weights()
    return model


def _torch_pruning(
    task: Task, model: nn.Module, ratio: float, a: argparse.Namespace, stream: Batches, lr: Callable, curve: list
) -> tuple[nn.Module, int]:
    """Torch-Pruning's GroupNormPruner: regularize ``prune_iters`` steps, then prune ``model`` in place."""
    import torch_pruning as tp  # type: ignore[import-not-found]

    for m in model.modules():  # its tracer loses the layers behind in-place ReLUs (same function)
        if isinstance(m, nn.ReLU):
            m.inplace = False
    pruner = tp.pruner.GroupNormPruner(
        model,
        task.example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        reg=a.tp_reg,
        pruning_ratio=ratio,
        ignored_layers=task.output_layers(model),
    )
    regularize = lambda: pruner.regularize(model)  # noqa: E731
    used = train(task, model, stream, a.prune_iters, lr, before_step=regularize, curve=curve, every=a.eval_every)
    pruner.step()
    return model, used


def run_method(
    task: Task,
    method: str,
    dense: nn.Module,
    ratio: float,
    a: argparse.Namespace,
    seed: int,
    *,
    schedule: assl.Schedule | None = None,
    observe: Callable[[assl.Pruner], Callable[[], None]] | None = None,
) -> dict:
    """Prune a copy of ``dense`` with ``method`` at ``ratio``, fine-tune it to the common step count, score it.

    The row holds the score right after slimming (``before``; NaN for scratch) and at the end
    (``after``), params, MACs, the steps taken after the dense model, and ``curve``: ``(step,
    score)`` pairs, steps counted from the dense model (scratch's first ``dense_iters`` are negative).
    For ASSL also the score at the end of the schedule with the chosen channels still there
    (``before_slim``), the liveness of the chosen channels before slimming, per group and the
    largest, and how much slimming changed the output on the example inputs.

    ASSL only: ``schedule`` replaces ``Schedule.for_steps(prune_iters, align=method == "assl")``;
    ``observe(pruner)``, called once the Pruner is built, returns what to call before each of the
    schedule's optimizer steps (after ``backward()``, before the penalty), e.g. to read the scales.
    Neither draws random numbers, so the runs stay paired with the other methods'.
    """
    torch.manual_seed(seed + 1000)
    model = copy.deepcopy(dense)
    stream = task.batches(seed + 2000)
    total = a.prune_iters + a.finetune_iters
    whole = a.lr_schedule == "whole"
    lr = cosine(a.lr, 0, total) if whole else (lambda k: a.lr)
    curve: list = []
    extra: dict = {}
    t0 = time.time()
    used = 0
    if method in ("assl", "assl_noalign"):
        if schedule is None:
            schedule = assl.Schedule.for_steps(a.prune_iters, align=method == "assl")
        pruner = assl.Pruner(model, task.example, ratio=ratio, schedule=schedule)
        hook = observe(pruner) if observe is not None else None
        used = train(
            task, model, stream, a.prune_iters, lr, pruner=pruner, before_step=hook, curve=curve, every=a.eval_every
        )
        alive = pruner.liveness()
        extra = {"liveness": max(alive.values(), default=0.0), "liveness_groups": alive, "aligned": pruner.aligned}
        extra["before_slim"] = _score(task, model)
        small = pruner.slim()
        extra["slim_change"] = max_rel_err(model, small, task.example)
    elif method == "tp_groupnorm":
        try:
            small, used = _torch_pruning(task, model, ratio, a, stream, lr, curve)
            small(task.example)
        except Exception as e:  # a pruner that fails on this network is a result too: report it, go on
            error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
            print(f"# {method} failed at ratio {ratio:g}: {error}", flush=True)
            return {"method": method, "ratio": ratio, "seed": seed, "error": error, "wall_s": time.time() - t0}
    else:
        small = assl.Pruner(model, task.example, ratio=ratio).prune_now("l1")
    if method == "scratch":
        small, before = _reinit(small), math.nan
        used = -a.dense_iters  # trained for the dense steps as well, on one schedule
        lr = cosine(a.lr, used, a.dense_iters + total)
    else:
        before = _score(task, small)
        curve.append((used, before))
        lr = lr if whole else cosine(a.lr, used, total - used)
    train(task, small, stream, total - used, lr, first=used, curve=curve, every=a.eval_every)
    after = _score(task, small)
    curve.append((total, after))
    params, macs = size(task, small)
    row = {"method": method, "ratio": ratio, "seed": seed, "before": before, "after": after, "params": params}
    row.update(macs=macs, steps=total, wall_s=time.time() - t0, curve=curve, **extra)
    return row


def train_dense(task: Task, a: argparse.Namespace, seed: int) -> tuple[nn.Module, dict]:
    """The dense model of ``seed`` and its table row."""
    torch.manual_seed(seed)
    dense = task.build()
    t0 = time.time()
    train(task, dense, task.batches(seed), a.dense_iters, cosine(a.lr, 0, a.dense_iters))
    score = _score(task, dense)
    params, macs = size(task, dense)
    row = {"method": "dense", "ratio": 0.0, "seed": seed, "before": score, "after": score, "params": params}
    row.update(macs=macs, wall_s=time.time() - t0)
    return dense, row


def torch_pruning_missing() -> bool:
    return importlib.util.find_spec("torch_pruning") is None


def sweep(
    task: Task, a: argparse.Namespace, runs: Callable[[nn.Module, float, int], Iterable[dict]] | None = None
) -> tuple[list[dict], list[dict], list[str]]:
    """Every seed's dense model, then every run at every ratio; rows printed as JSON as they come.

    ``runs(dense, ratio, seed)`` yields the rows of one dense model at one ratio; by default every
    method of ``--methods`` (:func:`run_method`). Returns (rows, dense rows, notes).
    """
    notes = list(task.notes)
    if runs is None:
        methods = list(a.methods)
        if "tp_groupnorm" in methods and torch_pruning_missing():
            methods.remove("tp_groupnorm")
            notes.append("tp_groupnorm skipped: torch_pruning is not installed (pip install torch-pruning)")
            print(f"# {notes[-1]}", flush=True)
        runs = lambda dense, ratio, seed: (run_method(task, m, dense, ratio, a, seed) for m in methods)  # noqa: E731
    rows, dense_rows = [], []
    for seed in range(a.seeds):
        dense, row = train_dense(task, a, seed)
        dense_rows.append(row)
        print(json.dumps(row), flush=True)
        for ratio in a.ratios:
            for r in runs(dense, ratio, seed):
                rows.append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "curve"}), flush=True)
    return rows, dense_rows, notes


# --------------------------------------------------------------------------- reporting


def table(task: Task, a: argparse.Namespace, rows: list[dict], dense_rows: list[dict], notes: list[str]) -> str:
    """The markdown table (mean ± sd over seeds), the paired differences and the notes."""
    d, metric = task.digits, task.metric
    out = [
        f"| method | ratio | {metric} after slimming | {metric} after fine-tuning | params | {task.macs_unit} | "
        "liveness | wall s | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    dense = dense_rows
    out.append(
        f"| dense | 0 | - | {mean_sd([r['after'] for r in dense], d)} | {dense[0]['params']:,} | "
        f"{dense[0]['macs']:.3g} | - | {statistics.mean(r['wall_s'] for r in dense):.0f} | {len(dense)} |"
    )
    for ratio in a.ratios:
        for m in METHODS:
            rs = [r for r in rows if r["method"] == m and r["ratio"] == ratio]
            if not rs:
                continue
            if any("error" in r for r in rs):
                out.append(f"| {m} | {ratio:g} | failed: {rs[0]['error'][:100]} | - | - | - | - | - | {len(rs)} |")
                continue
            before = [r["before"] for r in rs if not math.isnan(r["before"])]
            live = [r["liveness"] for r in rs if "liveness" in r]
            out.append(
                f"| {m} | {ratio:g} | {mean_sd(before, d)} | {mean_sd([r['after'] for r in rs], d)} | "
                f"{rs[0]['params']:,} | {rs[0]['macs']:.3g} | {f'{max(live):.1e}' if live else '-'} | "
                f"{statistics.mean(r['wall_s'] for r in rs):.0f} | {len(rs)} |"
            )
    out += ["", *paired(task, a, rows)]
    out += [f"* {n}" for n in notes]
    return "\n".join(out)


def paired(task: Task, a: argparse.Namespace, rows: list[dict]) -> list[str]:
    """``assl`` minus each other method after fine-tuning, per seed (same dense model, same batches)."""
    ok = [r for r in rows if "error" not in r]
    others = [m for m in METHODS if m != "assl" and any(r["method"] == m for r in ok)]
    if not any(r["method"] == "assl" for r in rows) or not others:
        return []
    out = [
        f"assl minus each method, {task.metric} after fine-tuning, per seed:",
        "",
        "| ratio | " + " | ".join(others) + " |",
        "|---|" + "---|" * len(others),
    ]
    for ratio in a.ratios:
        by = {(r["method"], r["seed"]): r["after"] for r in ok if r["ratio"] == ratio}
        cells = []
        for m in others:
            diffs = [by[("assl", s)] - by[(m, s)] for s in range(a.seeds) if ("assl", s) in by and (m, s) in by]
            cells.append(", ".join(f"{v:+.{task.digits}f}" for v in diffs))
        out.append(f"| {ratio:g} | " + " | ".join(cells) + " |")
    return out


def plot(task: Task, rows: list[dict], dense_rows: list[dict], ratio: float, path: Path) -> None:
    """Mean score over seeds against steps after the dense model, per method (scratch: its last ``T`` steps)."""
    dense = {r["seed"]: r["after"] for r in dense_rows}
    with figure(path) as ax:
        for i, m in enumerate(METHODS):
            rs = [r for r in rows if r["method"] == m and r["ratio"] == ratio and "error" not in r]
            if not rs:
                continue
            runs = []
            for r in rs:
                start = [] if m in ("l1", "scratch") else [(0, dense[r["seed"]])]  # the dense model is step 0
                runs.append([(x, v) for x, v in start + r["curve"] if x >= 0 and not math.isnan(v)])
            # seeds share their steps; a step seen twice (before and after pruning) draws a vertical drop
            xs = [x for x, _ in runs[0]]
            ys = [statistics.mean(run[j][1] for run in runs) for j in range(len(xs))]
            ax.plot(xs, ys, marker=".", color=f"C{i}", label=m)
            last = [r["after"] for r in rs]
            ax.errorbar(xs[-1], statistics.mean(last), yerr=spread(last), fmt="none", ecolor="k", capsize=4)
        ax.axhline(statistics.mean(r["after"] for r in dense_rows), color="gray", ls="--", label="dense")
        ax.set_xlabel("optimizer steps after the dense model")
        ax.set_ylabel(f"{task.metric}, held-out")
        ax.set_title(f"{task.name}, ratio {ratio:g}")
        ax.legend(fontsize=8)


def main(task_factory: Callable[[argparse.Namespace], Task], stem: str, a: argparse.Namespace) -> list[dict]:
    """Run the sweep for the task ``task_factory(a)`` builds; print and write ``stem``.md/.json/-RATIO.png."""
    if a.threads:
        torch.set_num_threads(a.threads)
    task = task_factory(a)
    print(f"# {describe(task, a)}", flush=True)
    t0 = time.time()
    rows, dense_rows, notes = sweep(task, a)
    notes.append(f"total wall time {time.time() - t0:.0f} s")
    out = emit(a, stem, table(task, a, rows, dense_rows, notes), rows, dense_rows)
    for ratio in a.ratios if out else ():
        plot(task, rows, dense_rows, ratio, out / f"{stem}-{ratio:g}.png")
    return rows


def emit(a: argparse.Namespace, stem: str, text: str, rows: list[dict], dense_rows: list[dict]) -> Path | None:
    """Print ``text`` (no ``--out``), or save it with the rows under ``--out`` and return that folder."""
    if a.out is None:
        print(text)
        return None
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    save(out, stem, text, a, rows, dense_rows)
    return out
