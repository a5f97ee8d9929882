"""Quality at equal latency: ASSL pruning LEDSR to a latency, against one ratio at that latency and at those MACs.

One :class:`assl.LatencyTable` ``T`` of the dense LEDSR is measured on this device on a
deployment-sized input (one LR image of ``--latency_side`` pixels a side, pixel values; or read
with ``--table``; it is saved as ``latency_table.pt`` beside the results) and reused for every
seed. For each target ``t`` (a fraction of the dense latency), four arms, all ASSL with
``quality.py``'s settings (``Schedule.for_steps(--prune_iters)``, slim, fine-tune to the
same step count), start from the same dense model per seed and see the same batches:

* ``latency``: ``assl.Budget(relative_latency=t, table=T)`` with ``round_to="auto"``: each group
  its own width, multiples of the device's step;
* ``one ratio, equal latency``: one ratio for every group (what a MAC or parameter budget gives),
  the smallest whose plan ``T`` predicts at or below the target (``latency_budget.py``'s
  ``same_prediction_ratio``);
* ``equal MACs``: ``assl.Budget(macs=...)`` with the MACs of the ``latency`` arm's plan (one
  ratio, the largest model within those MACs);
* ``one ratio on the step, equal latency``: as the second, with the kept widths rounded up to
  multiples of ``T``'s width step (``round_to=T.step``): the one-ratio plan the table's grid
  holds (between grid points the table interpolates, and a device's latency is a staircase).

Reported per arm: PSNR right after slimming and after fine-tuning (``quality.py``'s images),
MACs and params relative to dense, the latency ``T`` predicts, and the latency measured: the
slimmed, fine-tuned models of a seed and its dense model called in interleaved rounds on the
deployment input (each round runs each once, in a new random order), ratio of the medians. Mean
± sd over seeds, and per seed the other arms minus ``latency``.

    python benchmarks/latency_quality.py --quick --threads 1 --out runs/latency-quality
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baselines import SKIP, assl_pruner
from _sr_args import build_parser, configure, parse_args
from _sr_bench import batch_stream, evaluate, load_data, mean_sd, model_size, save, sweep, train
from ledsr import SRModel

import assl
from assl._timing import device_of, in_eval, interleaved, model_call
from assl.budget import cheapest_plan
from assl.latency_budget import LatencyModel
from benchmarks.latency_budget import same_prediction_ratio

ARMS = ("latency", "one ratio, equal latency", "equal MACs", "one ratio on the step, equal latency")


def parser() -> argparse.ArgumentParser:
    p = build_parser(__doc__)
    p.description = __doc__.split("\n\n")[0]
    p.add_argument("--targets", type=float, nargs="+", default=[0.5], help="fractions of the dense latency")
    p.add_argument("--latency_side", type=int, default=64, help="side of the LR image the latency is measured on")
    p.add_argument("--table_rounds", type=int, default=5, help="interleaved rounds of each table measurement")
    p.add_argument("--timing_rounds", type=int, default=31, help="interleaved rounds timing the slimmed models")
    p.add_argument(
        "--table", default=None, help="a saved assl.LatencyTable of this model and input, instead of measuring"
    )
    p.set_defaults(out="runs/latency_quality")
    return p


SMOKE = {"blocks": 2, "feats": 64, "targets": [0.7], "latency_side": 24, "table_rounds": 1, "timing_rounds": 3}
"""Additions to ``--smoke``: wide enough that a 0.7 target is reachable on a small image."""


class Table:
    """The latency table of the run, its prediction on the deployment input, and that input."""

    def __init__(self, a: argparse.Namespace, device: torch.device) -> None:
        side = a.latency_side
        self.x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device) * 255
        arch = SRModel(n_resblocks=a.blocks, n_feats=a.feats, scale=a.scale).to(device).eval()  # weights: no matter
        t0 = time.perf_counter()
        if a.table:
            self.table = assl.LatencyTable.load(a.table)
        else:
            self.table = assl.LatencyTable.measure(arch, self.x, rounds=a.table_rounds)
        self.measure_s = time.perf_counter() - t0
        self.graph = assl.trace(arch, self.x)
        self.lm = LatencyModel(self.table, self.graph)
        self.dense = self.table.dense  # measured: what the Pruner takes relative_latency of
        self.ratio, self.ratio_step, self.unreachable = {}, {}, {}
        for t in a.targets:
            try:  # the smallest widths the table allows may be predicted above the target
                budget = assl.Budget(relative_latency=t, table=self.table)
                assl.Pruner(copy.deepcopy(arch), self.x, ratio=budget, round_to="auto", skip=SKIP)
            except ValueError as e:
                self.unreachable[t] = str(e).split(";")[0]
                print(f"# target {t:g} left out: {self.unreachable[t]}", flush=True)
                continue
            args = (self.graph, arch, self.x, SKIP, self.lm, t * self.dense)
            self.ratio[t] = same_prediction_ratio(*args)
            self.ratio_step[t] = same_prediction_ratio(*args, round_to=self.table.step)

    def predicted(self, removed: dict[str, int]) -> float:
        """Predicted latency after ``removed``, as a fraction of the measured dense latency."""
        return self.lm.seconds(removed) / self.dense


def run_arm(
    arm: str,
    ratio: float | assl.Budget,
    round_to: int | str,
    dense: nn.Module,
    a: argparse.Namespace,
    seed: int,
    data: dict,
    device: torch.device,
    lat: Table,
) -> tuple[dict, nn.Module]:
    """``quality.py``'s ``assl`` method on a copy of ``dense`` at ``ratio``: its row and slimmed model."""
    torch.manual_seed(seed + 1000)
    model = copy.deepcopy(dense)
    stream = batch_stream(data["train"], a.batch_size, device, seed + 2000)
    t0 = time.time()
    pruner, groups = assl_pruner(model, a, ratio=ratio, round_to=round_to)
    g = pruner.graph
    removed = dict(pruner.removed)
    plan_macs = g.count_macs(cheapest_plan(g, removed, g.unit_costs("macs")))  # what Budget(macs=) counts
    used = train(model, stream, a.prune_iters, a.lr, pruner=pruner, param_groups=groups, stop=lambda: pruner.done)
    small = pruner.slim()
    psnr_slim = evaluate(small, data["eval"], a.scale, device)[0]
    train(small, stream, a.prune_iters + a.finetune_iters - used, a.lr)
    p, s = evaluate(small, data["eval"], a.scale, device)
    params, gmacs = model_size(small, a.scale, device)
    row = {
        "arm": arm,
        "seed": seed,
        "ratio": ratio if isinstance(ratio, float) else None,
        "psnr_slim": psnr_slim,
        "psnr": p,
        "ssim": s,
        "params_n": params,
        "gmacs": gmacs,
        "plan_macs": plan_macs,
        "predicted": lat.predicted(removed),
        "widths": {name: g.group(name).size - k for name, k in removed.items() if k},
        "wall_s": time.time() - t0,
    }
    if pruner.latency is not None:
        row["solver_predicted"] = pruner.latency.predicted / pruner.latency.dense
    return row, small


