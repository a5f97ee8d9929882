"""Trace, slim and prune models a user would prune: timm and torchvision classifiers.

For every model: trace it, plant dead channels (a random half of every group's removable units,
zeroed in the masked model), slim a copy and check it computes what the masked model computes on
two input sizes; then the share of parameters a Pruner at ratio 0.5 removes (``prune_now``), beside
Torch-Pruning's at the same ratio when it is installed. A model that cannot be pruned exactly is
refused: the table says why (the main reason channels stay). timm and torchvision are optional:
their models are skipped when they are not installed.

Rows go to ``benchmarks/results/zoo.jsonl`` (``--out``), the docs' table is ``render`` of them.

    python -m benchmarks.zoo                     # every model, a markdown table
    python -m benchmarks.zoo --models resnet18 efficientnet_lite0
    python -m benchmarks.zoo --smoke             # one small torchvision model (seconds)
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

import assl

from . import cli
from ._internals import max_rel_err
from .results import Writer, read
from .tables import markdown, provenance

NAME = "zoo"

TIMM = [
    "efficientnet_lite0",
    "efficientnet_b0",
    "mobilenetv4_conv_small",
    "cspresnet50",
    "repvgg_a0",
    "mobileone_s0",
    "gernet_s",
    "ese_vovnet19b_dw",
    "dpn68",
    "nf_resnet26",
    "convnext_atto",
    "rexnet_100",
    "lcnet_050",
    "regnety_002",
]
TORCHVISION = [
    "resnet18",
    "resnet50",
    "resnet50_frozen_bn",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "densenet121",
]
SCHEDULE = assl.Schedule(align_iters=0, reg_interval=2, reg_step=0.2, reg_limit=0.3, stabilize_iters=2)


def _builders() -> dict[str, Callable[[], nn.Module]]:
    out: dict[str, Callable[[], nn.Module]] = {}
    try:
        import timm  # type: ignore[import-not-found]
    except ImportError:
        print("timm is not installed: its models are skipped", file=sys.stderr)
    else:
        for name in TIMM:
            out[f"timm/{name}"] = lambda name=name: timm.create_model(name, pretrained=False, num_classes=10)
    try:
        import torchvision  # type: ignore[import-not-found]
        from torchvision.ops.misc import FrozenBatchNorm2d  # type: ignore[import-not-found]
    except ImportError:
        print("torchvision is not installed: its models are skipped", file=sys.stderr)
    else:
        for name in TORCHVISION:
            if name.endswith("_frozen_bn"):
                base = getattr(torchvision.models, name.removesuffix("_frozen_bn"))
                out[f"tv/{name}"] = lambda base=base: base(weights=None, num_classes=10, norm_layer=FrozenBatchNorm2d)
            else:
                out[f"tv/{name}"] = lambda name=name: getattr(torchvision.models, name)(weights=None, num_classes=10)
    return out


@torch.no_grad()
def _randomize(model: nn.Module) -> nn.Module:
    """Non-trivial norm statistics and affine parameters, so that the exactness check means something."""
    for m in model.modules():
        for name, lo, hi in (("weight", 0.5, 1.5), ("bias", -0.5, 0.5), ("running_mean", -0.5, 0.5)):
            t = getattr(m, name, None)
            if isinstance(t, torch.Tensor) and t.ndim == 1 and hasattr(m, "running_var"):
                t.uniform_(lo, hi)
        rv = getattr(m, "running_var", None)
        if isinstance(rv, torch.Tensor):
            rv.uniform_(0.5, 1.5)
        gamma = m._parameters.get("gamma")  # layer scales start near 0 (ConvNeXt: 1e-6)
        if gamma is not None:
            gamma.uniform_(0.5, 1.5)
    return model.eval()


def _half_plan(graph: assl.Graph, seed: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    plan = {}
    for g in graph.groups:
        units = rng.permutation(np.flatnonzero(g.prunable)).tolist()
        chosen = g.pick(units, len(units) // 2)
        if chosen:
            plan[g.name] = chosen
    return plan


def _main_reason(graph: assl.Graph) -> str:
    counts: dict[str, tuple[int, str]] = {}
    for g in graph.groups:
        for reason in g.reasons.values():
            kind = re.sub(r"\(at [^)]*\)|at \S+:\d+", "", re.sub(r"`[^`]*`", "`..`", reason))
            n, example = counts.get(kind, (0, reason))
            counts[kind] = (n + 1, example)
    if not counts:
        return ""
    n, example = max(counts.values())
    return f"{n} units: {example[:110]}"


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _assl_removed(model: nn.Module, x: torch.Tensor) -> tuple[float, str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            small = assl.Pruner(copy.deepcopy(model), x, ratio=0.5, schedule=SCHEDULE).prune_now()
        except ValueError as e:
            return 0.0, str(e).splitlines()[0][:80]
    said = next((str(w.message) for w in caught if issubclass(w.category, UserWarning)), "")
    return 1 - _params(small) / _params(model), ("warns: " + said[:80]) if said else ""


def _tp_child(model: nn.Module, x: torch.Tensor, queue: Any) -> None:  # pragma: no cover - optional
    import torch_pruning as tp  # type: ignore[import-not-found]

    last = [mod for mod in model.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))][-1]
    dense = _params(model)
    try:
        pruner = tp.pruner.MetaPruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5, ignored_layers=[last]
        )
        pruner.step()
        with torch.no_grad():
            model(x)
        queue.put(1 - _params(model) / dense)
    except Exception as e:
        queue.put(f"fails ({type(e).__name__})")


def _tp_removed(model: nn.Module, x: torch.Tensor, timeout: float) -> str:  # pragma: no cover - optional
    """Torch-Pruning's share at ratio 0.5, in a child process (it does not return on some models)."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_tp_child, args=(copy.deepcopy(model), x, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return f"no result in {timeout:.0f} s"
    result = queue.get(timeout=5) if not queue.empty() else f"fails (exit code {proc.exitcode})"
    return _pct(result) if isinstance(result, float) else result


