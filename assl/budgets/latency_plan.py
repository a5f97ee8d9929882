"""Pruning to a latency: predict the pruned model's time from a table, and plan the widths.

:class:`LatencyModel` predicts the latency of the model after each group loses ``removed[g]``
units from a :class:`~assl.latency.LatencyTable`; :func:`latency_removed` solves the widths for a
budget (:mod:`assl.width_solver`), checks them by timing a slimmed copy on the table's device, and
returns a :class:`LatencyPlan`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from .._patterns import match_each
from .._scoring import l1_plan, l1_scores
from .._slim import slimmed_copy
from ..errors import ArgumentError, warn
from ..graph import Graph
from ._width_solver import allowed_widths, smallest, solve_widths
from .budget import MIN_WIDTH, Budget
from .latency import LatencyTable, input_shapes, measure_latency, timed_layers
from .timing import device_of, in_eval, interleaved, model_call

__all__ = ["LatencyModel", "LatencyPlan", "latency_removed", "report_measured"]

logger = logging.getLogger("assl")

TOLERANCE = 0.02
"""How far above the target a verified measurement may be before the widths are solved again."""
RETRIES = 2
"""How many times the widths are solved again for a lowered target."""
CHECK_ROUNDS = 9
"""Interleaved rounds per batch of the timed check; batches are added while it is imprecise."""
MAX_CHECK_ROUNDS = 45
"""The most interleaved rounds the timed check takes on a noisy machine."""
MAX_CORRECTION = 1.5
"""The most a measured miss moves the next solve's aim, either way: one loud check must not halve it."""
MIN_BAND = 0.03
"""The smallest relative band around a prediction within which a target counts as met by it."""
EMPTIED = 0.9
"""A group that loses more than this share of its units is warned about."""


@dataclass
class LatencyPlan:
    """What a latency budget chose: seconds on the table's device, and the width of each group.

    ``checked`` is the latency of a slimmed copy timed when the widths were chosen (``Budget(verify=
    True)`` on the table's device; scaled to the table's dense latency), ``measured`` that of the
    model ``Pruner.slim()`` returns, timed on the table's device (``None`` otherwise). ``table``
    is the table the widths were solved with. To resume a run, give the new Pruner
    ``ratio=plan.ratios()``: the same widths without timing again (a new measurement or
    verification may differ by the timing noise).
    """

    target: float
    predicted: float
    dense: float
    step: int
    device: str
    widths: dict[str, int] = field(default_factory=dict)
    measured: float | None = None
    checked: float | None = None
    table: LatencyTable | None = field(default=None, repr=False, compare=False)
    removed: dict[str, int] = field(default_factory=dict)
    noise: float = 0.0

    def ratios(self) -> dict[str, float]:
        """The chosen widths as a Pruner ``ratio`` mapping (plain data): the same widths without
        timing again, e.g. to resume the run."""
        out = {}
        for g, k in self.removed.items():
            if k:
                pattern = "".join(f"[{c}]" if c in "*?[]" else c for c in g)
                out[pattern] = k / (k + self.widths[g])
        return out

    def describe(self) -> str:
        """One line: target, prediction, measurement (when there is one) and dense, in ms."""
        line = f"latency target {self.target * 1e3:.3f} ms, predicted {self.predicted * 1e3:.3f} ms"
        if self.checked is not None:
            line += f", checked {self.checked * 1e3:.3f} ms"
        if self.measured is not None:
            line += f", measured {self.measured * 1e3:.3f} ms"
        if self.noise:
            line += f", timing noise ±{100 * self.noise:.1f}%"
        return line + f" (dense {self.dense * 1e3:.3f} ms on {self.device}, width step {self.step})"

    def describe_widths(self, sizes: Mapping[str, int] | None = None) -> str:
        """The width of each group that loses units, ``group dense -> kept``, narrowest share first."""
        sizes = sizes or {g: w + self.removed.get(g, 0) for g, w in self.widths.items()}
        cut = sorted((g for g, k in self.removed.items() if k), key=lambda g: self.widths[g] / sizes[g])
        return "widths: " + (", ".join(f"{g} {sizes[g]} -> {self.widths[g]}" for g in cut) or "all dense")