def run_seed(
    dense: nn.Module, seed: int, a: argparse.Namespace, data: dict, device: torch.device, lat: Table
) -> list[dict]:
    """The arms at every target for one dense model, then their latency measured against it."""
    d_params, d_gmacs = model_size(dense, a.scale, device)
    rows = []
    for t in lat.ratio:
        r1, s1 = run_arm(
            ARMS[0], assl.Budget(relative_latency=t, table=lat.table), "auto", dense, a, seed, data, device, lat
        )
        r2, s2 = run_arm(ARMS[1], lat.ratio[t], 1, dense, a, seed, data, device, lat)
        r3, s3 = run_arm(ARMS[2], assl.Budget(macs=r1["plan_macs"]), 1, dense, a, seed, data, device, lat)
        step = lat.table.step
        r4, s4 = run_arm(ARMS[3], lat.ratio_step[t], step, dense, a, seed, data, device, lat)
        models = [dense, s1, s2, s3, s4]
        with contextlib.ExitStack() as stack:
            for m in models:
                stack.enter_context(in_eval(m))
            calls = [model_call(m, lat.x) for m in models]
            samples = interleaved(calls, device_of(dense, lat.x), rounds=a.timing_rounds, seed=seed)
        med = np.median(samples, axis=0)
        for i, r in enumerate((r1, r2, r3, r4), start=1):
            ratios = samples[:, i] / samples[:, 0]
            r.update(
                target=t,
                macs=r["gmacs"] / d_gmacs,
                params=r["params_n"] / d_params,
                measured=float(med[i] / med[0]),
                spread=float(np.percentile(ratios, 75) - np.percentile(ratios, 25)),
                dense_ms=float(med[0] * 1e3),
            )
            rows.append(r)
    return rows


