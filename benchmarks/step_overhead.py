"""Time what the Pruner adds to a training step, phase by phase.

Trains an EDSR-baseline (16 blocks, 64 feats, x2) on batch 16 of 48x48 patches with an L1 loss
against a fixed random target and Adam, on the CPU. Variants, interleaved round-robin in one
process (the starting variant rotates each round), each the median of --repeats steps:

* dense: the plain model;
* scales only: the Pruner's weight-normalized scales inserted, the Pruner's own work not called
  (each forward recomputes the weights: the parametrization's cost);
* align / regularize / stabilize: the loop of the Pruner's docstring
  (loss + pruner.alignment_loss(), backward, pruner.step(), optimizer.step()).

The pruner's own overhead is (phase - scales only) / dense; the parametrization cost is
(scales only - dense) / dense. Its work is also timed directly: alignment_loss() plus the backward
of that term alone, and step() alone.

    python benchmarks/step_overhead.py --repeats 21
    python benchmarks/step_overhead.py --smoke        # seconds: used by the test suite
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import EDSR

import assl

PHASES = ("align", "regularize", "stabilize")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ms(ts: list[float]) -> float:
    return statistics.median(ts) * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=21, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds of every variant first")
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    p.add_argument("--threads", type=int, default=avail, help=f"torch threads (default: all available, {avail})")
    p.add_argument("--smoke", action="store_true", help="tiny model (2 blocks, 8 feats, batch 2, 8x8), 2 repeats")
    p.add_argument("--blocks", type=int, default=16, help="residual blocks (model size)")
    p.add_argument("--feats", type=int, default=64, help="features (model size)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="LR patch side")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    blocks, feats, batch, size = (2, 8, 2, 8) if args.smoke else (args.blocks, args.feats, args.batch, args.patch)
    if args.smoke:
        args.repeats, args.warmup = 2, 1

    torch.manual_seed(0)
    dense = EDSR(blocks, feats).train()
    scaled = copy.deepcopy(dense)
    x, target = torch.randn(batch, 3, size, size), torch.randn(batch, 3, 2 * size, 2 * size)
    # One scaled model and one Pruner serve "scales only" and all three phases, so they differ only
    # in the Pruner's calls. Default (paper) schedule: align is steps [0, A), regularize [A, R),
    # stabilize [R, R + S) with (A, R, _) = schedule.bounds(True). Each phase variant keeps its own
    # step counter, started at its phase's first step and advanced by step() as in training;
    # pruner._step is set to it before that variant's step and read back after.
    pruner = assl.Pruner(scaled, x[:1], ratio=0.5, skip=["*tail*"])
    a, r, _ = pruner.schedule.bounds(bool(pruner.aligned))
    assert pruner.aligned, "EDSR's residual group should be aligned"
    counter = {"align": 0, "regularize": a, "stabilize": r}
    opts = {m: torch.optim.Adam(m.parameters(), lr=1e-4) for m in (dense, scaled)}
    align_ms, step_ms = [], {ph: [] for ph in PHASES[1:]}

    def train_step(model: nn.Module, phase: str | None) -> float:
        opt = opts[model]
        if phase is not None:
            pruner._step = counter[phase]
            assert pruner.phase == phase
            assert phase == "align" or pruner.penalty > 0, "the penalty must run in regularize/stabilize"
        t0 = time.perf_counter()
        loss = F.l1_loss(model(x), target)
        if phase is not None:
            loss = loss + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        if phase is not None:
            t1 = time.perf_counter()
            pruner.step()
            if phase != "align":
                step_ms[phase].append(time.perf_counter() - t1)
        opt.step()
        t = time.perf_counter() - t0
        if phase is not None:
            counter[phase] = pruner._step
        if phase == "align":  # second view: the alignment term alone (grads accumulate; zeroed next step)
            t2 = time.perf_counter()
            pruner.alignment_loss().backward()
            align_ms.append(time.perf_counter() - t2)
        return t

    variants = {"dense": (dense, None), "scales only": (scaled, None)}
    variants.update({ph: (scaled, ph) for ph in PHASES})
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(args.warmup + args.repeats):
        k = rnd % len(names)
        for n in names[k:] + names[:k]:
            t = train_step(*variants[n])
            if rnd >= args.warmup:
                times[n].append(t)
    for ts in (align_ms, *step_ms.values()):
        del ts[: args.warmup]
    check = []
    for _ in range(max(args.repeats, 5)):
        t0 = time.perf_counter()
        pruner._selection.check_finite()
        check.append(time.perf_counter() - t0)

    med = {n: _ms(ts) for n, ts in times.items()}
    low = {n: min(ts) * 1e3 for n, ts in times.items()}  # contention only adds time: min is a second estimate
    d, s = med["dense"], med["scales only"]
    n_params = sum(q.numel() for q in dense.parameters())
    n_scales = len(pruner.scale_parameters())
    print(
        f"# Pruner overhead per training step: EDSR {blocks}x{feats} ({n_params / 1e6:.2f}M params, {n_scales} "
        f"scaled layers), batch {batch}, {size}x{size} -> {2 * size}x{2 * size}, L1, Adam\n"
        f"# {_cpu()}, {avail} CPUs available, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"Python {platform.python_version()}; median of {args.repeats} interleaved steps after {args.warmup} "
        f"warm-up rounds"
    )
    print("\n| variant | median ms | x dense | pruner's own overhead | quartiles ms | min ms | own overhead (min) |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        own = f"{(med[n] - s) / d * 100:+.2f}%" if n in PHASES else "-"
        own_min = f"{(low[n] - low['scales only']) / low['dense'] * 100:+.2f}%" if n in PHASES else "-"
        q = statistics.quantiles(times[n], n=4) if len(times[n]) > 1 else [med[n] / 1e3] * 3
        spread = f"{q[0] * 1e3:.0f}-{q[2] * 1e3:.0f}"
        print(f"| {n} | {med[n]:.1f} | {med[n] / d:.3f} | {own} | {spread} | {low[n]:.1f} | {own_min} |")
    para_min = (low["scales only"] - low["dense"]) / low["dense"] * 100
    para = f"{(s - d) / d * 100:+.2f}% (medians), {para_min:+.2f}% (mins)"
    print(f"\nparametrization cost (scales only - dense) / dense: {para}")
    print("\n| pruner's own work, timed alone | median ms | % of dense step |")
    print("|---|---|---|")
    rows = [("alignment_loss() + its backward (align)", _ms(align_ms))]
    rows += [(f"step() ({ph}, penalty on)", _ms(step_ms[ph])) for ph in PHASES[1:]]
    rows.append((f"check_finite() (inside step(), 1 in {pruner.schedule.reg_interval} steps)", _ms(check)))
    for label, ms in rows:
        print(f"| {label} | {ms:.3f} | {ms / d * 100:.3f}% |")


if __name__ == "__main__":
    main()
