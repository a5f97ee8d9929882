"""How many channels each group loses: ratios, rounding, and solving a ratio for a budget."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from .graph import ChannelGroup, Graph

__all__ = ["Budget", "solve_ratio", "units_to_remove"]


@dataclass(frozen=True)
class Budget:
    """A target size instead of a ratio: at most ``params`` parameters or ``macs`` MACs.

    MACs are those of the example inputs given to the Pruner (the whole batch). The Pruner
    solves one ratio for all pruned groups so that the slimmed model fits.

    Example:
        >>> assl.Pruner(model, x, ratio=assl.Budget(params=300_000))
    """

    params: int | None = None
    macs: int | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.params, self.macs) if v is not None]
        if len(given) != 1:
            raise ValueError("Budget takes exactly one of params= or macs=")
        if not isinstance(given[0], int) or isinstance(given[0], bool) or given[0] <= 0:
            raise ValueError(f"a Budget must be a positive int, got {given[0]!r}")


def check_ratio(ratio: float, where: str) -> float:
    """``ratio`` as a float in ``[0, 1)``, or a ValueError naming ``where`` it came from."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ValueError(f"{where}: a pruning ratio must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def units_to_remove(group: ChannelGroup, ratio: float, round_to: int) -> int:
    """``ceil(ratio * size)`` units, never all, at most the prunable ones, kept width rounded up.

    With ``round_to=8`` the number of kept units becomes a multiple of 8 where the group allows
    it (fewer units are removed, never more).
    """
    k = math.ceil(ratio * group.size - 1e-9)
    k = min(k, group.size - 1, group.num_prunable)
    kept = group.size - k
    if round_to > 1:  # after the cap, so that pinned units cannot undo the rounding
        kept = min(group.size, math.ceil(kept / round_to) * round_to)
    return max(0, group.size - kept)


def cheapest_plan(graph: Graph, removed: Mapping[str, int], costs: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """A plan removing the ``removed[name]`` prunable units that save the least in each group.

    It leaves the largest model any choice of that many units can leave, so a budget it meets is
    met whichever units the Pruner chooses later.
    """
    plan = {}
    for name, k in removed.items():
        if k > 0:
            plan[name] = graph.group(name).pick(np.argsort(costs[name], kind="stable"), k)
    return plan


def solve_ratio(graph: Graph, budget: Budget, removed_for: Callable[[float], dict[str, int]]) -> float:
    """The smallest ratio whose slimmed model fits ``budget``.

    Args:
        graph: The traced graph.
        budget: The target.
        removed_for: Units each group loses at a given ratio (skips and rounding applied).

    Raises:
        ValueError: Even the largest ratio leaves the model above the budget.
    """
    if budget.params is not None:
        count, target, unit = graph.count_params, budget.params, "parameters"
    else:
        count, target, unit = graph.count_macs, int(budget.macs or 0), "MACs"
    costs = graph.unit_costs("params" if budget.params is not None else "macs")

    def size(r: float) -> int:
        return count(cheapest_plan(graph, removed_for(r), costs))

    if size(0.0) <= target:
        return 0.0
    hi = 1.0 - 1e-9
    smallest = size(hi)
    if smallest > target:
        raise ValueError(
            f"the budget of {target:,} {unit} cannot be met: pruning every prunable channel but one per "
            f"group still leaves {smallest:,} (dense: {size(0.0):,}); raise the budget or prune more layers"
        )
    lo = 0.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if size(mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi
