"""Aligned Structured Sparsity Learning: prune whole channels out of any residual CNN."""

from __future__ import annotations

import importlib
from typing import Any

from . import _compat
from ._compat import slim as slim  # deprecated, not in __all__
from ._slim import apply_plan, masked_copy, slimmed_copy
from .budgets import Budget, Counts, LatencyPlan, LatencyTable, count, measure_latency
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    ASSLError,
    ASSLWarning,
    CheckpointError,
    PatternError,
    PlanError,
    StateError,
    TraceError,
)
from .graph import ChannelGroup, Graph, Plan
from .pruning import Progress, Pruner, Schedule, Teacher, distillation_loss
from .serialization import load, load_slim_state_dict, save, slim_state_dict
from .tracing import trace

__version__ = "0.1.0.dev0"

__all__ = [
    "ASSLError",
    "ASSLWarning",
    "ArgumentError",
    "ArgumentTypeError",
    "Budget",
    "ChannelGroup",
    "CheckpointError",
    "Counts",
    "Graph",
    "LatencyPlan",
    "LatencyTable",
    "PatternError",
    "Plan",
    "PlanError",
    "Progress",
    "Pruner",
    "Schedule",
    "StateError",
    "Teacher",
    "TraceError",
    "apply_plan",
    "count",
    "distillation_loss",
    "load",
    "load_slim_state_dict",
    "masked_copy",
    "measure_latency",
    "save",
    "slim_state_dict",
    "slimmed_copy",
    "trace",
]

_compat.install()


def __getattr__(name: str) -> Any:
    """``assl.<old module>`` for the modules that moved (deprecated, see ``assl._compat``)."""
    if f"assl.{name}" in _compat.MOVED_MODULES:
        return importlib.import_module(f"assl.{name}")
    raise AttributeError(f"module 'assl' has no attribute {name!r}")