def run(name: str, build: Callable[[], nn.Module], size: int, tp: bool) -> dict[str, Any]:
    """Trace, check slimmed == masked on two input sizes, prune at ratio 0.5 with assl and Torch-Pruning.

    ``size``: the input's height and width; a negative size is a model that takes only that size
    (its second check input is a batch of two of the same size instead of another size).
    """
    torch.manual_seed(0)
    model = _randomize(build())
    fixed, size = size < 0, abs(size)
    x = torch.randn(1, 3, size, size)
    second = torch.randn(3, 3, size, size) if fixed else torch.randn(1, 3, size + 32, size - 16)
    if not fixed and not _runs(model, second):  # the model's own code needs other sizes (divisible by 32, ...)
        second = torch.randn(1, 3, size + 64, size + 32)
        if not _runs(model, second):
            second = torch.randn(3, 3, size, size)
    others = [torch.randn(2, 3, size, size), second]
    t0 = time.perf_counter()
    graph = assl.trace(model, x)
    traced = time.perf_counter() - t0
    units = sum(g.size for g in graph.groups)
    prunable = sum(g.num_prunable for g in graph.groups)
    row: dict[str, Any] = {"model": name, "params": _params(model), "trace_s": traced, "units": units}
    row["prunable"] = prunable / units
    plan = _half_plan(graph, seed=0)
    if plan:
        masked = assl.masked_copy(model, graph, plan)
        small = assl.apply_plan(copy.deepcopy(model), graph, plan)
        row["err"] = max(max_rel_err(masked, small, o) for o in others)
        row["changes"] = max_rel_err(model, masked, others[0])  # the planted channels matter
        row["exact"] = row["err"] <= 1e-4
    else:
        row["err"], row["changes"], row["exact"] = None, None, None
    row["assl"], row["note"] = _assl_removed(model, x)
    row["tp"] = _tp_removed(model, x, timeout=120) if tp else "-"
    row["reason"] = _main_reason(graph)
    return row


SUBSTANTIVE = 0.1
"""A model is substantively pruned when ratio 0.5 removes at least this share of its parameters."""


def outcome(v: dict[str, Any]) -> str:
    """What a user gets from a model at ratio 0.5: substantively pruned, exact but nearly unchanged
    (with or without a word about it), refused, or different from the masked model."""
    if v.get("error"):
        return "error"
    if v["exact"] is False:
        return "differs"
    if v["exact"] is None or not v["assl"]:
        return "refused"
    if v["assl"] >= SUBSTANTIVE:
        return "substantive"
    return "under 10%, warned" if v["note"].startswith("warns") else "under 10%, silent"