class LatencyModel:
    """Predicted seconds of the model after removing units, from a table and the traced graph.

    Each layer's time is the table's, bilinear between its grid points, at its widths rounded up
    to the table's step: with a step of 16, 49 channels cost what 64 cost.

    Raises:
        ValueError: The table does not fit the graph: a layer it lacks or has with another weight
            shape (it was measured on another model).
    """

    def __init__(self, table: LatencyTable, graph: Graph) -> None:
        self.table = table
        shares = timed_layers(graph)
        for name, (shape, _, _) in shares.items():
            row = table.layers.get(name)
            if row is None or tuple(row["weight"]) != tuple(shape):
                found = "no timing for it" if row is None else f"its weight as {tuple(row['weight'])}"
                raise ArgumentError(
                    f"the latency table does not fit this model: `{name}` has weight {tuple(shape)}, the table has "
                    f"{found}. Measure the table on this model (assl.LatencyTable.measure(model, inputs))"
                )
        extra = sorted(set(table.layers) - set(shares))
        if extra:
            raise ArgumentError(
                f"the latency table times layers this model does not prune ({', '.join(extra[:4])}): it was "
                f"measured on another model; measure it on this one"
            )
        self._layers = []
        for name, (shape, positions, dims) in shares.items():
            row = table.layers[name]
            d_out = int(row["out_dim"])
            d_in = 1 - d_out
            curves = [np.asarray(table.signatures[i], dtype=float) for i in row["calls"]]
            self._layers.append(
                (shape[d_in], shape[d_out], dims.get(d_in, {}), dims.get(d_out, {}), positions, row, curves)
            )
        self._of: dict[str, list[int]] = {}
        for i, (_, _, s_in, s_out, *_) in enumerate(self._layers):
            for g in {*s_in, *s_out}:
                self._of.setdefault(g, []).append(i)
        self._dense_active = sum(self._active(i, {}) for i in range(len(self._layers))) or 1.0
        self.fixed, self.rest = _fit_rest(self, table)

    @staticmethod
    def _size(dense: int, shares: Mapping[str, float], removed: Mapping[str, int]) -> float:
        return dense - sum(s * removed.get(g, 0) for g, s in shares.items())

    def _time(self, i: int, removed: Mapping[str, int]) -> float:
        d_in, d_out, s_in, s_out, _, row, curves = self._layers[i]
        w_in = self._stepped(self._size(d_in, s_in, removed), d_in)
        w_out = self._stepped(self._size(d_out, s_out, removed), d_out)
        return sum(_bilinear(row["in"], row["out"], c, w_in, w_out) for c in curves)

    def _stepped(self, width: float, dense: int) -> float:
        """A width rounded up to the table's step (not past the dense width): the device pads it
        to the next multiple, so it costs what that multiple costs (a staircase, not a line)."""
        step = self.table.step
        return min(float(dense), math.ceil(width / step - 1e-9) * step) if step > 1 else width

    def _active(self, i: int, removed: Mapping[str, int]) -> float:
        _, d_out, _, s_out, positions, _, _ = self._layers[i]
        return self._size(d_out, s_out, removed) * positions

    def layer_seconds(self, removed: Mapping[str, int]) -> float:
        """The timed layers' part of :meth:`seconds`."""
        return sum(self._time(i, removed) for i in range(len(self._layers)))

    def activations(self, removed: Mapping[str, int]) -> float:
        """What the timed layers write, as a fraction of the dense model's."""
        return sum(self._active(i, removed) for i in range(len(self._layers))) / self._dense_active

    def seconds(self, removed: Mapping[str, int]) -> float:
        """Predicted seconds of one call after each group ``g`` loses ``removed[g]`` units."""
        return self.layer_seconds(removed) + self.fixed + self.rest * self.activations(removed)

    def neighbours(self) -> dict[str, set[str]]:
        """Per group, the groups (itself included) whose changes alter the time of one of its layers."""
        near: dict[str, set[str]] = {}
        for _, _, s_in, s_out, *_ in self._layers:
            for g in {*s_in, *s_out}:
                near.setdefault(g, {g}).update({*s_in, *s_out})
        return near

    def change(self, removed: Mapping[str, int], group: str, k: int) -> float:
        """Predicted seconds gained (negative: saved) when ``group`` loses ``k`` units instead."""
        after = {**removed, group: k}
        delta = 0.0
        for i in self._of.get(group, []):
            delta += self._time(i, after) - self._time(i, removed)
            delta += self.rest * (self._active(i, after) - self._active(i, removed)) / self._dense_active
        return delta


