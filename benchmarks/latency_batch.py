"""Pruning to a latency at batch 1 and batch 64: is the delivered latency the target, run after run?

For each model, batch size and target fraction ``t`` of the dense latency, ``--runs`` independent
runs each:

1. build the model (weights and inputs from the run's seed) and measure a fresh
   :class:`assl.LatencyTable` on inputs of that batch (a table belongs to one input shape);
2. solve ``assl.Budget(relative_latency=t, table=...)`` through the Pruner with
   ``round_to="auto"``, as ``benchmarks.latency_budget``'s ``latency`` plan does (widths per
   group, checked by timing a slimmed copy, the library's default) and slim a copy (units of
   lowest filter L1 norm);
3. time the dense and the slimmed model in ``--timing_rounds`` interleaved rounds; delivered is
   the median over rounds of slimmed / dense, paired per round.

Each row keeps delivered / target, the table's prediction and the Pruner's check, the dense
model's median time and its spread over the rounds (interquartile range / median), the widths,
the run index and the seed. Input sizes keep a batch-64 call well under a second on one CPU
thread: LEDSR (16 blocks, 64 features, x2) on 16x16 LR patches, the MobileNetV2-like classifier
on 64x64 images.

    python -m benchmarks.latency_batch                                    # ~30 min of one CPU thread
    python -m benchmarks.latency_batch --models ledsr --batches 64 --runs 2
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import assl

from . import cli, networks
from .latency_budget import slimmed
from .results import Writer, read
from .stats import iqr
from .tables import markdown, provenance
from .timing import device_of, in_eval, model_call, time_calls

NAME = "latency_batch"
WITHIN = 0.10
"""How far from the target (relative, either way) a delivered latency counts as on target."""


@dataclass(frozen=True)
class Spec:
    """A benchmarked network: its builder (seeded), the input side, pixel-valued inputs, what it skips."""

    label: str
    build: Callable[[], nn.Module]
    side: int
    pixels: bool
    skip: tuple[str, ...] = ()

    def inputs(self, batch: int, seed: int) -> torch.Tensor:
        """A batch of ``batch`` inputs of this network, drawn from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        shape = (batch, 3, self.side, self.side)
        return torch.rand(shape, generator=g) * 255 if self.pixels else torch.randn(shape, generator=g)


MODELS = {
    "mobilenetv2": Spec("MobileNetV2-like", lambda: networks.build("mobilenetv2_like"), 64, False),
    "ledsr": Spec(
        "LEDSR 16x64", lambda: networks.build("ledsr", blocks=16, feats=64), 16, True, tuple(networks.LEDSR_SKIP)
    ),
    "tiny": Spec("tiny", lambda: networks.build("ledsr", blocks=2, feats=64), 8, True, tuple(networks.LEDSR_SKIP)),
}


def one_run(name: str, batch: int, target: float, run: int, a: argparse.Namespace) -> dict:
    """One independent run: a fresh model, table, plan and timing; the row's values."""
    spec = MODELS[name]
    seed = a.seed + run
    torch.manual_seed(seed)
    model = spec.build().eval()
    x = spec.inputs(batch, seed)
    t0 = time.perf_counter()
    table = assl.LatencyTable.measure(model, x, rounds=a.rounds)
    table_s = time.perf_counter() - t0
    pruner = assl.Pruner(
        copy.deepcopy(model), x, budget=assl.Budget(relative_latency=target, table=table), round_to="auto",
        skip=list(spec.skip),
    )  # fmt: skip
    plan = pruner.latency
    assert plan is not None  # a latency budget always leaves its plan
    graph = assl.trace(model, x)
    small = slimmed(model, graph, dict(pruner.removed))
    with in_eval(model):
        calls = [model_call(model, x), model_call(small, x)]
        samples = time_calls(calls, device_of(model, x), rounds=a.timing_rounds, seed=seed)
    ratios = samples[:, 1] / samples[:, 0]
    dense = samples[:, 0]
    delivered = float(np.median(ratios))
    sizes = {g.name: g.size for g in graph.groups}
    return {
        "model": name,
        "batch": batch,
        "input": list(x.shape),
        "target": target,
        "run_index": run,
        "delivered": delivered,
        "delivered_over_target": delivered / target,
        "delivered_iqr": iqr(ratios.tolist()),
        "predicted": plan.predicted / plan.dense,
        "checked": None if plan.checked is None else plan.checked / plan.dense,
        "dense_ms": float(np.median(dense) * 1e3),
        "dense_spread": iqr(dense.tolist()) / float(np.median(dense)),
        "slim_ms": float(np.median(samples[:, 1]) * 1e3),
        "table_s": table_s,
        "table_dense_ms": table.dense * 1e3,
        "table_step": table.step,
        "table_noise": table.noise,
        "widths": {g: w for g, w in plan.widths.items() if w < sizes[g]},
    }


