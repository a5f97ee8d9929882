"""Quality at equal latency: ASSL pruning LEDSR to a latency, against one ratio at that latency and at those MACs.

One :class:`assl.LatencyTable` ``T`` of the dense LEDSR is measured on this device on a
deployment-sized input (one LR image of ``--latency_side`` pixels a side, pixel values; or read
with ``--table``; it is saved beside the results as ``latency_table.pt``) and reused for every
seed. For each target ``t`` (a fraction of the dense latency), four arms, all the quality
benchmark's ``assl`` method (``Schedule.for_steps(--prune_iters)``, slim, fine-tune to the same
step count), start from the same dense model per seed and see the same batches:

* ``latency``: ``assl.Budget(relative_latency=t, table=T)`` with ``round_to="auto"``: each group
  its own width, multiples of the device's step;
* ``one ratio, equal latency``: one ratio for every group (what a MAC or parameter budget gives),
  the smallest whose plan ``T`` predicts at or below the target (``latency_budget``'s
  ``same_prediction_ratio``);
* ``equal MACs``: ``assl.Budget(macs=...)`` with the MACs of the ``latency`` arm's plan (one
  ratio, the largest model within those MACs);
* ``one ratio on the step, equal latency``: as the second, with the kept widths rounded up to
  multiples of ``T``'s width step (``round_to=T.step``): the one-ratio plan the table's grid
  holds (between grid points the table interpolates, and a device's latency is a staircase).

Reported per arm: PSNR right after slimming and after fine-tuning, MACs and params relative to
dense, the latency ``T`` predicts, and the latency measured: the slimmed, fine-tuned models of a
seed and its dense model timed with the benchmarks' interleaved timer on the deployment input,
ratio of the medians. Mean ± sd over seeds, and per seed the other arms minus ``latency``.

    python -m benchmarks.latency_quality --quick --threads 1 --seeds 5 --targets 0.5 0.3 --table_rounds 11
    python -m benchmarks.latency_quality --smoke
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import assl

from . import cli, networks, protocol
from ._internals import LatencyModel, cheapest_plan
from .latency_budget import same_prediction_ratio
from .methods import run_method, size
from .results import Writer, read
from .stats import iqr, mean_sd, signed_with_mean
from .sweep import sweep
from .tables import markdown, provenance
from .tasks import Task, task_module
from .timing import device_of, in_eval, model_call, time_calls

NAME = "latency_quality"
ARMS = ("latency", "one ratio, equal latency", "equal MACs", "one ratio on the step, equal latency")
SMOKE = {"blocks": 2, "feats": 64, "targets": [0.7], "latency_side": 24, "table_rounds": 1, "timing_rounds": 3}
"""Additions to ``--smoke``: wide enough that a 0.7 target is reachable on a small image."""


class Table:
    """The latency table of the run, its prediction on the deployment input, and that input."""

    def __init__(self, a: argparse.Namespace, device: torch.device) -> None:
        side = a.latency_side
        self.x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device) * 255
        arch = networks.ledsr(a.blocks, a.feats, a.scale).to(device).eval()  # weights: no matter
        t0 = time.perf_counter()
        if a.table:
            self.table = assl.LatencyTable.load(a.table)
        else:
            self.table = assl.LatencyTable.measure(arch, self.x, rounds=a.table_rounds)
        self.measure_s = time.perf_counter() - t0
        self.graph = assl.trace(arch, self.x)
        self.lm = LatencyModel(self.table, self.graph)
        # the table's prediction of the dense model: the Pruner reads predictions as fractions of it
        self.dense = self.lm.seconds({})
        self.ratio: dict[float, float] = {}
        self.ratio_step: dict[float, float] = {}
        self.unreachable: dict[float, str] = {}
        skip = networks.LEDSR_SKIP
        for t in a.targets:
            try:  # the smallest widths the table allows may be predicted above the target
                budget = assl.Budget(relative_latency=t, table=self.table)
                assl.Pruner(copy.deepcopy(arch), self.x, budget=budget, round_to="auto", skip=skip)
            except ValueError as e:
                self.unreachable[t] = str(e).split(";")[0]
                print(f"# target {t:g} left out: {self.unreachable[t]}", flush=True)
                continue
            args = (self.graph, arch, self.x, skip, self.lm, t * self.dense)
            self.ratio[t] = same_prediction_ratio(*args)
            self.ratio_step[t] = same_prediction_ratio(*args, round_to=self.table.step)

    def predicted(self, removed: dict[str, int]) -> float:
        """Predicted latency after ``removed``, as a fraction of the measured dense latency."""
        return self.lm.seconds(removed) / self.dense

    def about(self) -> dict[str, Any]:
        """What a row records of the table: its time to measure, its width step, its dense latency."""
        return {"table_s": self.measure_s, "table_step": self.table.step, "table_dense_ms": self.dense * 1e3}


class PlanProbe:
    """Records what the Pruner planned (a :class:`benchmarks.methods.Observer`)."""

    def __init__(self, pruner: assl.Pruner) -> None:
        g = pruner.graph
        self.removed = dict(pruner.removed)
        self.found: dict[str, Any] = {
            "plan_macs": g.count_macs(
                cheapest_plan(g, self.removed, g.unit_costs("macs"))
            ),  # what Budget(macs=) counts
            "widths": {name: g.group(name).size - k for name, k in self.removed.items() if k},
        }
        if pruner.latency is not None:
            self.found["solver_predicted"] = pruner.latency.predicted / pruner.latency.dense

    def before_step(self) -> None:
        """Nothing to watch during the schedule."""

    def end(self) -> dict[str, Any]:
        """The plan's MACs (as ``Budget(macs=)`` counts them), its widths and the solver's prediction."""
        return self.found


def run_arm(
    arm: str, ratio: float | assl.Budget, round_to: int | str, task: Task, dense: nn.Module, a: argparse.Namespace,
    seed: int, lat: Table,
) -> tuple[dict[str, Any], nn.Module]:  # fmt: skip
    """The ``assl`` method on a copy of ``dense`` at ``ratio``: its row and its slimmed, fine-tuned model."""
    probes: list[PlanProbe] = []

    def probe(pruner: assl.Pruner, model: nn.Module) -> PlanProbe:
        probes.append(PlanProbe(pruner))
        return probes[-1]

    row, small = run_method(task, "assl", dense, ratio, a, seed, round_to=round_to, observe=probe)
    assert small is not None
    row.update(arm=arm, predicted=lat.predicted(probes[0].removed), **lat.about())
    return row, small


def run_seed(dense: nn.Module, seed: int, task: Task, a: argparse.Namespace, lat: Table) -> list[dict]:
    """The arms at every target for one dense model, then their latency measured against it."""
    d_params, d_macs = size(task, dense)
    rows = []
    for t in lat.ratio:
        r1, s1 = run_arm(ARMS[0], assl.Budget(relative_latency=t, table=lat.table), "auto", task, dense, a, seed, lat)
        r2, s2 = run_arm(ARMS[1], lat.ratio[t], 1, task, dense, a, seed, lat)
        r3, s3 = run_arm(ARMS[2], assl.Budget(macs=r1["plan_macs"]), 1, task, dense, a, seed, lat)
        r4, s4 = run_arm(ARMS[3], lat.ratio_step[t], lat.table.step, task, dense, a, seed, lat)
        models = [dense, s1, s2, s3, s4]
        with contextlib.ExitStack() as stack:
            for m in models:
                stack.enter_context(in_eval(m))
            calls = [model_call(m, lat.x) for m in models]
            samples = time_calls(calls, device_of(dense, lat.x), rounds=a.timing_rounds, seed=seed)
        med = np.median(samples, axis=0)
        for i, r in enumerate((r1, r2, r3, r4), start=1):
            r.update(
                target=t,
                macs_rel=r["macs"] / d_macs,
                params_rel=r["params"] / d_params,
                measured=float(med[i] / med[0]),
                spread=iqr((samples[:, i] / samples[:, 0]).tolist()),
                dense_ms=float(med[0] * 1e3),
            )
            rows.append(r)
    return rows


def render(rows: list[dict]) -> str:
    """The docs' block: the arms' table (mean ± sd over seeds), the paired differences, the widths of the first seed."""
    vals = [r["values"] for r in rows]
    dense = list({v["seed"]: v for v in vals if v["method"] == "dense"}.values())
    arms = [v for v in vals if v["method"] != "dense"]
    info = dense[0]["task"]
    header = ["target", "arm", "PSNR (dB)", "PSNR right after slimming", "MACs", "params", "predicted latency"]
    header += ["measured latency", "seeds"]
    body = [["-", "dense", mean_sd([v["score"] for v in dense], 3), "-", 1, 1, 1, 1, len(dense)]]
    body += [["-", name, f"{value:.3f}", *["-"] * 6] for name, value in info["references"].items()]
    targets = list(dict.fromkeys(v["target"] for v in arms))
    for t in targets:
        for arm in ARMS:
            rs = [v for v in arms if v["target"] == t and v["arm"] == arm]
            if rs:
                body.append(
                    [f"{t:g}", arm, mean_sd([v["score"] for v in rs], 3), mean_sd([v["score_slim"] for v in rs], 2),
                     mean_sd([v["macs_rel"] for v in rs], 3), mean_sd([v["params_rel"] for v in rs], 3),
                     mean_sd([v["predicted"] for v in rs], 3), mean_sd([v["measured"] for v in rs], 3), len(rs)]
                )  # fmt: skip
    s = rows[0]["settings"]
    a0 = arms[0] if arms else {}
    dense_ms = [v["dense_ms"] for v in arms]
    out = [
        provenance(rows) + f" {info['name']}: {s['dense_iters']} dense steps, then {s['prune_iters']} + "
        f"{s['finetune_iters']} steps per arm, Adam {s['lr']:g}; latency on 1x3x{s['latency_side']}x"
        f"{s['latency_side']}: table measured in {a0.get('table_s', math.nan):.0f} s, width step "
        f"{a0.get('table_step', '-')}, dense {a0.get('table_dense_ms', math.nan):.2f} ms (table), "
        f"{statistics.median(dense_ms) if dense_ms else math.nan:.2f} ms (median of the seeds' timings); "
        "mean ± sd over seeds.",
        "",
        markdown(header, body),
    ]
    by = {(v["target"], v["arm"], v["seed"]): v for v in arms}
    seeds = sorted({s for t, arm, s in by if arm == ARMS[0]})
    paired_rows = []
    for t in targets:
        for arm in ARMS[1:]:
            cells = []
            for key, digits in (("score", 3), ("score_slim", 2), ("measured", 3)):
                d = [by[t, arm, s][key] - by[t, ARMS[0], s][key] for s in seeds if (t, arm, s) in by]
                cells.append(signed_with_mean(d, digits))
            paired_rows.append([f"{t:g}", arm, *cells])
    if seeds:
        out += ["", f"Each arm minus `latency`, paired by seed (seeds {', '.join(map(str, seeds))}):", ""]
        out.append(
            markdown(["target", "arm", "PSNR (dB)", "PSNR right after slimming (dB)", "measured latency"], paired_rows)
        )
    first = [v for v in arms if v["seed"] == min(v["seed"] for v in arms)]
    if first:
        out += ["", f"Kept widths per group, seed {first[0]['seed']}:", ""]
        out += [f"* {v['target']:g}, {v['arm']}: {_widths(v['widths'])}" for v in first]
    return "\n".join(out)


def _widths(widths: dict[str, int]) -> str:
    return ", ".join(f"{g} {w}" for g, w in widths.items()) or "none pruned"


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure the table, run every arm for every seed; append the rows to ``--out`` and print the report."""
    p = protocol.parser(NAME, "sr", __doc__.split("\n\n")[0], methods=False)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5], help="fractions of the dense latency")
    p.add_argument("--latency_side", type=int, default=64, help="side of the LR image the latency is measured on")
    p.add_argument("--table_rounds", type=int, default=5, help="interleaved rounds of each table measurement")
    p.add_argument("--timing_rounds", type=int, default=31, help="interleaved rounds timing the slimmed models")
    p.add_argument(
        "--table", default=None, help="a saved assl.LatencyTable of this model and input, instead of measuring"
    )
    a = protocol.parse(p, argv, "sr", smoke=SMOKE)
    cli.set_threads(a.threads)
    task = task_module("sr").build(a)
    lat = Table(a, torch.device(a.device))
    writer = Writer(cli.output_path(a, NAME), NAME, a, append=a.append, device=a.device)
    lat.table.save(Path(writer.path).with_suffix(".table.pt"))
    print(
        f"# latency quality: {task.name}, targets {a.targets}, {a.seeds} seeds, {torch.get_num_threads()} threads; "
        f"table in {lat.measure_s:.0f} s, step {lat.table.step}, dense {lat.table.dense * 1e3:.2f} ms",
        flush=True,
    )
    sweep(task, a, writer, lambda dense, seed: iter(run_seed(dense, seed, task, a, lat)))
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    for t, why in lat.unreachable.items():
        print(f"Target {t:g} left out: {why}.")
    return rows


if __name__ == "__main__":
    main()
