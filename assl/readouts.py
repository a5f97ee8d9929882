"""What a Pruner tells about its progress: scales, chosen units, liveness, agreement, a summary.

:class:`Readouts` holds the Pruner's read-only methods; they change nothing in the model or the
schedule, so they can be called at any time from the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .latency_budget import LatencyPlan
from .liveness import liveness as measure_liveness
from .report import summary_table
from .schedule import Schedule
from .selection import Selection

__all__ = ["Progress", "Readouts"]


@dataclass(frozen=True)
class Progress:
    """Where pruning stands, for a log line or a progress bar's postfix.

    Attributes:
        phase: ``"align"``, ``"regularize"``, ``"stabilize"`` or ``"done"``.
        step: Optimizer steps seen.
        steps_left: Steps until :attr:`Pruner.done`.
        penalty: The penalty of aligned groups at the next step.
        alive: The largest liveness over groups (RMS of the chosen channels over the kept ones),
            or ``None`` when not measured.
    """

    phase: str
    step: int
    steps_left: int
    penalty: float
    alive: float | None = None

    def postfix(self) -> dict[str, str]:
        """Short strings for ``tqdm.set_postfix``."""
        out = {"phase": self.phase, "left": str(self.steps_left), "penalty": f"{self.penalty:.3g}"}
        if self.alive is not None:
            out["alive"] = f"{self.alive:.2g}"
        return out

    def __str__(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.postfix().items())


class Readouts:
    """The Pruner's read-only methods (see :class:`assl.Pruner`)."""

    _selection: Selection
    _step: int
    model: nn.Module
    example_inputs: Any
    aligned: list[str]
    schedule: Schedule
    latency: LatencyPlan | None
    """What a latency budget chose (:class:`assl.LatencyPlan`); ``None`` for other ratios."""

    @property
    def phase(self) -> str:
        """``"align"``, ``"regularize"``, ``"stabilize"`` or ``"done"``."""
        return self.schedule.phase(self._step, bool(self.aligned))

    @property
    def penalty(self) -> float:
        """The penalty the next :meth:`step` applies to the chosen channels of aligned groups.

        Groups that are not aligned run the same growth from step 0, so they reach it earlier.
        """
        return self.schedule.penalty(self._step, bool(self.aligned))

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole schedule for this model (without an align phase when no
        group is aligned): :attr:`done` turns True after this many calls of :meth:`step`."""
        return self.schedule.bounds(bool(self.aligned))[2]

    def progress(self, *, liveness: bool = False) -> Progress:
        """A small record of where pruning stands; with ``liveness``, also how alive the chosen
        channels still are (one forward pass on the example inputs).

        Example:
            >>> bar.set_postfix(pruner.progress().postfix())
        """
        alive = max(self.liveness().values(), default=0.0) if liveness else None
        left = max(0, self.total_steps - self._step)
        return Progress(self.phase, self._step, left, self.penalty, alive)

    def scale_parameters(self) -> list[nn.Parameter]:
        """The scale Parameters the Pruner added (for a param group of their own)."""
        return [layer.scale for layer in self._selection.all_layers() if layer.kind == "g"]

    def penalized_parameters(self) -> list[nn.Parameter]:
        """The parameters the penalty acts on: the inserted scales ``g`` and the weights (gamma) of
        the normalization layers that carry pruned channels, and the biases that go with them."""
        return self._selection.penalized_parameters()

    def unit_scales(self, group: str) -> torch.Tensor:
        """``|scale|`` of each unit of ``group``, one row per carrier (:meth:`carriers` order).

        A unit's value is the mean over the channels it stands for (one channel for plain
        convolutions). A detached copy: read it to see how the schedule is going, e.g. what is
        left of the chosen units (:meth:`chosen`) before :meth:`slim`.

        Raises:
            ValueError: ``group`` loses no channels (it has no scales).
        """
        return self._selection.unit_scales(group)

    def carriers(self, group: str) -> list[tuple[str, str]]:
        """Where the units of ``group`` are scaled: ``(module, kind)`` per row of :meth:`unit_scales`.

        ``kind`` is ``"g"`` for a weight-normalization scale the Pruner inserted on a producer, and
        ``"norm"`` for the weight (gamma) and bias (beta) of a normalization layer.
        """
        return [(c.name, c.kind) for c in self._selection.layers.get(group, [])]

    def chosen(self) -> dict[str, list[int]]:
        """Group name -> the units chosen for removal so far (the plan :meth:`slim` applies)."""
        return {k: list(v) for k, v in self._selection.chosen.items()}

    def alignment_agreement(self) -> dict[str, float]:
        """Per aligned group: how much its carriers agree on which units to keep, from 0 to 1.

        The mean over pairs of carriers of the share of one's kept units (its highest
        ``|scale|``) that the other keeps too; ``1 - removed / units`` is what chance gives.
        """
        return self._selection.agreement(self.aligned)

    def summary(self) -> str:
        """A table per pruned group: carriers, units, units removed, the agreement of aligned groups,
        mean ``|scale|`` of chosen vs kept units, and the chosen channels' liveness; under a latency
        budget, its target, prediction and measurements first."""
        head = f"phase {self.phase}, step {self._step}, penalty {self.penalty:.4g}"
        if self.latency is not None:
            head += f"\n{self.latency.describe()}"
        return summary_table(self._selection, self.aligned, self.liveness(), head)

    def liveness(self) -> dict[str, float]:
        """Per group with chosen units: how much signal the chosen channels still carry.

        The RMS of the chosen channels over the RMS of the kept ones at the input of every layer
        that reads them (after any norm, affine, shift or standardization between the carrier and
        it), on the example inputs in eval mode. ``0``: removing them changes nothing; ``1``: as
        loud as the channels that stay.
        """
        return measure_liveness(self.model, self._selection, self.example_inputs)
