"""Budgets: how many channels go, from a parameter, MAC or latency target.

``budget`` holds :class:`Budget` and solving one ratio for a parameter or MAC count; ``latency``
measures a :class:`LatencyTable` on the device; ``latency_plan`` predicts a pruned model's latency
from it and plans per-group widths (with ``_width_solver``); ``timing`` is the one timer:
interleaved, repeated rounds with the device synchronized.
"""

from .budget import Budget, Counts, count
from .latency import LatencyTable, measure_latency
from .latency_plan import LatencyPlan

__all__ = ["Budget", "Counts", "LatencyPlan", "LatencyTable", "count", "measure_latency"]