def _fit_rest(model: LatencyModel, table: LatencyTable) -> tuple[float, float]:
    """The fixed seconds and the seconds scaling with the activations that the layers' times leave.

    Fitted by least squares to the dense latency and the table's calibration measurements, both
    parts kept >= 0; without calibration the whole rest scales with the activations.
    """
    points = [({}, table.dense)] + [(c["removed"], float(c["seconds"])) for c in table.calibration]
    left = np.array([t - model.layer_seconds(r) for r, t in points])
    act = np.array([model.activations(r) for r, _ in points])
    if len(points) < 2 or np.ptp(act) < 1e-6:
        return 0.0, float(left[0])
    a, b = np.linalg.lstsq(np.stack([np.ones_like(act), act], 1), left, rcond=None)[0]
    if a < 0 or b < 0:  # one part alone fits best: keep the one that does
        scaled, fixed = max(0.0, float(left @ act / (act @ act))), max(0.0, float(left.mean()))
        if np.sum((left - scaled * act) ** 2) <= np.sum((left - fixed) ** 2):
            a, b = 0.0, scaled
        else:
            a, b = fixed, 0.0
    return float(a), float(b)


def _bilinear(xs: list[float], ys: list[float], table: np.ndarray, x: float, y: float) -> float:
    """``table[i, j]`` at ``(xs[i], ys[j])``, interpolated bilinearly (clamped at the edges)."""
    rows = [float(np.interp(y, ys, r)) for r in table] if len(ys) > 1 else [float(r[0]) for r in table]
    return float(np.interp(x, xs, rows)) if len(xs) > 1 else rows[0]


def latency_removed(
    graph: Graph, budget: Budget, model: nn.Module, example_inputs: Any, kept: set[str], round_to: int | str
) -> tuple[dict[str, int], LatencyPlan]:
    """Units each group loses to meet a latency budget, and the plan that says so.

    The table is the budget's, or measured now on ``example_inputs``; groups in ``kept`` keep
    every unit; widths are multiples of ``round_to`` (of the table's step for ``"auto"``).

    Raises:
        ValueError: The device cannot be timed, the table does not fit the model, the target is
            out of reach, or the dense model already meets it.
    """
    table = budget.table
    if table is None:
        table = LatencyTable.measure(model, example_inputs, step=round_to, graph=graph)
    predictor = LatencyModel(table, graph)
    dense = table.dense  # measured; relative targets are fractions of it
    target = budget.latency if budget.latency is not None else float(budget.relative_latency or 0) * dense
    if dense <= target:
        raise ArgumentError(
            f"the dense model already meets the latency target: {dense * 1e3:.3f} ms <= "
            f"{target * 1e3:.3f} ms on {table.device}; nothing to prune for it"
        )
    step = table.step if round_to == "auto" else int(round_to)
    sizes = {g.name: g.size for g in graph.groups}
    floors = min_widths(graph, budget.min_width)
    allowed, scores = {}, {}
    for g in graph.groups:
        free = g.name not in kept and g.num_prunable > 0
        least = max(g.size - g.num_prunable, math.ceil(floors[g.name] * g.size - 1e-9), 1)
        allowed[g.name] = allowed_widths(g.size, least, step) if free else [g.size]
        scores[g.name] = l1_scores(model, graph, g.name).cpu().numpy()[g.prunable] if free else np.zeros(0)
    band = max(MIN_BAND, 2 * table.noise)
    # the table's prediction of the dense model over its measurement: predictions are read as
    # fractions of that, so a table whose layers were timed in a slower or quieter moment than the
    # whole model still aims at the right share of the dense latency
    anchor = predictor.seconds({}) / dense
    fastest = smallest(sizes, allowed, scores)
    floor = predictor.seconds(fastest) / anchor
    at_floor = target < floor * (1 + band)
    if target < floor * (1 - band):
        raise ArgumentError(
            f"the latency target of {target * 1e3:.3f} ms cannot be met: the smallest allowed widths are predicted "
            f"at {floor * 1e3:.3f} ms ± {100 * band:.0f}% (dense {dense * 1e3:.3f} ms on {table.device}), so targets "
            f"from {floor * (1 - band) * 1e3:.3f} ms up are reachable. Raise the target, lower "
            f"Budget(min_width=...) (now {budget.min_width!r}) or round_to, or skip fewer layers"
        )
    if at_floor:  # within the noise of the fastest plan: the same answer every time
        removed = dict(fastest)
        warn(
            f"the latency target of {target * 1e3:.3f} ms is within the timing noise (±{100 * band:.0f}%) of the "
            f"smallest allowed widths, predicted at {floor * 1e3:.3f} ms: every group is cut to its smallest "
            f"allowed width (Budget(min_width=...), round_to); a lower target cannot be told apart on this device"
        )
    else:
        removed = solve_widths(predictor, sizes, allowed, scores, target * anchor)
    checked = None
    if budget.verify and _timeable_here(table, model, example_inputs, unchecked=True):

        def solve(aim: float) -> dict[str, int]:
            return solve_widths(predictor, sizes, allowed, scores, aim * anchor)

        removed, checked = _verified(model, example_inputs, graph, solve, removed, target, dense, TOLERANCE, at_floor)
    widths = {g: sizes[g] - k for g, k in removed.items()}
    plan = LatencyPlan(
        target, predictor.seconds(removed) / anchor, dense, step, table.device, widths, checked=checked, table=table,
        removed=dict(removed), noise=band / 2,
    )  # fmt: skip
    _warn_emptied(plan, sizes)
    logger.info("latency budget: %s\n%s", plan.describe(), plan.describe_widths(sizes))
    return removed, plan