def render(rows: list[dict]) -> str:
    """The docs' table of a results file of this benchmark: one line per model, batch and target."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        v = r["values"]
        groups.setdefault((v["model"], v["batch"], v["target"]), []).append(v)
    body = []
    for (model, batch, target), vs in groups.items():
        over = [v["delivered_over_target"] for v in vs]
        within = sum(abs(o - 1) <= WITHIN for o in over)
        dense = [v["dense_ms"] for v in vs]
        spreads = [v["dense_spread"] for v in vs]
        checked = [v["checked"] for v in vs if v["checked"] is not None]
        label = MODELS[model].label if model in MODELS else model
        body.append(
            [label, batch, f"{target:.2f}", len(vs), f"{statistics.mean(over):.3f}", f"{min(over):.3f}",
             f"{max(over):.3f}", f"{within}/{len(vs)}", f"{statistics.median(dense):.1f} ({min(dense):.1f}-"
             f"{max(dense):.1f})", f"{statistics.median(spreads):.3f} (max {max(spreads):.3f})",
             f"{statistics.mean(v['predicted'] for v in vs):.3f}",
             f"{statistics.mean(checked):.3f}" if checked else "-"]
        )  # fmt: skip
    header = ["model", "batch", "target", "runs", "delivered / target: mean", "min", "max",
              f"within {WITHIN:.0%}", "dense ms: median (range)", "dense spread: median (max)",
              "predicted", "checked"]  # fmt: skip
    settings = rows[0]["settings"]
    shapes = "; ".join(
        dict.fromkeys(
            f"{MODELS[v['model']].label if v['model'] in MODELS else v['model']} batch {v['batch']}: "
            f"input {'x'.join(map(str, v['input']))}"
            for v in (r["values"] for r in rows)
        )
    )
    return "\n".join(
        [
            provenance(rows) + f" {shapes}; a fresh table per run ({settings['rounds']} rounds), "
            f"{settings['timing_rounds']} interleaved rounds timing dense and slimmed.",
            "",
            markdown(header, body),
        ]
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every model, batch, target and run; append the rows to ``--out`` and print the table."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--models", nargs="+", default=["mobilenetv2", "ledsr"], choices=list(MODELS))
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--targets", type=float, nargs="+", default=[0.5], help="fractions of the dense latency")
    p.add_argument("--runs", type=int, default=5, help="independent runs (table, plan, timing) of each")
    p.add_argument("--seed", type=int, default=0, help="run i builds its model and inputs from seed + i")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds of each table measurement")
    p.add_argument("--timing_rounds", type=int, default=21, help="interleaved rounds timing dense and slimmed")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    p.add_argument("--smoke", action="store_true", help="seconds: a tiny model, few rounds (the test suite)")
    cli.add_output(p, NAME)
    smoke = {"models": ["tiny"], "batches": [1, 2], "runs": 2, "rounds": 1, "timing_rounds": 3, "targets": [0.7]}
    a = cli.parse(p, argv, smoke=smoke)
    cli.set_threads(a.threads)
    writer = Writer(cli.output_path(a, NAME), NAME, a, append=a.append)
    start = time.perf_counter()
    for name in a.models:
        for batch in a.batches:
            for target in a.targets:
                for run in range(a.runs):
                    v = one_run(name, batch, target, run, a)
                    writer.write(v, seed=a.seed + run)
                    print(
                        f"{name} batch {batch} target {target:.2f} run {run}: delivered {v['delivered']:.3f} "
                        f"({v['delivered_over_target']:.3f} of target), predicted {v['predicted']:.3f}, checked "
                        f"{v['checked'] if v['checked'] is None else round(v['checked'], 3)}, dense "
                        f"{v['dense_ms']:.1f} ms (spread {v['dense_spread']:.3f}), table {v['table_s']:.0f} s, "
                        f"step {v['table_step']}; {time.perf_counter() - start:.0f} s so far",
                        flush=True,
                    )
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    return rows


if __name__ == "__main__":
    main()
