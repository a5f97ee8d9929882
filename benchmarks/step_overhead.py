"""Time what the Pruner adds to a training step, phase by phase.

Trains LEDSR (16 blocks, 64 feats, x2 by default) on a batch of 16 48x48 patches with an L1 loss
against a fixed random target and Adam, on the CPU. Candidates, timed with the benchmarks'
interleaved timer (every round runs each once, in a new random order, after warm-up calls):

* dense: a training step of the plain model;
* scales only: the Pruner's weight-normalized scales inserted, its own work not called (each
  forward recomputes the weights: the parametrization's cost);
* align / regularize / stabilize: the loop of the Pruner's docstring (loss +
  ``pruner.alignment_loss()``, backward, ``pruner.step()``, ``optimizer.step()``) in that phase;
* the Pruner's own work alone: ``alignment_loss()`` and its backward (align), ``step()``
  (regularize, stabilize) and the NaN/inf check ``step()`` runs every ``reg_interval`` steps.

One scaled model and one Pruner serve "scales only" and the three phases, so they differ only in
the Pruner's calls; each phase keeps its own step counter, started at the phase's first step of
the default schedule. The Pruner's own overhead is (phase - scales only) / dense; the
parametrization cost (scales only - dense) / dense.

    python -m benchmarks.step_overhead --threads 1 --repeats 21
    python -m benchmarks.step_overhead --threads 1 --batch 4 --repeats 7 --blocks 8 --feats 32 --append
    python -m benchmarks.step_overhead --smoke        # seconds: used by the test suite
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import assl

from . import cli, networks
from ._internals import check_finite, set_step, step_of
from .results import Writer, read
from .tables import markdown, provenance
from .timing import time_calls, with_autograd

NAME = "step_overhead"
PHASES = ("align", "regularize", "stabilize")
VARIANTS = ("dense", "scales only", *PHASES)
OWN_WORK = (
    "alignment_loss() + its backward (align)",
    "step() (regularize, penalty on)",
    "step() (stabilize, penalty on)",
)
SMOKE = {"blocks": 2, "feats": 8, "batch": 2, "patch": 8, "repeats": 2}


class Bench:
    """The models, the Pruner and the calls that are timed."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.dense = networks.build("ledsr", seed=0, blocks=a.blocks, feats=a.feats).train()
        self.scaled = copy.deepcopy(self.dense)
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(a.batch, 3, a.patch, a.patch, generator=g)
        self.target = torch.randn(a.batch, 3, 2 * a.patch, 2 * a.patch, generator=g)
        self.pruner = assl.Pruner(self.scaled, self.x[:1], ratio=0.5, skip=networks.LEDSR_SKIP)
        if not self.pruner.aligned:
            raise SystemExit("LEDSR's residual stream should be an aligned group")
        align, regularize, _ = self.pruner.schedule.bounds(True)
        self.counter = {"align": 0, "regularize": align, "stabilize": regularize}
        self.opts = {m: torch.optim.Adam(m.parameters(), lr=1e-4) for m in (self.dense, self.scaled)}
        for phase in PHASES:
            self.check_phase(phase)

    def check_phase(self, phase: str) -> None:
        """Raise unless the Pruner, at ``phase``'s counter, is in that phase (with the penalty on after align)."""
        set_step(self.pruner, self.counter[phase])
        if self.pruner.phase != phase or (phase != "align" and not self.pruner.penalty > 0):
            raise RuntimeError(f"the Pruner is not in {phase} with its penalty on at step {self.counter[phase]}")

    def step(self, model: nn.Module, phase: str | None) -> None:
        """One training step of ``model``, with the Pruner's calls of ``phase`` (None: none)."""
        opt = self.opts[model]
        if phase is not None:
            set_step(self.pruner, self.counter[phase])
        loss = F.l1_loss(model(self.x), self.target)
        if phase is not None:
            loss = loss + self.pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        if phase is not None:
            self.pruner.step()
            self.counter[phase] = step_of(self.pruner)
        opt.step()

    def align_term(self) -> None:
        """The alignment term and its backward alone (gradients accumulate; the next step zeroes them)."""
        set_step(self.pruner, self.counter["align"])
        self.pruner.alignment_loss().backward()

    def pruner_step(self, phase: str) -> None:
        """``pruner.step()`` alone, in ``phase``."""
        set_step(self.pruner, self.counter[phase])
        self.pruner.step()
        self.counter[phase] = step_of(self.pruner)

    def calls(self) -> dict[str, Callable[[], Any]]:
        """Every timed call, by label."""
        calls = {"dense": lambda: self.step(self.dense, None), "scales only": lambda: self.step(self.scaled, None)}
        calls.update({ph: functools.partial(self.step, self.scaled, ph) for ph in PHASES})
        calls[OWN_WORK[0]] = self.align_term
        calls[OWN_WORK[1]] = lambda: self.pruner_step("regularize")
        calls[OWN_WORK[2]] = lambda: self.pruner_step("stabilize")
        calls[f"check_finite() (inside step(), 1 in {self.pruner.schedule.reg_interval} steps)"] = lambda: check_finite(
            self.pruner
        )
        return {k: with_autograd(c) for k, c in calls.items()}