def summary(rows: list[dict], dense_rows: list[dict], a: argparse.Namespace, lat: Table) -> str:
    """The markdown table (mean ± sd over seeds), the paired differences, and the widths of seed 0."""
    out = [
        "| target | arm | PSNR (dB) | PSNR right after slimming | MACs | params | predicted latency | "
        "measured latency | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| - | dense | {mean_sd([r['psnr'] for r in dense_rows], 3)} | - | 1 | 1 | 1 | 1 | {len(dense_rows)} |",
        f"| - | bicubic | {statistics.mean(r['bicubic'] for r in dense_rows):.3f} | - | - | - | - | - | - |",
    ]
    for t in a.targets:
        for arm in ARMS:
            rs = [r for r in rows if r["target"] == t and r["arm"] == arm]
            if rs:
                out.append(
                    f"| {t:g} | {arm} | {mean_sd([r['psnr'] for r in rs], 3)} | "
                    f"{mean_sd([r['psnr_slim'] for r in rs], 2)} | {mean_sd([r['macs'] for r in rs], 3)} | "
                    f"{mean_sd([r['params'] for r in rs], 3)} | {mean_sd([r['predicted'] for r in rs], 3)} | "
                    f"{mean_sd([r['measured'] for r in rs], 3)} | {len(rs)} |"
                )
    out += paired(rows, list(lat.ratio))
    dense_ms = [r["dense_ms"] for r in rows]
    out += [
        "",
        f"Latency on 1x3x{a.latency_side}x{a.latency_side}: table measured in {lat.measure_s:.0f} s, width step "
        f"{lat.table.step}, dense {lat.table.dense * 1e3:.2f} ms (table), "
        f"{statistics.median(dense_ms) if dense_ms else math.nan:.2f} ms (median of the seeds' timings). "
        + ", ".join(f"one ratio at {t:g}: {lat.ratio[t]:.4f} ({lat.ratio_step[t]:.4f} on the step)" for t in lat.ratio)
        + ".",
    ]
    out += [f"Target {t:g} left out: {why}." for t, why in lat.unreachable.items()]
    first = [r for r in rows if r["seed"] == min(r["seed"] for r in rows)]
    if first:
        out += ["", f"Kept widths per group, seed {first[0]['seed']}:", ""]
        out += [f"* {r['target']:g}, {r['arm']}: {_widths(r['widths'])}" for r in first]
    return "\n".join(out)


def _widths(widths: dict[str, int]) -> str:
    return ", ".join(f"{g} {w}" for g, w in widths.items()) or "none pruned"


def paired(rows: list[dict], targets: list[float]) -> list[str]:
    """Each other arm minus ``latency``, seed by seed (same dense model, same batches)."""
    by = {(r["target"], r["arm"], r["seed"]): r for r in rows}
    seeds = sorted({s for t, arm, s in by if arm == ARMS[0]})
    if not seeds:
        return []
    out = [
        "",
        f"Each arm minus `latency`, paired by seed (seeds {', '.join(map(str, seeds))}):",
        "",
        "| target | arm | PSNR (dB) | PSNR right after slimming (dB) | measured latency |",
        "|---|---|---|---|---|",
    ]
    for t in targets:
        for arm in ARMS[1:]:
            cells = []
            for key, digits in (("psnr", 3), ("psnr_slim", 2), ("measured", 3)):
                d = [by[t, arm, s][key] - by[t, ARMS[0], s][key] for s in seeds if (t, arm, s) in by]
                cells.append(", ".join(f"{v:+.{digits}f}" for v in d) + f" (mean {statistics.mean(d):+.{digits}f})")
            out.append(f"| {t:g} | {arm} | {' | '.join(cells)} |")
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure the table, run every arm for every seed; print and write the table and the rows."""
    a = parse_args(parser(), argv, smoke=SMOKE)
    device = configure(a)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(a)
    lat = Table(a, device)
    lat.table.save(out / "latency_table.pt")
    print(
        f"# latency quality: LEDSR {a.blocks}x{a.feats} x{a.scale}, targets {a.targets}, {a.seeds} seeds, "
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads); table in {lat.measure_s:.0f} s, "
        f"step {lat.table.step}, dense {lat.table.dense * 1e3:.2f} ms on 1x3x{a.latency_side}x{a.latency_side}",
        flush=True,
    )
    rows, dense_rows = sweep(a, data, device, lambda dense, seed: iter(run_seed(dense, seed, a, data, device, lat)))
    save(out, "latency_quality", summary(rows, dense_rows, a, lat), a, rows, dense_rows)
    return rows


if __name__ == "__main__":
    main()
