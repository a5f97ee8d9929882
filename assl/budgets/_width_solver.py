"""Choosing each group's width for a latency target, greedily, from any latency prediction.

Starting from the dense model, :func:`solve_widths` repeatedly narrows the group that loses the
least importance per second saved (it may jump several widths at once, over widths that save
nothing) until the prediction meets the target, then widens groups again wherever the target still
holds. The importance a width loses grows faster than the units it drops
(:func:`_importance_lost`), so the cuts spread over the groups instead of emptying the cheapest.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from ..errors import ArgumentError

__all__ = ["Predictor", "allowed_widths", "smallest", "solve_widths"]

MAX_CANDIDATES = 64
"""At most this many widths per group (a coarser step above it), to keep the solver quick."""


class Predictor(Protocol):
    """What the solver needs of a latency prediction (:class:`assl.latency_budget.LatencyModel`)."""

    def seconds(self, removed: Mapping[str, int]) -> float:
        """Predicted seconds after each group ``g`` loses ``removed[g]`` units."""

    def change(self, removed: Mapping[str, int], group: str, k: int) -> float:
        """Predicted seconds gained (negative: saved) when ``group`` loses ``k`` units instead."""

    def neighbours(self) -> dict[str, set[str]]:
        """Per group, the groups whose changes alter the time of one of its layers."""


def allowed_widths(size: int, least: int, step: int) -> list[int]:
    """Widths a group may take: multiples of ``step`` from ``least`` up, and ``size`` itself."""
    widths = [w for w in range(step, size + 1, step) if w >= least]
    if len(widths) > MAX_CANDIDATES:
        widths = widths[:: -(-len(widths) // MAX_CANDIDATES)]
    return sorted({*widths, size})


def solve_widths(
    model: Predictor,
    sizes: Mapping[str, int],
    allowed: Mapping[str, list[int]],
    scores: Mapping[str, np.ndarray],
    target: float,
) -> dict[str, int]:
    """Units each group loses so that the predicted seconds are at most ``target``.

    Args:
        model: The latency prediction.
        sizes: Units per group.
        allowed: Widths each group may take (its full width included).
        scores: Per group, the importance of each unit it may lose (lower goes first).
        target: Seconds.

    Raises:
        ValueError: Even the smallest allowed widths are predicted above ``target``.
    """
    lost = {g: _importance_lost(s, sizes[g]) for g, s in scores.items()}
    options = _options(sizes, allowed, scores)
    smallest = {g: ks[-1] for g, ks in options.items()}
    if model.seconds(smallest) > target:
        raise ArgumentError(
            f"the latency target of {target * 1e3:.3f} ms cannot be met: the smallest allowed widths are predicted "
            f"at {model.seconds(smallest) * 1e3:.3f} ms (dense {model.seconds({}) * 1e3:.3f} ms); raise the target, "
            f"allow smaller widths (round_to), or prune more layers (fewer skip patterns)"
        )
    removed = dict.fromkeys(sizes, 0)
    moves = _Moves(model, options, removed)
    while model.seconds(removed) > target:
        best: tuple[float, str, int] | None = None
        for g, k, delta in moves.narrower():
            if delta < 0:
                cost = (lost[g][k] - lost[g][removed[g]]) / -delta
                if best is None or cost < best[0]:
                    best = (cost, g, k)
        if best is None:  # nothing saves time any more, yet the smallest widths met the target
            removed.update(smallest)
            break
        moves.apply(best[1], best[2])
    while True:  # widen again: most importance back per second spent, while the target holds
        now = model.seconds(removed)
        best = None
        for g, k, delta in moves.wider():
            if now + delta <= target:
                gain = (lost[g][removed[g]] - lost[g][k]) / max(delta, 1e-12)
                if gain > 0 and (best is None or gain > best[0]):
                    best = (gain, g, k)
        if best is None:
            return removed
        moves.apply(best[1], best[2])


def _options(
    sizes: Mapping[str, int], allowed: Mapping[str, list[int]], scores: Mapping[str, np.ndarray]
) -> dict[str, list[int]]:
    """Per group, the numbers of units it may lose: to an allowed width, at most its scored units."""
    return {g: sorted({sizes[g] - w for w in allowed[g] if sizes[g] - w <= len(scores[g])}) for g in sizes}


def smallest(
    sizes: Mapping[str, int], allowed: Mapping[str, list[int]], scores: Mapping[str, np.ndarray]
) -> dict[str, int]:
    """Units each group loses at its smallest allowed width: the fastest model the solver may choose."""
    return {g: ks[-1] for g, ks in _options(sizes, allowed, scores).items()}


def _importance_lost(scores: np.ndarray, size: int) -> np.ndarray:
    """What removing the ``k`` lowest-scoring units costs, for every ``k``: ``-m log(1 - f_k)``.

    ``f_k`` is the share of the group's score the ``k`` units hold (the kept units and one more
    unit's worth count as the rest, so the cost stays finite) and ``m`` the group's mean unit
    score: about the number of layers that read its channels. A small cut costs about ``m`` times
    the share it removes, the same share of a wide or a narrow group alike, and each further
    unit costs more than the last: a group is not emptied because its units save time cheaply.
    """
    s = np.sort(np.asarray(scores, dtype=float))
    if s.size == 0:
        return np.zeros(1)
    mean = max(float(s.mean()), 1e-12)
    total = float(s.sum()) + mean * max(1, size - s.size)
    cut = np.concatenate([[0.0], np.cumsum(s)])
    return -mean * np.log1p(-cut / total)


class _Moves:
    """Each group's possible width changes with their predicted seconds, recomputed only for the
    groups that share a layer with the group that last changed."""

    def __init__(self, model: Predictor, options: Mapping[str, list[int]], removed: dict[str, int]) -> None:
        self.model, self.options, self.removed = model, options, removed
        self.near = model.neighbours()
        self.cache: dict[str, list[tuple[int, float]]] = {}

    def _deltas(self, g: str) -> list[tuple[int, float]]:
        if g not in self.cache:
            self.cache[g] = [
                (k, self.model.change(self.removed, g, k)) for k in self.options[g] if k != self.removed[g]
            ]
        return self.cache[g]

    def narrower(self) -> list[tuple[str, int, float]]:
        return [(g, k, d) for g in self.options for k, d in self._deltas(g) if k > self.removed[g]]

    def wider(self) -> list[tuple[str, int, float]]:
        return [(g, k, d) for g in self.options for k, d in self._deltas(g) if k < self.removed[g]]

    def apply(self, g: str, k: int) -> None:
        self.removed[g] = k
        for h in self.near.get(g, {g}):
            self.cache.pop(h, None)
