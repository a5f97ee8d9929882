"""The alignment studies: does the alignment phase align a group's layers, and does aligning help?

``alignment_study`` (LEDSR) and ``bn_alignment_study`` (the BatchNorm ResNet classifier) are this
study on two tasks. For every ratio, every setting of ``--settings`` starts from a copy of the
same dense model per seed, sees the same batches and gets the same optimizer steps
(:func:`benchmarks.methods.run_method`), and is compared with the weight-0 control. A setting is
``noalign`` (``Schedule.for_steps(prune_iters, align=False)``: no alignment phase) or
``LOSS:WEIGHT`` (``align_loss=LOSS, align_weight=WEIGHT``); weight 0 runs the same alignment
steps as plain training. The measurements draw no random numbers, so ``noalign`` and
``consensus:1`` are the ``assl_noalign`` and ``assl`` methods of the quality benchmarks with the
same flags.

Measured per aligned group (several layers whose outputs are added) and as their mean:

* ``agreement``: ``Pruner.alignment_agreement()``, the mean over pairs of a group's carriers of
  the overlap of the channels each would keep on its own (top ``n - k`` of its scales), when the
  Pruner is built and when it chooses the channels (the end of the alignment phase; at once for
  ``noalign``); chance is ``(n - k) / n``;
* ``removed share``: of each carrier's ``sum |scale|``, the share on the channels the group
  removes, when they are chosen (chance ``k / n``);
* ``g drift``: mean ``|change of |scale||`` over the alignment phase, against the mean ``|scale|``;
* ``left g``: at the end of the schedule, the mean ``|scale|`` of the removed channels over that
  of the kept ones (0: removing them changes nothing);
* ``spread``: the carriers' ``sd / mean`` of ``|scale|`` over the group's channels at the start;
* ``grad ratio`` (where the study asks for it): ``||grad(align_weight * alignment term)|| /
  ||grad(task loss)||`` over the aligned groups' scales on the first batches;
* the score at the end of the schedule (channels still there), right after slimming, and after
  fine-tuning.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import assl

from . import cli, protocol
from ._internals import ALIGN_LOSSES, scale_of
from .method_table import data_packages
from .methods import assl_schedule, run_method
from .results import Writer, read
from .stats import mean_sd, paired, signed_with_mean
from .sweep import sweep
from .tables import markdown, provenance
from .tasks import Task, task_module
from .training import Batches

DEFAULT_SETTINGS = ["noalign", "consensus:0", "authors:1", "consensus:1", "consensus:10"]
CONTROL = "consensus:0"


def parse_setting(text: str) -> tuple[str, float] | None:
    """``"noalign"`` -> None, ``"LOSS:WEIGHT"`` -> (loss, weight)."""
    if text == "noalign":
        return None
    loss, _, weight = text.partition(":")
    if loss not in ALIGN_LOSSES or not weight:
        raise argparse.ArgumentTypeError(f"a setting is noalign or LOSS:WEIGHT, LOSS in {ALIGN_LOSSES}")
    return loss, float(weight)


def setting_arg(text: str) -> str:
    """An argparse ``type`` for settings: ``text`` once :func:`parse_setting` accepts it."""
    parse_setting(text)
    return text


def add_settings_flag(p: argparse.ArgumentParser) -> None:
    """``--settings``."""
    p.add_argument(
        "--settings",
        nargs="+",
        type=setting_arg,
        default=DEFAULT_SETTINGS,
        help="noalign or LOSS:WEIGHT (LOSS consensus or authors; weight 0: the plain-training control)",
    )


def removed_share(rows: torch.Tensor, removed: list[int]) -> float:
    """Mean over layers of the share of ``sum |g|`` that sits on the ``removed`` units."""
    idx = torch.as_tensor(removed, dtype=torch.long)
    return float((rows[:, idx].sum(1) / rows.sum(1)).mean())


def agreement_at_choice(row: dict) -> float:
    """A row's agreement when its channels were chosen: at the end of the alignment phase, or at the
    start for ``noalign`` (no alignment phase: it chooses at once)."""
    return row.get("agreement_end", row["agreement_start"])


def paired_with_control(
    rows: list[dict],
    columns: list[tuple[str, Callable[[dict], float], int]],
    control: str = CONTROL,
) -> str:
    """Each setting minus ``control`` per seed (same dense model, same batches), per ratio.

    ``columns``: ``(header, value of a row, decimals)``. A cell lists the per-seed differences in
    seed order, then their mean. Empty when the control was not run.
    """
    if not any(r["setting"] == control for r in rows):
        return ""
    body = []
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        at = [r for r in rows if r["ratio"] == ratio]
        base = {r["seed"]: r for r in at if r["setting"] == control}
        for setting in dict.fromkeys(r["setting"] for r in at):
            if setting == control:
                continue
            mine = {r["seed"]: r for r in at if r["setting"] == setting}
            cells = []
            for _, value, digits in columns:
                diffs = paired({s: value(r) for s, r in mine.items()}, {s: value(r) for s, r in base.items()})
                cells.append(signed_with_mean(diffs, digits))
            body.append([f"{ratio:g}", setting, *cells])
    return markdown(["ratio", "setting", *(f"{h} - control" for h, _, _ in columns)], body)


Column = Callable[[str, int], str]
"""``col(key, digits)``: the mean ± sd over a setting's runs of ``row[key]``."""