OUTCOMES = ("substantive", "under 10%, warned", "under 10%, silent", "refused", "differs", "error")


def _sampled(count: int, seed: int, max_params: float) -> Iterator[tuple[str, nn.Module, int]]:
    """``count`` timm models drawn at random from its registry (``seed``), built one at a time,
    with their input size.

    Models over ``max_params`` parameters (counted on the meta device, without memory), or that do
    not build or run on one random image on this machine, are drawn past (and reported on
    stderr). The size is 64 unless the model's configuration fixes its input size (then that
    size, negated; see :func:`run`), or a 64x64 image does not run (then its configured size).
    """
    import random

    import timm  # type: ignore[import-not-found]

    names = timm.list_models()
    random.Random(seed).shuffle(names)
    drawn = 0
    for name in names:
        if drawn == count:
            return
        try:
            with torch.device("meta"):
                size = _params(timm.create_model(name, pretrained=False, num_classes=10))
            if size > max_params:
                print(f"{name}: {size / 1e6:.0f}M parameters, over --max_params", file=sys.stderr)
                continue
            model = timm.create_model(name, pretrained=False, num_classes=10).eval()
        except Exception as e:  # any model the registry cannot build here is drawn past
            print(f"{name}: not built ({type(e).__name__})", file=sys.stderr)
            continue
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        native = int(cfg.get("input_size", (3, 224, 224))[-1])
        for size in [-native] if cfg.get("fixed_input_size") else [64, native]:
            try:
                with torch.no_grad():
                    model(torch.randn(1, 3, abs(size), abs(size)))
            except Exception:  # too small an input for this model: try the next size
                continue
            drawn += 1
            yield f"timm/{name}", model, size
            break
        else:
            print(f"{name}: does not run on a random image", file=sys.stderr)


def render_sample(rows: list[dict]) -> str:
    """The docs' table of ``--sample`` runs: per version of the library (``--label``), how many of the
    drawn models end in each :func:`outcome`, then each model's outcome per version."""
    labels = list(dict.fromkeys(r["settings"]["label"] for r in rows))
    by = {
        label: {r["values"]["model"]: r["values"] for r in rows if r["settings"]["label"] == label} for label in labels
    }
    models = list(dict.fromkeys(r["values"]["model"] for r in rows))
    summary = []
    for label in labels:
        got = [outcome(v) for v in by[label].values()]
        summary.append([label, len(got), *(f"{got.count(o)} ({100 * got.count(o) / len(got):.0f}%)" for o in OUTCOMES)])
    detail = []
    for m in models:
        cells = [m, f"{next(by[label][m] for label in labels if m in by[label])['params'] / 1e6:.2f}M"]
        for label in labels:
            v = by[label].get(m)
            cells.append("-" if v is None else f"{outcome(v)} ({_pct(v['assl'])})")
        detail.append(cells)
    s0 = rows[0]["settings"]
    return "\n".join(
        [
            provenance(rows, ("timm",))
            + f" {len(models)} models drawn from timm's registry (seed {s0['sample_seed']}, at most "
            f"{s0['max_params'] / 1e6:.0f}M parameters); substantive: at least {100 * SUBSTANTIVE:.0f}% of the "
            "parameters removed at ratio 0.5.",
            "",
            markdown(["library", "models", *OUTCOMES], summary),
            "",
            markdown(["model", "params", *(f"{label}: outcome (removed at 0.5)" for label in labels)], detail),
        ]
    )


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the dense model's own forward accepts ``x``."""
    try:
        with torch.no_grad():
            model(x)
    except Exception:  # an input size the model's code does not take
        return False
    return True


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _cells(v: dict[str, Any]) -> list[str]:
    if v["exact"] is None:
        exact = "refused: nothing removable"
    else:
        exact = f"{'exact' if v['exact'] else 'DIFFERS'} ({v['err']:.1e}; plan changes {v['changes']:.2f})"
    note = f" ({v['note']})" if v["note"] else ""
    return [
        v["model"],
        f"{v['params'] / 1e6:.2f}M",
        f"{_pct(v['prunable'])} of {v['units']}",
        exact,
        f"{_pct(v['assl'])}{note}",
        v["tp"],
        v["reason"].replace("|", "\\|"),
    ]


