"""What the channels the trace pins cost a ratio: how much less it removes, and the main reasons why."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from ..graph import Graph

__all__ = ["shortfall"]


def shortfall(graph: Graph, removed: Mapping[str, int], ratio: float) -> str | None:
    """Why ``ratio`` removes much less than asked, when channels the trace pins are the cause.

    Args:
        graph: The traced graph.
        removed: Units each group loses (as the Pruner resolved them); a group that loses none
            although it could is taken as kept whole by the user (a skip pattern).
        ratio: The fraction of every group's channels asked for.

    Returns:
        A message naming the share of parameters removed, the share that removing ``ratio`` of
        every group's units would remove were nothing pinned, and the main reasons channels stay
        with the units each pins; ``None`` when what is removed is at least half of that.
    """
    asked: dict[str, range] = {}
    got: dict[str, list[int]] = {}
    units: dict[str, int] = {}
    groups: dict[str, int] = {}
    example: dict[str, str] = {}
    for g in graph.groups:
        wanted = min(math.ceil(ratio * g.size - 1e-9), g.size - 1)
        k = removed.get(g.name, 0)
        if wanted <= 0 or (k == 0 and g.num_prunable >= wanted):
            continue
        asked[g.name] = range(wanted)
        got[g.name] = g.pick(range(g.size), k)
        if g.num_prunable >= wanted:
            continue
        kinds = {_kind(r): r for r in g.reasons.values()}
        for reason in g.reasons.values():
            units[_kind(reason)] = units.get(_kind(reason), 0) + 1
        for kind, reason in kinds.items():
            groups[kind] = groups.get(kind, 0) + 1
            example.setdefault(kind, reason)
    total = graph.count_params()
    would = total - graph.count_params_removing(asked)
    does = total - graph.count_params_removing(got)
    if not would or does >= 0.5 * would:
        return None
    top = sorted(units, key=lambda k: -units[k])[:3]
    reasons = "; ".join(f"{units[k]} units in {groups[k]} group(s), e.g. {example[k]}" for k in top)
    return (
        f"ratio {ratio} removes {does / total:.1%} of the parameters; with nothing pinned it would remove "
        f"{would / total:.1%}, but the trace pins channels. Main reasons: {reasons}. See graph.summary() for "
        f"every group"
    )


def _kind(reason: str) -> str:
    """A reason without the names and lines in it, so that reasons of one kind count together."""
    return re.sub(r"\(at [^)]*\)|at \S+:\d+", "", re.sub(r"`[^`]*`", "`...`", reason)).strip()
