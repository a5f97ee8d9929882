"""The library's non-public pieces the benchmarks use; no other benchmark module imports them.

Benchmarks measure what happens inside the library: the timer its latency budget relies on, the
plan its one-shot L1 baseline makes, the latency model's prediction, the Pruner's step counter.
Every import from beyond ``assl.__all__`` is here, so that a change of the library's layout is
fixed in this one file.
"""

from __future__ import annotations

import assl
from assl._scoring import l1_plan
from assl._slim import max_rel_err
from assl.budgets.budget import cheapest_plan
from assl.budgets.latency_plan import LatencyModel
from assl.budgets.timing import device_of, in_eval, interleaved, model_call
from assl.pruning._alignment import ALIGN_LOSSES
from assl.pruning._resolve import resolve
from assl.pruning._scales import scale_of

__all__ = [
    "ALIGN_LOSSES",
    "LatencyModel",
    "cheapest_plan",
    "check_finite",
    "device_of",
    "in_eval",
    "interleaved",
    "l1_plan",
    "max_rel_err",
    "model_call",
    "resolve",
    "scale_of",
    "set_step",
    "step_of",
]


def set_step(pruner: assl.Pruner, step: int) -> None:
    """Put ``pruner`` at optimizer step ``step`` of its schedule (to time one phase at will)."""
    pruner._step = step


def step_of(pruner: assl.Pruner) -> int:
    """The optimizer step of its schedule that ``pruner`` is at."""
    return pruner._step


def check_finite(pruner: assl.Pruner) -> None:
    """The NaN/inf check of the scales that ``Pruner.step()`` runs every ``reg_interval`` steps."""
    pruner._selection.check_finite()