def min_widths(graph: Graph, min_width: float | Mapping[str, float]) -> dict[str, float]:
    """Per group, the smallest share of its units a latency budget keeps (see ``Budget.min_width``)."""
    if not isinstance(min_width, Mapping):
        return {g.name: float(min_width) for g in graph.groups}
    layers = [layer for g in graph.groups for layer in g.layers]
    hits = match_each(list(min_width), layers, what="min_width", known=list(graph.module_names) or None)
    share: dict[str, float] = {}
    for pattern, names in hits.items():  # the first pattern that matches a layer wins for it
        for name in names:
            share.setdefault(name, float(min_width[pattern]))
    return {g.name: max((share[n] for n in g.layers if n in share), default=MIN_WIDTH) for g in graph.groups}


def _warn_emptied(plan: LatencyPlan, sizes: Mapping[str, int]) -> None:
    """Warn when a group loses more than :data:`EMPTIED` of its units."""
    emptied = {g: w for g, w in plan.widths.items() if sizes[g] - w > EMPTIED * sizes[g]}
    if emptied:
        listed = ", ".join(f"{g} {sizes[g]} -> {w}" for g, w in emptied.items())
        warn(
            f"the latency budget leaves {len(emptied)} group(s) with less than {100 * (1 - EMPTIED):.0f}% of their "
            f"channels ({listed}): such layers are often what the accuracy cannot spare. Raise "
            f"Budget(min_width=...) to spread the cuts, or raise the target"
        )


def _verified(
    model: nn.Module,
    example_inputs: Any,
    graph: Graph,
    solve: Callable[[float], dict[str, int]],
    removed: dict[str, int],
    target: float,
    dense: float,
    tolerance: float = TOLERANCE,
    at_floor: bool = False,
) -> tuple[dict[str, int], float]:
    """Time a slimmed copy at the chosen widths against the dense model, and while it misses the
    target by more than the tolerance either way (above it, or below it by more than twice that:
    channels the target allows), solve again for a prediction moved by the miss (at most
    :data:`RETRIES` times, each move at most :data:`MAX_CORRECTION` either way). ``at_floor``
    (the smallest allowed widths, chosen because the table could not tell the target from their
    prediction) is solved again only when the check measures them well below the target: the
    table's noise put the target within reach of the floor, the check's precision does not. The
    tolerance is ``tolerance`` or the check's own uncertainty, the larger: a check on a noisy
    machine takes more rounds (see :func:`_measured_ratio`) rather than accepting a wider miss.
    Returns the widths of the slowest copy within the target (the fastest one when none is) and
    its measured seconds, scaled to the table's dense latency so that the machine's drift since
    the table cancels."""
    aim, tried = target, []
    for attempt in range(RETRIES + 1):
        ratio, uncertainty = _measured_ratio(model, example_inputs, graph, removed)
        measured, tol = ratio * dense, max(tolerance, uncertainty)
        tried.append((measured, removed, tol))
        floor_too_slow = at_floor and measured > target * (1 - 2 * tol)  # no smaller widths to go to
        if floor_too_slow or target * (1 - 2 * tol) <= measured <= target * (1 + tol) or attempt == RETRIES:
            break
        at_floor = False  # the floor measured well below the target: wider widths fit after all
        aim *= min(MAX_CORRECTION, max(1 / MAX_CORRECTION, target / measured))
        logger.info("latency budget: measured %.3f ms (± %.1f%%) for a %.3f ms target; solving for %.3f ms",
                    measured * 1e3, 100 * uncertainty, target * 1e3, aim * 1e3)  # fmt: skip
        try:
            again = solve(aim)
        except ValueError:  # the smallest widths already
            break
        if again == removed or not any(again.values()):  # a noisy miss must not undo the whole plan
            break
        removed = again
    within = [t for t in tried if t[0] <= target * (1 + t[2])]
    measured, removed, _ = max(within, key=lambda t: t[0]) if within else min(tried, key=lambda t: t[0])
    if not within:
        warn(
            f"latency budget: the slimmed model measured {measured * 1e3:.3f} ms against a target of "
            f"{target * 1e3:.3f} ms (the table's prediction misses on this device"
            + ("; these are the smallest allowed widths" if at_floor else "; lower the target to compensate")
            + ")"
        )
    return removed, measured