def by_setting(rows: list[dict]) -> Iterator[tuple[str, list[dict], Column, str]]:
    """Each setting in first-seen order: its rows, a column formatter, and its agreement cell
    (``start -> end``, or the start alone for ``noalign``)."""
    for setting in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == setting]

        def col(key: str, digits: int, rs: list[dict] = rs) -> str:
            return mean_sd([r[key] for r in rs if r.get(key) is not None], digits)

        agree = col("agreement_start", 3) + (" -> " + col("agreement_end", 3) if "agreement_end" in rs[0] else "")
        yield setting, rs, col, agree


def grad_ratio(pruner: assl.Pruner, model: nn.Module, task: Task, stream: Batches, batches: int = 4) -> float:
    """``||grad of the alignment term|| / ||grad of the task loss||`` on the aligned groups' scales."""
    scales = []
    for g in pruner.aligned:
        for n in pruner.graph.group(g).layers:
            scale = scale_of(model.get_submodule(n))
            if scale is None:
                raise ValueError(f"{n} carries no inserted scale: the gradient ratio is defined on scales only")
            scales.append(scale.scale)
    norm_align = _norm(torch.autograd.grad(pruner.alignment_loss(), scales))
    norms = []
    for _ in range(batches):
        x, y = next(stream)
        norms.append(_norm(torch.autograd.grad(task.loss(model(x), y), scales)))
    return norm_align / statistics.mean(norms)


def _norm(grads: tuple[torch.Tensor, ...]) -> float:
    """The L2 norm of ``grads`` taken together."""
    total = grads[0].new_zeros(())
    for g in grads:
        total = total + (g**2).sum()
    return float(torch.sqrt(total))


def _mean(values: dict[str, float]) -> float:
    return statistics.mean(values.values())


class Probe:
    """The measurements of the module docstring on one ASSL run (a :class:`benchmarks.methods.Observer`)."""

    def __init__(self, pruner: assl.Pruner, aligned: bool, grad: Callable[[], float] | None) -> None:
        if not pruner.aligned:
            raise SystemExit("no group of several layers loses channels at this ratio: nothing to align")
        self.pruner, self.aligned = pruner, aligned
        self.choice = pruner.schedule.align_iters if aligned else 0  # the scales after this many steps choose
        self.start = self._read()
        self.at_choice = self.start
        self.grad = grad() if aligned and grad is not None else None

    def _read(self) -> dict[str, Any]:
        p = self.pruner
        return {"agreement": p.alignment_agreement(), "rows": {g: p.unit_scales(g).cpu() for g in p.aligned}}

    def before_step(self) -> None:
        """Read the scales just before the step after the alignment phase."""
        if self.aligned and self.pruner.step_count == self.choice:
            self.at_choice = self._read()

    def end(self) -> dict[str, Any]:
        """The measurements, per group and as the mean over the aligned groups."""
        p = self.pruner
        if not p.done:
            raise SystemExit("the schedule needs more than --prune_iters steps: raise it")
        units = {g: p.graph.group(g).size for g in p.aligned}
        chosen, removed = p.chosen(), p.removed
        start, at_choice = self.start["rows"], self.at_choice["rows"]
        out: dict[str, Any] = {
            "groups": {g: {"units": units[g], "removed": removed[g], "carriers": p.carriers(g)} for g in units},
            "chance_groups": {g: (units[g] - removed[g]) / units[g] for g in units},
            "spread_groups": {g: float((start[g].std(1) / start[g].mean(1)).mean()) for g in units},
            "agreement_start_groups": self.start["agreement"],
            "removed_share_groups": {g: removed_share(at_choice[g], chosen[g]) for g in units},
            "left_g_groups": {},
        }
        for g in units:
            final = p.unit_scales(g).cpu()
            keep = torch.ones(final.shape[1], dtype=torch.bool)
            keep[chosen[g]] = False
            out["left_g_groups"][g] = float(final[:, ~keep].mean() / final[:, keep].mean())
        if self.aligned:
            out["agreement_end_groups"] = self.at_choice["agreement"]
            out["g_drift_groups"] = {g: float((at_choice[g] - start[g]).abs().mean() / start[g].mean()) for g in units}
        for key in [k for k in out if k.endswith("_groups")]:
            out[key[: -len("_groups")]] = _mean(out[key])
        if self.grad is not None:
            out["grad_ratio"] = self.grad
        return out