def main(argv: list[str] | None = None) -> list[dict]:
    """Time every call; append the run's row to ``--out`` and print the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=21, help="interleaved rounds")
    avail = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    p.add_argument("--threads", type=int, default=avail, help=f"torch threads (default: all available, {avail})")
    p.add_argument("--smoke", action="store_true", help="tiny model (2 blocks, 8 feats, batch 2, 8x8), 2 rounds")
    p.add_argument("--blocks", type=int, default=16, help="residual blocks (model size)")
    p.add_argument("--feats", type=int, default=64, help="features (model size)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--patch", type=int, default=48, help="LR patch side")
    cli.add_output(p, NAME)
    a = cli.parse(p, argv, smoke=SMOKE)
    cli.set_threads(a.threads)
    bench = Bench(a)
    calls = bench.calls()
    samples = time_calls(list(calls.values()), torch.device("cpu"), rounds=a.repeats)
    for phase in PHASES:
        bench.check_phase(phase)  # still in its phase after the timed steps
    ms = {k: (samples[:, i] * 1e3).tolist() for i, k in enumerate(calls)}
    writer = Writer(cli.output_path(a, NAME), NAME, a, append=a.append)
    writer.write(
        {
            "model": f"LEDSR {a.blocks}x{a.feats}",
            "params": sum(q.numel() for q in bench.dense.parameters()),
            "scaled_layers": len(bench.pruner.scale_parameters()),
            "batch": a.batch,
            "patch": a.patch,
            "median_ms": {k: statistics.median(v) for k, v in ms.items()},
            "samples_ms": ms,
        }
    )
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    return rows


def render(rows: list[dict]) -> str:
    """The docs' tables of each run: its variants, and the Pruner's own work timed alone."""
    return "\n\n".join(
        _render_run([r for r in rows if r["run"] == run]) for run in dict.fromkeys(r["run"] for r in rows)
    )


def _render_run(rows: list[dict]) -> str:
    v = rows[0]["values"]
    med, samples = v["median_ms"], v["samples_ms"]
    low = {k: min(s) for k, s in samples.items()}
    d, s = med["dense"], med["scales only"]
    body = []
    for n in VARIANTS:
        own = f"{(med[n] - s) / d * 100:+.2f}%" if n in PHASES else "-"
        own_min = f"{(low[n] - low['scales only']) / low['dense'] * 100:+.2f}%" if n in PHASES else "-"
        q = statistics.quantiles(samples[n], n=4) if len(samples[n]) > 1 else [med[n]] * 3
        body.append([n, f"{med[n]:.1f}", f"{med[n] / d:.3f}", own, f"{q[0]:.0f}-{q[2]:.0f}", f"{low[n]:.1f}", own_min])
    para_min = (low["scales only"] - low["dense"]) / low["dense"] * 100
    own_work = [[k, f"{med[k]:.3f}", f"{med[k] / d * 100:.3f}%"] for k in med if k not in VARIANTS]
    return "\n".join(
        [
            provenance(rows) + f" {v['model']} ({v['params'] / 1e6:.2f}M parameters, {v['scaled_layers']} scaled "
            f"layers), batch {v['batch']} of {v['patch']}x{v['patch']}; medians of "
            f"{rows[0]['settings']['repeats']} interleaved rounds.",
            "",
            markdown(
                ["variant", "median ms", "x dense", "pruner's own overhead", "quartiles ms", "min ms",
                 "own overhead (min)"],
                body,
            ),
            "",
            f"parametrization cost (scales only - dense) / dense: {(s - d) / d * 100:+.2f}% (medians), "
            f"{para_min:+.2f}% (mins)",
            "",
            markdown(["pruner's own work, timed alone", "median ms", "% of dense step"], own_work),
        ]
    )  # fmt: skip


def render_sizes(rows: list[dict]) -> str:
    """One line per run (model size): the Pruner's own work against a dense step, and the parametrization."""
    body = []
    for r in rows:
        v = r["values"]
        med, low = v["median_ms"], {k: min(s) for k, s in v["samples_ms"].items()}
        d = med["dense"]
        own = [f"{med[k]:.2f} ms = {med[k] / d * 100:.2f}%" for k in OWN_WORK]
        para = (med["scales only"] - d) / d * 100
        para_min = (low["scales only"] - low["dense"]) / low["dense"] * 100
        body.append(
            [v["model"], f"{v['params'] / 1e6:.2f}M", v["scaled_layers"], v["batch"], f"{d:.1f}", *own,
             f"{para:+.1f}% / {para_min:+.1f}%"]
        )  # fmt: skip
    header = ["model", "params", "scaled layers", "batch", "dense step ms", "align: `alignment_loss()` + backward",
              "`step()` regularize", "`step()` stabilize", "parametrization (medians / minima)"]  # fmt: skip
    return "\n".join([provenance(rows), "", markdown(header, body)])


if __name__ == "__main__":
    main()