HEADER = [
    "model",
    "params",
    "units prunable",
    "slimmed == masked (rel. err)",
    "removed at 0.5",
    "Torch-Pruning at 0.5",
    "main reason channels stay",
]


def render(rows: list[dict]) -> str:
    """The docs' table of a results file of this benchmark."""
    vals = [r["values"] for r in rows]
    tp = any(v["tp"] != "-" for v in vals)
    exact = sum(v["exact"] is True for v in vals)
    refused = sum(v["exact"] is None for v in vals)
    errs = [v["err"] for v in vals if v["err"] is not None]
    worst = f"; largest relative error {max(errs):.1e}" if errs else ""
    return "\n".join(
        [
            provenance(rows, ("timm", "torchvision", "torch-pruning") if tp else ("timm", "torchvision"))
            + f" {len(vals)} models: {exact} exact, {refused} refused, {len(vals) - exact - refused} differing{worst}; "
            "shares are of the dense model's parameters.",
            "",
            markdown(HEADER, [_cells(v) for v in vals]),
        ]
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every model (or ``--models``); append the rows to ``--out``, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=None, help="names (without the timm/ or tv/ prefix) to run")
    p.add_argument("--size", type=int, default=64, help="input height and width of the trace")
    p.add_argument("--smoke", action="store_true", help="one small torchvision model")
    p.add_argument("--sample", type=int, default=0, help="instead: this many models drawn from timm's registry")
    p.add_argument("--sample_seed", type=int, default=0, help="the draw's seed")
    p.add_argument("--max_params", type=float, default=30e6, help="draw past sampled models larger than this")
    p.add_argument("--label", default="this version", help="names the library version in a --sample table")
    p.add_argument("--no-torch-pruning", dest="torch_pruning", action="store_false", help="leave Torch-Pruning out")
    cli.add_output(p, NAME)
    args = cli.parse(p, argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    builders = _builders()
    if args.smoke:
        builders = {k: v for k, v in builders.items() if k == "tv/shufflenet_v2_x0_5"}
    elif args.models:
        builders = {k: v for k, v in builders.items() if k.split("/", 1)[1] in args.models}
    try:
        import torch_pruning  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        tp = False
    else:
        tp = args.torch_pruning
    writer = Writer(cli.output_path(args, NAME), NAME, args, append=args.append)
    if args.sample:
        return _run_sample(args, writer, tp)
    try:
        for name, build in builders.items():
            r = writer.write(run(name, build, args.size, tp))["values"]
            print("| " + " | ".join(_cells(r)) + " |", flush=True)
            if r["exact"] is False:
                raise SystemExit(f"{name}: the slimmed model differs from the masked one")
    finally:
        torch.set_num_threads(threads)
    return _printed(writer, render)


def _run_sample(args: argparse.Namespace, writer: Writer, tp: bool) -> list[dict]:
    try:
        import timm  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        print("timm is not installed: --sample draws from its registry", file=sys.stderr)
        return []
    drawn = _sampled(args.sample, args.sample_seed, args.max_params)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, model, size in drawn:
            try:
                values = run(name, lambda m=model: m, size, tp)
            except assl.ASSLError as e:  # refused by the trace itself
                values = {"model": name, "params": _params(model), "exact": None, "err": None, "changes": None}
                values.update(assl=0.0, note=str(e).splitlines()[0][:80], tp="-", reason=str(e).splitlines()[0][:110])
            except Exception as e:  # a crash is a result here: the table shows it
                values = {"model": name, "params": _params(model), "exact": None, "err": None, "changes": None}
                values.update(assl=0.0, note="", tp="-", reason="", error=f"{type(e).__name__}: {str(e)[:200]}")
            values["size"] = size
            writer.write(values)
            print(f"{name}: {outcome(values)} ({_pct(values['assl'])})", flush=True)
    finally:
        torch.set_num_threads(threads)
    return _printed(writer, render_sample)


def _printed(writer: Writer, table: Callable[[list[dict]], str]) -> list[dict]:
    """The rows this run wrote, after printing their ``table``."""
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    if rows:
        print(table(rows))
    return rows


if __name__ == "__main__":
    main()
