"""Pruning to a latency: does the slimmed model meet the target on the device, against MAC budgets?

For each model, an :class:`assl.LatencyTable` is measured once on this device, and for each
target fraction of the dense latency three plans of the same model are built:

* ``latency``: ``assl.Budget(relative_latency=t)`` with ``round_to="auto"`` (per-group widths,
  checked by timing a slimmed copy when chosen, the library's default);
* ``macs, same prediction``: one ratio for every group (what a MAC or parameter budget gives),
  the smallest whose latency the same table predicts at the target: the best a MAC budget can
  do when it is told the right saving;
* ``macs = t x dense``: ``assl.Budget(macs=t * dense MACs)``: what one does without a table,
  taking MACs for time.

Each plan removes the units with the lowest filter L1 norms and is slimmed; the dense model and
the three slimmed ones are timed with the benchmarks' interleaved timer and their medians are
compared with the target. No training: this measures speed; quality at equal latency (ASSL
trained to each kind of budget) is ``benchmarks.latency_quality``.

    python -m benchmarks.latency_budget                                   # ~10 min of one CPU thread
    python -m benchmarks.latency_budget --models ledsr --targets 0.5      # one model, one target
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

import assl

from . import cli, networks
from ._internals import LatencyModel, l1_plan, resolve
from .macs import count_macs
from .results import Writer, read
from .stats import iqr
from .tables import markdown, provenance
from .timing import device_of, in_eval, model_call, time_calls

NAME = "latency_budget"


def ledsr() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """The quality benchmark's LEDSR (16 blocks, 64 features, x2) on one 64x64 image."""
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    return networks.build("ledsr", seed=0, blocks=16, feats=64).eval(), x, networks.LEDSR_SKIP


def resnet50() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """ResNet-50's stage layout and widths on one 128x128 image."""
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    return networks.build("resnet50_like", seed=0).eval(), x, []


def tiny() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """Seconds-sized, for ``--smoke``: wide enough for any width step."""
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    return networks.build("ledsr", seed=0, blocks=2, feats=64).eval(), x, networks.LEDSR_SKIP


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor, list[str]]]] = {
    "ledsr": ledsr,
    "resnet50": resnet50,
    "tiny": tiny,
}
LABELS = {"ledsr": "LEDSR", "resnet50": "ResNet-50", "tiny": "tiny"}


def uniform_plan(
    graph: assl.Graph, model: nn.Module, x: torch.Tensor, skip: list[str], ratio: float, round_to: int = 1
) -> dict[str, int]:
    """Units each group loses at one ratio for every group (no rounding by default), as a MAC budget does."""
    return resolve(graph, ratio, skip=skip, groups=None, round_to=round_to, model=model, example_inputs=x).removed


def same_prediction_ratio(
    graph: assl.Graph,
    model: nn.Module,
    x: torch.Tensor,
    skip: list[str],
    lm: LatencyModel,
    target: float,
    round_to: int = 1,
) -> float:
    """The smallest one ratio for every group whose plan (kept widths rounded up to multiples of
    ``round_to``) the table predicts at or below ``target`` seconds (bisection; 0.999 when none is)."""
    lo, hi = 0.0, 0.999

    def seconds(r: float) -> float:
        try:
            return lm.seconds(uniform_plan(graph, model, x, skip, r, round_to))
        except ValueError as e:  # a small ratio that the rounding brings back to full width
            if "nothing to prune" not in str(e):
                raise
            return lm.seconds({})

    if seconds(hi) > target:
        return hi
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if seconds(mid) <= target else (mid, hi)
    return hi


def same_prediction(
    graph: assl.Graph, model: nn.Module, x: torch.Tensor, skip: list[str], lm: LatencyModel, target: float
) -> dict[str, int]:
    """The one-ratio plan with the smallest ratio the table predicts at or below ``target`` (none
    removed when the table predicts even the dense model there)."""
    try:
        return uniform_plan(graph, model, x, skip, same_prediction_ratio(graph, model, x, skip, lm, target))
    except ValueError as e:
        if "nothing to prune" not in str(e):
            raise
        return {}


def slimmed(model: nn.Module, graph: assl.Graph, removed: dict[str, int]) -> nn.Module:
    """A slimmed copy without the ``removed[g]`` units of lowest filter L1 norm of each group."""
    return assl.apply_plan(copy.deepcopy(model), graph, l1_plan(model, graph, removed)).eval()


