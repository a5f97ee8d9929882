"""Learned widths for a parameter or MAC budget: the units of all groups ranked by score.

``Budget(widths="learned")`` replaces the one ratio of :func:`~assl.budgets.budget.solve_ratio`
by a global choice. Each group may lose units only in steps that keep its width a multiple of
``round_to`` and at least its floor (:func:`width_options`). Starting from the dense model,
:func:`allocate` repeatedly takes the step, over all groups, whose units hold the least score (their
mean), a group's steps in its own order, and keeps the shortest prefix of those steps whose plan the
budget's own count puts within the target; then it gives back the units of earlier steps (latest
first) that the last step made unnecessary. What a unit costs decides only where the budget is met,
not which units go first: ranked by score per parameter instead, units whose scales are nearly
alike (BatchNorm weights near 1 after a short training) go by cost alone, and the dearest groups
were cut to their floor while cheap ones kept everything (measured on a ResNet, a MobileNetV2-shaped
net and a U-Net, where ranking by score did better on each).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..errors import ArgumentError, warn
from ..graph import Graph
from .budget import Budget, cheapest_plan

__all__ = ["allocate", "check_reachable", "width_options"]


def width_options(
    graph: Graph, floors: Mapping[str, float], free: Iterable[str], round_to: int
) -> dict[str, list[int]]:
    """Per free group, the numbers of units it may lose, ascending from 0.

    Kept widths are multiples of ``round_to`` (or the full width), at least ``floors[g]`` of the
    group's units, at least one unit, and never below the units the trace pins.
    """
    out = {}
    for name in free:
        g = graph.group(name)
        least = max(g.size - g.num_prunable, math.ceil(floors[name] * g.size - 1e-9), 1)
        kept = [w for w in range(round_to, g.size + 1, round_to) if w >= least]
        out[name] = sorted({g.size - w for w in [*kept, g.size]})
    return out


def check_reachable(graph: Graph, budget: Budget, options: Mapping[str, Sequence[int]]) -> None:
    """Raise unless every group at its smallest allowed width fits ``budget``, whichever units go.

    Raises:
        ArgumentError: Even the smallest widths leave the model above the budget (the floor named).
    """
    count, target, unit, kind = budget.measure(graph)
    smallest = count(cheapest_plan(graph, {g: ks[-1] for g, ks in options.items()}, graph.unit_costs(kind)))
    if smallest > target:
        raise ArgumentError(
            f"the budget of {target:,} {unit} cannot be met with learned widths: every group at its smallest "
            f"allowed width (Budget(min_width={budget.min_width!r}), round_to) still leaves {smallest:,} "
            f"(dense: {count():,}); raise the budget, lower min_width, or prune more layers"
        )


def allocate(
    graph: Graph,
    budget: Budget,
    order: Mapping[str, Sequence[int]],
    scores: Mapping[str, np.ndarray],
    options: Mapping[str, Sequence[int]],
) -> dict[str, int]:
    """Units each group loses: the steps of least score first, as few as meet ``budget``.

    Args:
        graph: The traced graph.
        budget: A parameter or MAC budget.
        order: Per group, the units it would lose, first to last (each prefix a valid choice).
        scores: Per group, one comparable score per unit (indexed by unit; lower goes first).
        options: Per group, the numbers of units it may lose (:func:`width_options`).

    Returns:
        Per group of ``options``, the number of its units that go; the plan of the first that many
        units of each ``order`` fits the budget as :func:`assl.count` counts it.
    """
    count, target, unit, kind = budget.measure(graph)
    costs = graph.unit_costs(kind)
    steps = {g: [k for k in ks if k <= len(order[g])] for g, ks in options.items()}
    rank = {g: i for i, g in enumerate(steps)}
    heap: list[tuple[float, int, str, int]] = []

    def push(g: str, i: int) -> None:
        if i + 1 < len(steps[g]):
            units = np.asarray(order[g][steps[g][i] : steps[g][i + 1]], dtype=np.int64)
            saves = float(costs[g][units].sum())
            value = float(scores[g][units].mean()) if saves > 0 else math.inf
            heapq.heappush(heap, (value, rank[g], g, i + 1))

    for g in steps:
        push(g, 0)
    sequence: list[tuple[str, int]] = []
    while heap:
        _, _, g, i = heapq.heappop(heap)
        sequence.append((g, steps[g][i]))
        push(g, i)

    def removed_at(n: int) -> dict[str, int]:
        removed = dict.fromkeys(steps, 0)
        for g, k in sequence[:n]:
            removed[g] = k
        return removed

    def size(n: int) -> int:
        return count(_plan(order, removed_at(n)))

    if size(0) <= target:
        return removed_at(0)
    lo, hi = 0, len(sequence)  # size(lo) > target; size is non-increasing in n
    if size(hi) > target:
        warn(
            f"learned widths: the budget of {target:,} {unit} is not met even at the smallest allowed widths "
            f"({size(hi):,} left); every group is cut to its smallest width"
        )
        return removed_at(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if size(mid) <= target:
            hi = mid
        else:
            lo = mid
    return _widen(removed_at(hi), sequence[:hi], steps, lambda r: count(_plan(order, r)) <= target)


def _plan(order: Mapping[str, Sequence[int]], removed: Mapping[str, int]) -> dict[str, list[int]]:
    return {g: sorted(order[g][:k]) for g, k in removed.items() if k}


def _widen(
    removed: dict[str, int],
    taken: Sequence[tuple[str, int]],
    steps: Mapping[str, Sequence[int]],
    fits: Callable[[Mapping[str, int]], bool],
) -> dict[str, int]:
    """Give units back where the budget still holds: the last step taken may save more than was
    missing, so earlier steps (latest first) are undone while the plan still fits."""
    for g in dict.fromkeys(g for g, _ in reversed(taken)):
        while removed[g]:
            wider = {**removed, g: max(k for k in steps[g] if k < removed[g])}
            if not fits(wider):
                break
            removed = wider
    return removed
