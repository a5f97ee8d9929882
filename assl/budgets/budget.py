"""How many channels each group loses: ratios, rounding, and solving a ratio for a budget; what
a parameter or MAC budget counts (:func:`count`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from ..errors import ArgumentError, ArgumentTypeError, ASSLWarning
from ..graph import ChannelGroup, Graph
from ..tracing import trace
from .latency import LatencyTable

__all__ = ["MIN_WIDTH", "WIDTHS", "Budget", "Counts", "count", "solve_ratio", "units_to_remove"]


MIN_WIDTH = 0.125
"""The share of its units every group keeps under per-group widths unless ``min_width`` says otherwise."""

WIDTHS = ("uniform", "learned")
"""How a parameter or MAC budget shares its cuts: one ratio for every group, or by score."""


@dataclass(frozen=True)
class Counts:
    """A model's size and cost, as :func:`assl.count` measures them and ``Budget`` counts them.

    Attributes:
        params: Parameters (a weight-normalized or otherwise parametrized weight counts as the
            plain weight it folds into, as after :meth:`assl.Pruner.slim`).
        macs: Multiply-accumulates per sample of the Conv, ConvTranspose and Linear layers.
    """

    params: int
    macs: int


def count(model: nn.Module, inputs: Any) -> Counts:
    """Parameters and multiply-accumulates per sample of ``model`` called on ``inputs``.

    The model runs once on ``inputs`` (traced as by :func:`assl.trace`; its parameters, buffers and
    random state are left as they were). Each call of a Conv, ConvTranspose or Linear layer costs
    its output positions (input positions for a transposed convolution) times the size of its
    weight, whatever its groups; the sum is divided by the batch size, the first dimension of the
    first tensor in ``inputs``. Biases, activations, norms, pooling and products of activations
    (``torch.matmul`` of two activations) are not counted. ``Budget(params=N)`` and
    ``Budget(macs=N)`` count the same way on the Pruner's example inputs.

    Args:
        model: Any ``nn.Module`` with at least one Conv, ConvTranspose or Linear layer.
        inputs: What the model is called with: a tensor, a tuple of positional arguments or a dict
            of keyword arguments, batch dimension included.

    Returns:
        :class:`assl.Counts` with ``params`` and ``macs``.

    Raises:
        TraceError: The model has no such layer, or raises on ``inputs``.

    Example:
        >>> assl.count(torch.nn.Conv2d(3, 8, 3, padding=1), torch.randn(4, 3, 32, 32))
        Counts(params=224, macs=221184)
    """
    with warnings.catch_warnings():  # whether channels could be pruned is not the question here
        warnings.filterwarnings("ignore", message=r".* has no channel that can be removed", category=ASSLWarning)
        graph = trace(model, inputs)
    return Counts(graph.count_params(), graph.count_macs())


@dataclass(frozen=True)
class Budget:
    """A target instead of a ratio: parameters, MACs, or latency on a device.

    Give exactly one of:

    * ``params``: at most this many parameters; ``macs``: at most this many multiply-accumulates
      per sample of the example inputs (whatever their batch size), counted as :func:`assl.count`
      counts them. The Pruner solves one ratio for all pruned groups.
    * ``latency``: at most this many seconds per call on the example inputs;
      ``relative_latency``: at most this fraction of the dense model's measured latency. Before
      pruning, the Pruner times the model's layers at a grid of widths on the example inputs'
      device and dtype (:class:`assl.LatencyTable`), then chooses each group's width so the
      predicted latency meets the target while dropping the least important units (the
      producers' filter L1 norms at that moment). ``table`` reuses a table measured elsewhere
      (on the deployment machine). With ``verify`` (default), when the table is of the device
      the model is on, a slimmed copy at the chosen widths is timed against the dense model, and
      the widths are solved again for a prediction moved by the miss while it is more than 2%
      above the target or 4% below it. ``min_width`` is the smallest share of its units a group
      keeps (default 1/8, never below the device's width step), as one fraction or a mapping
      ``{glob: fraction}`` over the group's layers (the first matching pattern wins for each
      layer; a group keeps the largest share any of its layers asks for; 1/8 where none matches):
      a latency is not reached by emptying the layers that save time cheaply.

    ``widths`` says how a parameter or MAC budget is shared among the groups: ``"uniform"``
    (default) solves one ratio for every pruned group; ``"learned"`` lets the scores decide. When
    the Pruner fixes its chosen channels (at the end of the align phase, or at once when there is
    none), it ranks the units of every pruned group by their score (the one it chooses by: each
    carrier's scale magnitudes relative to that carrier's mean, summed over the group's carriers)
    over what one unit of the group costs (parameters or MACs, counted as :func:`assl.count`
    counts them: a unit many layers produce scores and costs in each of them), and removes
    the lowest first, in steps of ``round_to``, until the slimmed model fits the budget. Every
    group keeps ``min_width`` of its units (as for latency), so no layer is emptied. With an align
    phase, every group then starts its penalty after alignment, as aligned groups do.

    Example:
        >>> assl.Pruner(model, x, budget=assl.Budget(params=300_000))
        >>> assl.Pruner(model, x, budget=assl.Budget(macs=2 * 10**9, widths="learned"))
        >>> assl.Pruner(model, x, budget=assl.Budget(relative_latency=0.5), round_to="auto")
    """

    params: int | None = None
    macs: int | None = None
    latency: float | None = None
    relative_latency: float | None = None
    table: LatencyTable | None = field(default=None, compare=False)
    verify: bool = True
    min_width: float | Mapping[str, float] = MIN_WIDTH
    widths: str = "uniform"

    def __post_init__(self) -> None:
        given = {k: v for k, v in self.target().items() if v is not None}
        if self.widths not in WIDTHS:
            raise ArgumentError(f"Budget(widths=...) is one of {', '.join(map(repr, WIDTHS))}, got {self.widths!r}")
        if self.widths == "learned" and not given:
            raise ArgumentError(
                "Budget(widths='learned') shares a params= or macs= target among the groups: give one of them "
                "(a ratio prunes every group alike; for its size, take assl.count of the model pruned at that ratio)"
            )
        if len(given) != 1:
            raise ArgumentError("Budget takes exactly one of params=, macs=, latency= or relative_latency=")
        ((kind, value),) = given.items()
        if kind in ("params", "macs"):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ArgumentError(f"Budget({kind}=...) must be a positive int, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ArgumentError(f"Budget({kind}=...) must be a positive number, got {value!r}")
        if kind == "relative_latency" and not value < 1:
            raise ArgumentError(
                f"Budget(relative_latency=...) is a fraction of the dense latency in (0, 1), got {value!r}"
            )
        shares = self.min_width.values() if isinstance(self.min_width, Mapping) else [self.min_width]
        for share in shares:
            if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
                raise ArgumentError(f"Budget(min_width=...) takes fractions of a group in [0, 1], got {share!r}")
        if isinstance(self.min_width, Mapping) and not all(isinstance(k, str) for k in self.min_width):
            raise ArgumentTypeError(f"Budget(min_width={{glob: fraction}}) needs string globs, got {self.min_width!r}")
        if self.widths == "learned" and self.is_latency:
            raise ArgumentError(
                "Budget(widths='learned') goes with params= or macs=: a latency budget already chooses each group's "
                "width; drop widths= for latency, or give the target as params= or macs="
            )
        if self.min_width != MIN_WIDTH and not self.per_group:
            raise ArgumentError(
                "Budget(min_width=...) goes with latency= or relative_latency=, or with params=/macs= and "
                "widths='learned' (per-group widths)"
            )
        if not isinstance(self.verify, bool):
            raise ArgumentTypeError(f"Budget(verify=...) must be a bool, got {self.verify!r}")
        if self.table is not None:
            if not self.is_latency:
                raise ArgumentError("Budget(table=...) goes with latency= or relative_latency=")
            if not isinstance(self.table, LatencyTable):
                raise ArgumentTypeError(f"table must be an assl.LatencyTable, got {type(self.table).__name__}")

    def target(self) -> dict[str, float | int | None]:
        """The four kinds of target, ``None`` for those not given."""
        return {
            "params": self.params,
            "macs": self.macs,
            "latency": self.latency,
            "relative_latency": self.relative_latency,
        }

    @property
    def is_latency(self) -> bool:
        """Whether the target is a latency (absolute or relative)."""
        return self.latency is not None or self.relative_latency is not None

    @property
    def per_group(self) -> bool:
        """Whether each group gets a width of its own (a latency budget, or ``widths="learned"``)."""
        return self.is_latency or self.widths == "learned"

    def measure(self, graph: Graph) -> tuple[Callable[..., int], int, str, str]:
        """How a parameter or MAC budget counts ``graph``: its count of a plan, the target, the unit's
        name and the kind of :meth:`Graph.unit_costs`."""
        if self.params is not None:
            return graph.count_params, self.params, "parameters", "params"
        return graph.count_macs, int(self.macs or 0), "MACs", "macs"


def check_ratio(ratio: float, where: str) -> float:
    """``ratio`` as a float in ``[0, 1)``, or a ValueError naming ``where`` it came from."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio < 1:
        raise ArgumentError(f"{where}: a pruning ratio must be a number in [0, 1), got {ratio!r}")
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
    count, target, unit, kind = budget.measure(graph)
    costs = graph.unit_costs(kind)

    def size(r: float) -> int:
        return count(cheapest_plan(graph, removed_for(r), costs))

    if size(0.0) <= target:
        return 0.0
    hi = 1.0 - 1e-9
    smallest = size(hi)
    if smallest > target:
        raise ArgumentError(
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