def _measured_ratio(
    model: nn.Module, example_inputs: Any, graph: Graph, removed: Mapping[str, int]
) -> tuple[float, float]:
    """Median over interleaved rounds of (slimmed copy's seconds / dense seconds), units by L1
    norm, and its relative uncertainty (the half-width of the median's approximate 95% interval,
    1.57 interquartile ranges over the square root of the rounds, over the median). Rounds are
    taken in batches of :data:`CHECK_ROUNDS` while that uncertainty exceeds half of
    :data:`TOLERANCE`, up to :data:`MAX_CHECK_ROUNDS`."""
    small = slimmed_copy(model, graph, l1_plan(model, graph, removed), example_inputs, check=False).eval()
    ratios = np.zeros(0)
    with in_eval(model):
        calls = [model_call(model, example_inputs), model_call(small, example_inputs)]
        while True:
            samples = interleaved(calls, device_of(model, example_inputs), rounds=CHECK_ROUNDS, seed=len(ratios))
            ratios = np.concatenate([ratios, samples[:, 1] / samples[:, 0]])
            median, uncertainty = median_uncertainty(ratios)
            if uncertainty <= TOLERANCE / 2 or len(ratios) + CHECK_ROUNDS > MAX_CHECK_ROUNDS:
                return median, uncertainty


def median_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """The median of ``values`` and the relative half-width of its approximate 95% interval."""
    median = float(np.median(values))
    q1, q3 = np.percentile(values, [25, 75])
    return median, float(1.57 * (q3 - q1) / math.sqrt(len(values)) / median)


def _timeable_here(table: LatencyTable, model: nn.Module, example_inputs: Any, unchecked: bool = False) -> bool:
    """Whether timing ``model`` on ``example_inputs`` measures what the table predicts: the same
    device, and inputs of the shapes the table was measured on. When not, and ``unchecked`` (the
    check ``Budget(verify=True)`` asks for is skipped), an :class:`assl.ASSLWarning` says so."""
    device, shapes = str(device_of(model, example_inputs)), input_shapes(example_inputs)
    if device != table.device or (table.inputs and shapes != table.inputs):
        why = (
            f"the table is of {table.device} on inputs {table.inputs}, the Pruner's example inputs are {shapes} on "
            f"{device}"
        )
        if unchecked:
            warn(
                f"latency budget: the chosen widths are not checked by timing here: {why}. Time the slimmed model "
                "on deployment inputs with assl.measure_latency; Budget(..., verify=False) skips the check silently"
            )
        else:
            logger.info("latency budget: not timed here: %s (time it with assl.measure_latency)", why)
        return False
    return True


def report_measured(plan: LatencyPlan, small: nn.Module, example_inputs: Any) -> None:
    """Time the slimmed model and log it beside the prediction, when on the table's device and inputs."""
    if plan.table is None or not _timeable_here(plan.table, small, example_inputs):
        logger.info("latency budget: %s", plan.describe())
        return
    plan.measured = measure_latency(small, example_inputs)
    logger.info("latency budget: %s", plan.describe())
