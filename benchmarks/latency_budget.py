"""Pruning to a latency: does the slimmed model meet the target on the device, against MAC budgets?

For each model, a :class:`assl.LatencyTable` is measured once on this device, and for each
target fraction of the dense latency three plans of the same model are built:

* ``latency``: ``assl.Budget(relative_latency=t)`` with ``round_to="auto"`` (per-group widths,
  checked by timing a slimmed copy when chosen, the library's default);
* ``macs, same prediction``: one ratio for every group (what a MAC or parameter budget gives),
  the smallest whose latency the same table predicts at the target: the best a MAC budget can
  do when it is told the right saving;
* ``macs = t x dense``: ``assl.Budget(macs=t * dense MACs)``: what one does without a table,
  taking MACs for time.

Each plan removes the units with the lowest filter L1 norms and is slimmed; the dense model and
the three slimmed ones are timed in interleaved rounds (every round runs each once, in a new
random order) and their medians are compared with the target. No training: this measures
speed; quality at equal latency (ASSL trained to each kind of budget) is
``benchmarks/latency_quality.py``.

    python benchmarks/latency_budget.py --out runs/latency                 # ~10 min of one CPU thread
    python benchmarks/latency_budget.py --models ledsr --targets 0.5        # one model, one target
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))
from _models import resnet50_like
from ledsr import LEDSR

import assl
from assl._scoring import l1_plan
from assl.budgets.latency_plan import LatencyModel
from assl.budgets.timing import device_of, in_eval, interleaved, model_call
from assl.pruning._resolve import resolve


def ledsr() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """The quality benchmark's LEDSR (16 blocks, 64 features, x2) on one 64x64 image."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    return LEDSR(16, 64, 2).eval(), x, ["*mean*", "*tail*"]


def resnet50() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """ResNet-50's stage layout and widths on one 128x128 image."""
    return resnet50_like(), torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(0)), []


def tiny() -> tuple[nn.Module, torch.Tensor, list[str]]:
    """Seconds-sized: for --smoke."""
    torch.manual_seed(0)
    return LEDSR(2, 64, 2).eval(), torch.rand(1, 3, 16, 16) * 255, ["*mean*", "*tail*"]  # wide enough for any step


MODELS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor, list[str]]]] = {
    "ledsr": ledsr,
    "resnet50": resnet50,
    "tiny": tiny,
}


def uniform_plan(
    graph: assl.Graph, model: nn.Module, x: torch.Tensor, skip: list[str], ratio: float, round_to: int = 1
) -> dict:
    """Units each group loses at one ratio for every group (no rounding by default), as a MAC budget does."""
    return resolve(graph, ratio, skip=skip, groups=None, round_to=round_to, model=model, example_inputs=x).removed


