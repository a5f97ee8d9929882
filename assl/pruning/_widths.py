"""Learned widths in the Pruner: when the chosen channels are fixed, how many each group loses.

Under ``Budget(params=..., widths="learned")`` (or ``macs=``) the Pruner does not fix one count
per group at construction. It inserts scales on every group that may lose units, aligns them
towards the uniform ratio's counts, and when it fixes the chosen channels it asks
:func:`~assl.budgets._allocation.allocate` how many units each group loses, from the same scores
it chooses by.

Those scores compare across groups as they are: each carrier's ``|scale|`` is taken relative to
that carrier's mean, and a unit's score sums them over the group's carriers. A unit of a residual
stream that 18 layers produce scores about 18: it counts in each layer it feeds, so it goes only
when its scales are far below the single layers'. What the units cost decides only where the
budget is met (:mod:`assl.budgets._allocation` says why not per cost).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from ..budgets._allocation import allocate
from ..budgets.budget import Budget
from ..graph import Graph
from ._selection import Scorer

__all__ = ["LearnedWidths"]

logger = logging.getLogger("assl")


class LearnedWidths:
    """The allocation of a parameter or MAC budget by score, and what it decided.

    Args:
        budget: The ``Budget(widths="learned")``.
        options: Per group that may lose units, the numbers it may lose.
        aim: Per group, what it loses until the allocation (the alignment's target): the
            configuration a resumed Pruner must agree on.
    """

    def __init__(self, budget: Budget, options: Mapping[str, list[int]], aim: Mapping[str, int]) -> None:
        self.budget = budget
        self.options = dict(options)
        self.aim = dict(aim)
        self.allocated: dict[str, int] | None = None
        """Units each group loses once allocated; ``None`` before."""

    def drop(self, name: str) -> None:
        """Take group ``name`` out of the allocation (it keeps all its units)."""
        self.options.pop(name, None)
        self.aim[name] = 0

    def allocate(self, graph: Graph, scorer: Scorer, groups: list[str]) -> dict[str, int]:
        """Units each of ``groups`` loses, from the scores of ``scorer``; remembered in :attr:`allocated`."""
        order: dict[str, list[int]] = {}
        scores: dict[str, np.ndarray] = {}
        for name in groups:
            s = scorer(name).detach().cpu()
            g = graph.group(name)
            ranked = torch.argsort(s, stable=True).tolist()  # as Selection.choose ranks them
            picked = set(g.pick(ranked, g.size))
            order[name] = [u for u in ranked if u in picked]
            scores[name] = s.double().numpy()
        options = {name: self.options[name] for name in groups}
        self.allocated = allocate(graph, self.budget, order, scores, options)
        return dict(self.allocated)

    def describe(self, graph: Graph) -> str:
        """``learned widths: group dense -> kept, ...``, narrowest share first (or not allocated yet)."""
        removed = self.allocated
        if removed is None:
            return "learned widths: not allocated yet (at the end of the align phase)"
        sizes = {g: graph.group(g).size for g in removed}
        order = sorted(removed, key=lambda g: (sizes[g] - removed[g]) / sizes[g])
        cut = [f"{g} {sizes[g]} -> {sizes[g] - removed[g]}" for g in order]
        return "learned widths: " + ", ".join(cut)