def run_model(name: str, a: argparse.Namespace, writer: Writer) -> list[dict]:
    """Measure the table of model ``name``, build and time the plans of every target; write a row per plan."""
    model, x, skip = MODELS[name]()
    t0 = time.perf_counter()
    table = assl.LatencyTable.measure(model, x, rounds=a.rounds)
    measure_s = time.perf_counter() - t0
    graph = assl.trace(model, x)
    lm = LatencyModel(table, graph)
    dense_macs = count_macs(model, x)
    dense_params = sum(p.numel() for p in model.parameters())
    dense = table.dense  # the measured dense latency: what Budget(relative_latency=) is a fraction of
    print(f"{name}: table in {measure_s:.0f} s, step {table.step}, dense {table.dense * 1e3:.2f} ms", flush=True)
    rows = []
    for target in a.targets:
        seconds = target * dense
        budget = assl.Budget(relative_latency=target, table=table)
        pruner = assl.Pruner(copy.deepcopy(model), x, budget=budget, round_to="auto", skip=skip)
        by_macs = assl.Budget(macs=int(target * graph.count_macs()))
        plans = {
            "latency": dict(pruner.removed),
            "macs, same prediction": same_prediction(graph, model, x, skip, lm, seconds),
            f"macs = {target} x dense": resolve(
                graph, by_macs, skip=skip, groups=None, round_to=1, model=model, example_inputs=x
            ).removed,
        }
        smalls = {k: slimmed(model, graph, r) for k, r in plans.items()}
        with in_eval(model):
            calls = [model_call(model, x)] + [model_call(m, x) for m in smalls.values()]
            samples = time_calls(calls, device_of(model, x), rounds=a.timing_rounds, seed=int(target * 1000))
        med = np.median(samples, axis=0)
        checked = (pruner.latency.checked or float("nan")) / table.dense if pruner.latency else float("nan")
        for i, (kind, removed) in enumerate(plans.items(), start=1):
            small = smalls[kind]
            ratios = samples[:, i] / samples[:, 0]
            values = {
                "model": name,
                "target": target,
                "plan": kind,
                "macs": count_macs(small, x) / dense_macs,
                "params": sum(p.numel() for p in small.parameters()) / dense_params,
                "predicted": lm.seconds(removed) / dense,
                "checked": checked if kind == "latency" else None,
                "measured": float(med[i] / med[0]),
                "spread": iqr(ratios.tolist()),
                "dense_ms": float(med[0] * 1e3),
                "table_s": measure_s,
                "table_step": table.step,
                "widths": {g: graph.group(g).size - k for g, k in removed.items() if k},
            }
            rows.append(writer.write(values))
            print(
                f"  {target:.2f} {kind:24s} MACs {values['macs']:.3f} predicted {values['predicted']:.3f} "
                f"measured {values['measured']:.3f} (IQR {values['spread']:.3f})",
                flush=True,
            )
    return rows


def render(rows: list[dict]) -> str:
    """The docs' table of a results file of this benchmark."""
    body = []
    for r in rows:
        v = r["values"]
        meets = "yes" if v["measured"] <= v["target"] * 1.02 else f"no ({v['measured'] / v['target'] - 1:+.0%})"
        checked = "-" if v["checked"] is None else f"{v['checked']:.3f}"
        body.append(
            [LABELS.get(v["model"], v["model"]), f"{v['target']:.2f}", v["plan"], f"{v['macs']:.3f}",
             f"{v['params']:.3f}", f"{v['predicted']:.3f}", checked, f"{v['measured']:.3f} ({v['spread']:.3f})", meets]
        )  # fmt: skip
    tables = {v["model"]: v for v in (r["values"] for r in rows)}
    about = "; ".join(
        f"{LABELS.get(m, m)}: table in {v['table_s']:.0f} s, width step {v['table_step']}, dense "
        f"{min(r['values']['dense_ms'] for r in rows if r['values']['model'] == m):.0f}-"
        f"{max(r['values']['dense_ms'] for r in rows if r['values']['model'] == m):.0f} ms"
        for m, v in tables.items()
    )
    header = ["model", "target", "plan", "MACs", "params", "predicted", "checked", "measured (IQR)", "meets"]
    return "\n".join(
        [
            provenance(rows) + f" {about}; {rows[0]['settings']['timing_rounds']} interleaved rounds per target.",
            "",
            markdown(header, body),
        ]
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure, plan and time every model and target; append the rows to ``--out`` and print the table."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["ledsr", "resnet50"], choices=list(MODELS))
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3], help="fractions of the dense latency")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each table measurement")
    p.add_argument("--timing_rounds", type=int, default=21, help="interleaved rounds timing the slimmed models")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    p.add_argument("--smoke", action="store_true", help="seconds: a tiny model, few rounds (the test suite)")
    cli.add_output(p, NAME)
    smoke = {"models": ["tiny"], "rounds": 1, "timing_rounds": 3, "targets": [0.7]}
    a = cli.parse(p, argv, smoke=smoke)
    cli.set_threads(a.threads)
    writer = Writer(cli.output_path(a, NAME), NAME, a, append=a.append)
    for name in a.models:
        run_model(name, a, writer)
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    return rows


if __name__ == "__main__":
    main()