def same_prediction_ratio(
    graph: assl.Graph, model: nn.Module, x, skip, lm: LatencyModel, target: float, round_to: int = 1
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


def same_prediction(graph: assl.Graph, model: nn.Module, x, skip, lm: LatencyModel, target: float) -> dict:
    """The one-ratio plan with the smallest ratio the table predicts at or below ``target`` (none
    removed when the table predicts even the dense model there)."""
    try:
        return uniform_plan(graph, model, x, skip, same_prediction_ratio(graph, model, x, skip, lm, target))
    except ValueError as e:
        if "nothing to prune" not in str(e):
            raise
        return {}


def slimmed(model: nn.Module, graph: assl.Graph, removed: dict) -> nn.Module:
    """A slimmed copy without the ``removed[g]`` units of lowest filter L1 norm of each group."""
    return assl.apply_plan(copy.deepcopy(model), graph, l1_plan(model, graph, removed)).eval()


def run_model(name: str, a: argparse.Namespace) -> list[dict]:
    model, x, skip = MODELS[name]()
    t0 = time.perf_counter()
    table = assl.LatencyTable.measure(model, x, rounds=a.rounds)
    measure_s = time.perf_counter() - t0
    graph = assl.trace(model, x)
    lm = LatencyModel(table, graph)
    dense_macs = graph.count_macs()
    dense = table.dense  # the measured dense latency: what Budget(relative_latency=) is a fraction of
    print(f"{name}: table in {measure_s:.0f} s, step {table.step}, dense {table.dense * 1e3:.2f} ms", flush=True)
    rows = []
    for target in a.targets:
        seconds = target * dense
        pruner = assl.Pruner(copy.deepcopy(model), x, budget=assl.Budget(relative_latency=target, table=table),
                             round_to="auto", skip=skip)  # fmt: skip
        plans = {
            "latency": dict(pruner.removed),
            "macs, same prediction": same_prediction(graph, model, x, skip, lm, seconds),
            f"macs = {target} x dense": resolve(
                graph, assl.Budget(macs=int(target * dense_macs)), skip=skip, groups=None, round_to=1,
                model=model, example_inputs=x,
            ).removed,
        }  # fmt: skip
        smalls = {k: slimmed(model, graph, r) for k, r in plans.items()}
        with in_eval(model):
            calls = [model_call(model, x)] + [model_call(m, x) for m in smalls.values()]
            samples = interleaved(calls, device_of(model, x), rounds=a.timing_rounds, seed=int(target * 1000))
        med = np.median(samples, axis=0)
        checked = (pruner.latency.checked or float("nan")) / table.dense if pruner.latency else float("nan")
        for i, (kind, removed) in enumerate(plans.items(), start=1):
            keep = {g: graph.group(g).pick(range(graph.group(g).size), k) for g, k in removed.items() if k}
            ratios = samples[:, i] / samples[:, 0]
            rows.append(
                {
                    "model": name,
                    "target": target,
                    "plan": kind,
                    "macs": graph.count_macs(keep) / dense_macs,
                    "params": graph.count_params(keep) / graph.count_params(),
                    "predicted": lm.seconds(removed) / dense,
                    "checked": checked if kind == "latency" else None,
                    "measured": float(med[i] / med[0]),
                    "spread": float(np.percentile(ratios, 75) - np.percentile(ratios, 25)),
                    "dense_ms": float(med[0] * 1e3),
                    "widths": {g: graph.group(g).size - k for g, k in removed.items() if k},
                }
            )  # fmt: skip
            r = rows[-1]
            print(
                f"  {target:.2f} {kind:24s} MACs {r['macs']:.3f} predicted {r['predicted']:.3f} "
                f"measured {r['measured']:.3f} (IQR {r['spread']:.3f})",
                flush=True,
            )
    return rows


def table_md(rows: list[dict]) -> str:
    out = [
        "| model | target | plan | MACs | params | predicted | checked | measured (IQR) | meets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        meets = "yes" if r["measured"] <= r["target"] * 1.02 else "no"
        out.append(
            f"| {r['model']} | {r['target']:.2f} | {r['plan']} | {r['macs']:.3f} | {r['params']:.3f} | "
            f"{r['predicted']:.3f} | {'-' if r['checked'] is None else format(r['checked'], '.3f')} | "
            f"{r['measured']:.3f} ({r['spread']:.3f}) | {meets} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["ledsr", "resnet50"], choices=list(MODELS))
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3], help="fractions of the dense latency")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each table measurement")
    p.add_argument("--timing_rounds", type=int, default=21, help="interleaved rounds timing the slimmed models")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    p.add_argument("--smoke", action="store_true", help="seconds: a tiny model, few rounds (the test suite)")
    p.add_argument("--out", default=None, help="folder for the table (markdown) and the rows (JSON)")
    a = p.parse_args(argv)
    if a.smoke:
        a.models, a.rounds, a.timing_rounds, a.targets = ["tiny"], 1, 3, [0.7]
    if a.threads:
        torch.set_num_threads(a.threads)
    rows = [r for name in a.models for r in run_model(name, a)]
    md = table_md(rows)
    print(md)
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "latency_budget.md").write_text(md + "\n")
        (out / "latency_budget.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
