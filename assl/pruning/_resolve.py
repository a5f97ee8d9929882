"""From the user's ratio, skip and groups to what each traced group loses and which are aligned.

Patterns are checked against the trace here, before the Pruner changes anything: a skip pattern
that matches no module, a ratio or group pattern that matches no producer, a same-pruned group
that leaves out a layer the model ties to it, and layers of different groups given different
ratios are errors that name the layers. A skip pattern may name any module: a layer without
output channels of its own (a depthwise conv, a norm) keeps the channels it carries, and one
that changes nothing (a layer the trace pins anyway) is an ``assl.ASSLWarning``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

from torch import nn

from .._patterns import PatternError, match, match_each, named, patterns_of
from ..budgets._allocation import check_reachable, width_options
from ..budgets.budget import Budget, check_ratio, solve_ratio, units_to_remove
from ..budgets.latency_plan import LatencyPlan, latency_removed, min_widths
from ..errors import ArgumentError, ArgumentTypeError, warn
from ..graph import ChannelGroup, Graph
from ._scales import scale_of
from ._selection import owner_of
from .schedule import Schedule

__all__ = ["Resolved", "check_arguments", "checked_schedule", "ratio_or_budget", "resolve"]

logger = logging.getLogger("assl")


def checked_schedule(schedule: Schedule | None, steps: int | None) -> Schedule:
    """The schedule a Pruner given ``schedule`` and ``steps`` starts from (the default if None; sized
    to ``steps`` with an align phase when given), checked before any trace.

    Raises:
        TypeError: ``schedule`` is not a :class:`Schedule`.
        ValueError: ``steps`` as :meth:`Schedule.sized` refuses them with ``schedule``.
    """
    schedule = schedule if schedule is not None else Schedule()
    if not isinstance(schedule, Schedule):
        raise ArgumentTypeError(f"schedule must be an assl.Schedule, got {type(schedule).__name__}")
    return schedule if steps is None else schedule.sized(steps)


def check_arguments(
    model: nn.Module, schedule: Schedule | None, round_to: int | str, order: str, *, steps: int | None = None
) -> Schedule:
    """Check the Pruner's arguments that need no trace; return the schedule (the default if None; sized
    to ``steps`` with an align phase when given).

    Raises:
        TypeError: The model is not an ``nn.Module`` or is wrapped in (Distributed)DataParallel
            (``order`` says what to do), or ``schedule`` is not a :class:`Schedule`.
        ValueError: ``round_to`` is not an int >= 1 or ``"auto"``, ``steps`` as :meth:`Schedule.sized`
            refuses them with ``schedule``, or the model already has ASSL scales or
            carries another living Pruner's channels.
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        raise ArgumentTypeError(f"the model is already wrapped in {type(model).__name__}: {order}")
    if round_to != "auto" and (not isinstance(round_to, int) or isinstance(round_to, bool) or round_to < 1):
        raise ArgumentError(f"round_to must be an int >= 1 or 'auto', got {round_to!r}")
    schedule = checked_schedule(schedule, steps)
    for name, m in model.named_modules():
        if scale_of(m) is not None:
            raise ArgumentError(f"`{name}` already has ASSL scales: a model is pruned by one Pruner at a time")
        if owner_of(m) is not None:
            raise ArgumentError(
                f"`{name}` carries the channels of another Pruner (in its gamma and beta): a model is pruned by one "
                "Pruner at a time; delete the other Pruner first"
            )
    return schedule


def ratio_or_budget(
    ratio: float | Mapping[str, float] | Budget | None, budget: Budget | None
) -> float | Mapping[str, float] | Budget:
    """The one pruning target among ``ratio=`` and ``budget=``; a Budget given as ``ratio`` still works, deprecated.

    Raises:
        ArgumentError: Both or neither are given.
        ArgumentTypeError: ``budget`` is not an :class:`assl.Budget`.
    """
    if isinstance(ratio, Budget):
        warnings.warn(
            "passing an assl.Budget as ratio= is deprecated: pass it as budget= (ratio= takes a float or "
            "{glob: ratio})",
            DeprecationWarning,
            stacklevel=3,
        )
        ratio, budget = (None, ratio) if budget is None else (ratio, budget)
    if budget is not None and not isinstance(budget, Budget):
        raise ArgumentTypeError(f"budget must be an assl.Budget, got {type(budget).__name__}")
    if (ratio is None) == (budget is None):
        raise ArgumentError(
            "give exactly one pruning target: ratio= (a float or {glob: ratio}) or budget=assl.Budget(...)"
            + (", not both" if ratio is not None else "")
        )
    return budget if budget is not None else cast("float | Mapping[str, float]", ratio)


