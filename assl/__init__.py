"""Aligned Structured Sparsity Learning: prune whole channels out of any residual CNN."""

from .errors import ASSLError, PlanError, TraceError
from .graph import ChannelGroup, Graph, Plan
from .slim import masked_copy, slim
from .trace import trace

__version__ = "0.1.0.dev0"

__all__ = [
    "ASSLError",
    "ChannelGroup",
    "Graph",
    "Plan",
    "PlanError",
    "TraceError",
    "masked_copy",
    "slim",
    "trace",
]
