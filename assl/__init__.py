"""Aligned Structured Sparsity Learning: prune whole channels out of any residual CNN."""

from .budget import Budget
from .errors import ASSLError, CheckpointError, PlanError, TraceError
from .graph import ChannelGroup, Graph, Plan
from .io import load, save
from .latency import LatencyTable, measure_latency
from .latency_budget import LatencyPlan
from .patterns import PatternError
from .pruner import Pruner
from .schedule import Schedule
from .slim import masked_copy, slim
from .tracing import trace

__version__ = "0.1.0.dev0"

__all__ = [
    "ASSLError",
    "Budget",
    "ChannelGroup",
    "CheckpointError",
    "Graph",
    "LatencyPlan",
    "LatencyTable",
    "PatternError",
    "Plan",
    "PlanError",
    "Pruner",
    "Schedule",
    "TraceError",
    "load",
    "masked_copy",
    "measure_latency",
    "save",
    "slim",
    "trace",
]