def run_setting(task: Task, setting: str, dense: nn.Module, ratio: float, a: argparse.Namespace, seed: int) -> dict:
    """One ASSL run of ``setting`` on a copy of ``dense``, with the measurements of the module docstring."""
    parsed = parse_setting(setting)
    loss, weight = parsed if parsed is not None else ("consensus", None)
    schedule = assl_schedule(a, align=weight is not None, align_loss=loss, align_weight=weight or 0.0)

    def probe(pruner: assl.Pruner, model: nn.Module) -> Probe:
        def grad() -> float:
            with torch.random.fork_rng(devices=[task.example.device] if task.example.is_cuda else []):
                return grad_ratio(pruner, model, task, task.batches(seed + 4000))

        return Probe(pruner, weight is not None, grad if a.grad_ratio else None)

    method = "assl" if weight is not None else "assl_noalign"
    row, _ = run_method(task, method, dense, ratio, a, seed, schedule=schedule, observe=probe)
    row.update(setting=setting, loss=loss if weight is not None else None, weight=weight)
    row["align_iters"] = schedule.align_iters if weight is not None else 0
    return row


def main(name: str, task_name: str, description: str, argv: list[str] | None, **defaults: Any) -> list[dict]:
    """Run study ``name`` on task ``task_name``; ``defaults`` override the task's (e.g. ``eval_split="val"``)."""
    p = protocol.parser(name, task_name, description, methods=False)
    add_settings_flag(p)
    p.add_argument(
        "--grad_ratio",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="measure the alignment term's gradient ratio",
    )
    p.set_defaults(**defaults)
    smoke = {"settings": ["noalign", "consensus:0", "consensus:10"], "prune_iters": 12} if task_name == "sr" else {}
    a = protocol.parse(p, argv, task_name, smoke=smoke)
    cli.set_threads(a.threads)
    task = task_module(task_name).build(a)
    writer = Writer(cli.output_path(a, name), name, a, append=a.append, device=getattr(a, "device", None))
    print(f"# {name}: {task.name}, settings {a.settings}, ratios {a.ratios}, {a.seeds} seeds", flush=True)

    def runs(dense: nn.Module, seed: int) -> Iterator[dict]:
        for ratio in a.ratios:
            for s in a.settings:
                yield run_setting(task, s, dense, ratio, a, seed)

    sweep(task, a, writer, runs)
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    return rows


def render(rows: list[dict]) -> str:
    """The docs' block of a study's results: per ratio the settings, per group the agreement, the paired table."""
    vals = [r["values"] for r in rows]
    dense = list({v["seed"]: v for v in vals if v["method"] == "dense"}.values())
    runs = [v for v in vals if v["method"] != "dense"]
    info = dense[0]["task"]
    d, label = info["digits"], info["metric_label"]
    grad = any("grad_ratio" in v for v in runs)
    s = rows[0]["settings"]
    out = [
        provenance(rows, data_packages(info))
        + f" {info['name']}: {s['dense_iters']} dense steps, then {s['prune_iters']} + "
        f"{s['finetune_iters']} steps per setting; dense {label} {mean_sd([v['score'] for v in dense], d)}; "
        "mean ± sd over seeds.",
    ]
    for ratio in dict.fromkeys(v["ratio"] for v in runs):
        at = [v for v in runs if v["ratio"] == ratio]
        chance = at[0]["chance"]
        header = ["setting", "align steps", *(["grad ratio"] if grad else []), "agreement start -> end"]
        header += ["removed share", "g drift", "left g", f"{label} before slim", "after slim", "after fine-tune"]
        body = []
        for setting, rs, col, agree in by_setting(at):
            body.append(
                [setting, rs[0]["align_iters"], *([col("grad_ratio", 3)] if grad else []), agree,
                 col("removed_share", 3), col("g_drift", 3), col("left_g", 3), col("score_before_slim", d),
                 col("score_slim", d), col("score", d)]
            )  # fmt: skip
        out += [
            "",
            f"Ratio {ratio:g} (chance agreement {chance:.3f}, chance removed share {1 - chance:.3f}; "
            f"{at[0]['params']:,} params; seeds {', '.join(str(v) for v in dict.fromkeys(v['seed'] for v in at))}):",
            "",
            markdown(header, body),
        ]
    groups = list(runs[0]["groups"])
    if len(groups) > 1:
        body = []
        for ratio in dict.fromkeys(v["ratio"] for v in runs):
            at = [v for v in runs if v["ratio"] == ratio]
            for setting, rs, _, _ in by_setting(at):
                cells = []
                for g in groups:
                    start = mean_sd([v["agreement_start_groups"][g] for v in rs], 3)
                    end = [v["agreement_end_groups"][g] for v in rs if "agreement_end_groups" in v]
                    cells.append(start + (f" -> {mean_sd(end, 3)}" if end else ""))
                body.append([f"{ratio:g}", setting, *cells])
        out += ["", "Agreement per aligned group, start -> when the channels are chosen:", ""]
        out.append(markdown(["ratio", "setting", *groups], body))
    columns = [
        ("agreement", agreement_at_choice, 3),
        (f"{label} before slim", lambda v: v["score_before_slim"], d),
        ("after slim", lambda v: v["score_slim"], d),
        ("after fine-tune", lambda v: v["score"], d),
    ]
    diffs = paired_with_control(runs, columns)
    if diffs:
        out += ["", f"Per seed, each setting minus the weight-0 control `{CONTROL}` (same dense model, same batches):"]
        out += ["", diffs]
    return "\n".join(out)
