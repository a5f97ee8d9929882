"""The pruning schedule as plain numbers: align -> regularize -> stabilize -> done.

Steps are optimizer steps, counted from 0. With ``A = align_iters`` (0 when nothing is aligned),
``n`` the number of penalty increments it takes to pass ``reg_limit`` and ``R = n * reg_interval``:

* steps ``[0, A)``: **align**, the alignment loss is on and no penalty is applied;
* steps ``[A, A + R)``: **regularize**, the penalty at step ``A + j`` is
  ``reg_step * (j // reg_interval + 1)``: it grows by ``reg_step`` every ``reg_interval`` steps
  and reaches ``n * reg_step > reg_limit`` in the last interval;
* steps ``[A + R, A + R + stabilize_iters)``: **stabilize**, the penalty stays at ``n * reg_step``;
* from ``A + R + stabilize_iters`` on: **done** (the final penalty keeps applying if you go on).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PHASES", "Schedule"]

PHASES = ("align", "regularize", "stabilize", "done")


@dataclass(frozen=True)
class Schedule:
    """The numbers of the ASSL schedule.

    The defaults are those of the authors' released commands for the paper (Zhang, Wang, Qin, Fu,
    "Aligned Structured Sparsity Learning for Efficient Image Super-Resolution", NeurIPS 2021):
    17260 alignment steps, a penalty growing by 1e-4 every 20 steps until it passes 0.5 (5001
    increments, 100020 steps), then 43150 steps at the final penalty. That is 160430 optimizer
    steps in all (143170 when no group is aligned). A much shorter schedule needs a stronger
    penalty to drive the chosen channels to zero in time (docs/pruner.md, "Short schedules").

    Attributes:
        align_iters: Steps of the alignment phase for same-pruned groups (0: no alignment; groups
            then choose their channels from the group-aggregated ``|g|`` at once).
        align_weight: Weight of the alignment loss added to the task loss.
        reg_interval: Steps between two growths of the penalty.
        reg_step: How much the penalty grows each time.
        reg_limit: The penalty grows until it passes this value.
        stabilize_iters: Steps of training at the final penalty.

    Example:
        >>> Schedule(align_iters=100, reg_interval=2, reg_step=0.01, reg_limit=0.1, stabilize_iters=50)
    """

    align_iters: int = 17260
    align_weight: float = 1.0
    reg_interval: int = 20
    reg_step: float = 1e-4
    reg_limit: float = 0.5
    stabilize_iters: int = 43150

    def __post_init__(self) -> None:
        for name in ("align_iters", "stabilize_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"Schedule.{name} must be an int >= 0, got {v!r}")
        if not isinstance(self.reg_interval, int) or isinstance(self.reg_interval, bool) or self.reg_interval < 1:
            raise ValueError(f"Schedule.reg_interval must be an int >= 1, got {self.reg_interval!r}")
        for name in ("reg_step", "reg_limit", "align_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"Schedule.{name} must be a finite number >= 0, got {v!r}")
        if self.reg_step <= 0:
            raise ValueError(f"Schedule.reg_step must be > 0, got {self.reg_step!r}")

    @property
    def increments(self) -> int:
        """How many times the penalty grows: the smallest ``n`` with ``n * reg_step > reg_limit``."""
        return math.floor(self.reg_limit / self.reg_step * (1 + 1e-12)) + 1

    def bounds(self, aligned: bool) -> tuple[int, int, int]:
        """First step of regularize, stabilize and done."""
        a = self.align_iters if aligned else 0
        r = a + self.increments * self.reg_interval
        return a, r, r + self.stabilize_iters

    def phase(self, step: int, aligned: bool) -> str:
        """The phase at ``step`` (``aligned``: whether any group runs the align phase)."""
        a, r, d = self.bounds(aligned)
        return PHASES[(step >= a) + (step >= r) + (step >= d)]

    def penalty(self, step: int, aligned: bool) -> float:
        """The penalty factor applied to the chosen channels at ``step``."""
        a, r, _ = self.bounds(aligned)
        if step < a:
            return 0.0
        if step >= r:
            return self.increments * self.reg_step
        return ((step - a) // self.reg_interval + 1) * self.reg_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