class Resolved(NamedTuple):
    """What the Pruner's arguments decide before it changes anything."""

    removed: dict[str, int]
    """Units each group loses."""
    aligned: list[str]
    """The groups that run the alignment phase, in trace order."""
    latency: LatencyPlan | None
    """What a latency budget chose (``None`` for other ratios)."""
    options: dict[str, list[int]] | None = None
    """Under learned widths, the numbers of units each group may lose (``removed`` is then only
    what the alignment aims at until the allocation); ``None`` otherwise."""


def resolve(
    graph: Graph,
    ratio: float | Mapping[str, float] | Budget,
    *,
    skip: str | nn.Module | Iterable[str | nn.Module],
    groups: Sequence[str | nn.Module | Sequence[str | nn.Module]] | None,
    round_to: int | str,
    model: nn.Module,
    example_inputs: Any,
) -> Resolved:
    """Units each group loses, the groups that run the alignment phase, and a latency plan.

    A latency budget times the model on ``example_inputs`` first (unless it carries a table).

    Raises:
        ValueError: A bad ratio, a pattern that matches nothing, groups that do not fit the trace,
            an unreachable budget, ``round_to="auto"`` without a latency budget, or nothing left
            to prune.
        TypeError: ``skip`` or ``groups`` of the wrong type.
    """
    latency = isinstance(ratio, Budget) and ratio.is_latency
    if round_to == "auto" and not latency:
        raise ArgumentError(
            "round_to='auto' takes the width step from a latency table: use it with "
            "budget=assl.Budget(latency=...) or Budget(relative_latency=...), or give an int"
        )
    # module objects -> their names, before anything reads the patterns
    skip_globs: str | Iterable[str] = named(skip, model, "skip")
    group_globs: Any = groups
    if groups is not None and not isinstance(groups, str) and isinstance(groups, Sequence):
        group_globs = [named(g, model, f"groups[{i}]") for i, g in enumerate(groups)]
    producers = list(graph.layers)
    kept_groups = _skipped_groups(graph, skip_globs)
    for name in sorted(kept_groups):
        logger.info("group %s keeps all channels: it contains a skipped layer", name)
    ratio_of = _layer_ratios(ratio, producers)

    def removed_for(r: float | None) -> dict[str, int]:
        out = {}
        for g in graph.groups:
            gr = r if r is not None else _group_ratio(g, ratio_of)
            out[g.name] = 0 if g.name in kept_groups or gr == 0 else units_to_remove(g, gr, int(round_to))
        return out

    plan = None
    options = None
    if isinstance(ratio, Budget) and ratio.is_latency:
        removed, plan = latency_removed(graph, ratio, model, example_inputs, kept_groups, round_to)
    elif isinstance(ratio, Budget):
        solved = solve_ratio(graph, ratio, removed_for)
        logger.info("budget %s met with ratio %.6f", ratio, solved)
        removed = removed_for(solved)
        if ratio.widths == "learned":
            removed, options = _learned(graph, ratio, removed, kept_groups, int(round_to))
    else:
        removed = removed_for(None)
    aligned = _aligned_groups(graph, group_globs, removed)
    if not any(removed.values()):
        raise ArgumentError(
            "nothing to prune: with this ratio, skip list and the channels the trace pins, no group loses a "
            f"channel.\n{graph.summary()}"
        )
    return Resolved(removed, aligned, plan, options)


def _learned(
    graph: Graph, budget: Budget, uniform: Mapping[str, int], kept: set[str], round_to: int
) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Under learned widths: what the alignment aims at in each group, and what each may lose.

    Every group that may lose units gets scales; until the allocation, its alignment aims at the
    uniform ratio's count, within what it may lose (at least one unit).
    """
    free = [g.name for g in graph.groups if g.name not in kept and g.num_prunable > 0]
    allowed = width_options(graph, min_widths(graph, budget.min_width), free, round_to)
    options = {g: ks for g, ks in allowed.items() if ks[-1] > 0}
    check_reachable(graph, budget, options)
    aim = {g: min(ks[-1], max(ks[1], uniform[g])) for g, ks in options.items()}
    return {g.name: aim.get(g.name, 0) for g in graph.groups}, options


def _skipped_groups(graph: Graph, skip: str | Iterable[str]) -> set[str]:
    """The groups the skip patterns keep whole; warns about patterns that change nothing."""
    modules = list(graph.module_names) or list(graph.layers)
    kept: set[str] = set()
    for pattern, hits in match_each(skip, list(graph.layers), what="skip", known=modules).items():
        named = hits or match(pattern, modules, what="skip")
        groups = {graph.group(n).name for n in hits} or {g for n in named for g in graph.groups_through(n)}
        kept |= groups
        if not any(graph.group(g).num_prunable for g in groups):
            warn(f"skip pattern {pattern!r} changes nothing: {_why_nothing(graph, named)}")
    return kept


def _why_nothing(graph: Graph, named: list[str]) -> str:
    """Why skipping these modules keeps no channel that could have gone."""
    name = named[0]
    more = f" (and {len(named) - 1} more)" if len(named) > 1 else ""
    if name in graph.opaque_layers:
        return f"`{name}`{more} is opaque, its channels stay anyway: {graph.opaque_layers[name]}"
    groups = [graph.group(g) for g in (graph.groups_through(name) if name not in graph.layers else [name])]
    if groups:
        reason = next((r for g in groups for r in g.reasons.values()), "")
        return f"the channels of `{name}`{more} stay anyway: {reason}"
    inside = [n for n in graph.layers if n.startswith(name + ".")]
    hint = f"; to skip the layers inside it, use {name + '.*'!r}" if inside else ""
    return f"`{name}`{more} has no channels of its own to prune{hint}"


def _layer_ratios(ratio: float | Mapping[str, float] | Budget, producers: list[str]) -> dict[str, float]:
    if isinstance(ratio, Budget):
        return {}
    if isinstance(ratio, Mapping):
        out: dict[str, float] = {}
        for pattern, layers in match_each(list(ratio), producers, what="ratio").items():
            r = check_ratio(ratio[pattern], f"ratio[{pattern!r}]")
            for layer in layers:
                out.setdefault(layer, r)  # first match wins
        return out
    r = check_ratio(ratio, "ratio")
    return dict.fromkeys(producers, r)


def _group_ratio(group: ChannelGroup, ratio_of: Mapping[str, float]) -> float:
    ratios = {layer: ratio_of[layer] for layer in group.layers if layer in ratio_of}
    if not ratios:
        return 0.0
    if len(set(ratios.values())) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in ratios.items())
        raise ArgumentError(
            f"layers of group {group.name!r} lose the same channels but were given different ratios ({listed}); "
            f"give them one ratio"
        )
    return next(iter(ratios.values()))


def _aligned_groups(
    graph: Graph, groups: Sequence[str | Sequence[str]] | None, removed: Mapping[str, int]
) -> list[str]:
    pruned = [g for g in graph.groups if removed[g.name]]
    if groups is None:
        return [g.name for g in pruned if len(g.layers) > 1]
    if isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, Sequence):
        raise ArgumentTypeError(
            f"groups must be a list of same-pruned groups (lists of globs), got {type(groups).__name__}"
        )
    producers = list(graph.layers)
    covered: set[str] = set()
    for i, patterns in enumerate(groups):
        if not patterns_of(patterns, f"groups[{i}]"):
            raise PatternError(
                f"groups[{i}] is empty: list the layers of each same-pruned group as globs, e.g. "
                f"[{', '.join(repr(n) for n in producers[:2])}]"
            )
        layers = match(patterns, producers, what=f"groups[{i}]")
        traced = {graph.group(layer).name for layer in layers}
        if len(traced) > 1:
            widths = ", ".join(f"{layer} ({graph.group(layer).size} channels)" for layer in layers[:6])
            raise PatternError(
                f"group {patterns!r} matches layers whose outputs are not tied together by the model: {widths}. "
                f"A same-pruned group lists layers whose outputs are added (or multiplied) together; "
                f"the trace found {len(traced)} separate groups: {', '.join(sorted(traced))}"
            )
        g = graph.group(layers[0])
        missing = [layer for layer in g.layers if layer not in layers]
        if missing:
            raise PatternError(
                f"group {patterns!r} leaves out {', '.join(missing)}, whose outputs the trace ties to "
                f"{', '.join(layers[:4])}{' ...' if len(layers) > 4 else ''}: add them to the group (or skip them)"
            )
        covered.add(g.name)
    uncovered = [g for g in pruned if len(g.layers) > 1 and g.name not in covered]
    if uncovered:
        raise PatternError(
            "these layers are tied together by the model but in no group: "
            + "; ".join(", ".join(g.layers) for g in uncovered)
            + ". List each set in groups, skip them, or omit groups to take them from the trace."
        )
    return [g.name for g in graph.groups if g.name in covered and removed[g.name]]
