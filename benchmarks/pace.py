"""Two studies of the fade (the high-compression levers): a recovery-paced penalty, whose growth
slows while the task loss is far above its level before the fade (``--pace_tol`` /
``--pace_slow``), and a guard on the gradient's norm during the fade (``--grad_guard``).

The Pruner's penalty grows on a fixed clock. Here the clock runs at full speed while the task loss
(an exponential average over steps, weight 0.1) stays within ``1 + tol`` times its level before
the penalty starts to bite (the align phase, or the first 5 steps), and at ``slow`` of it
otherwise; so that the chosen channels still end as small as the schedule makes them, the clock
speeds up whenever it would not otherwise reach the end of regularize by the middle of stabilize.
It is a study of the harness, not a library feature: :class:`PacedSchedule` stands in for the
Pruner's ``schedule`` (every field and method its own, the penalty read at the paced clock).

The guard (:class:`GradGuard`) studies the collapse under SGD at high compression: as the chosen
channels fade, the gradient's norm grows by orders of magnitude (the normalization layers after
them rescale what is left), and SGD's steps grow with it where Adam's do not. The guard scales
the gradients down to ``factor`` times their median norm before the fade whenever they exceed it.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import assl

WARMUP = 5
"""Steps (at least) whose task loss sets the level before the fade."""


class PacedSchedule:
    """An ``assl.Schedule`` whose :meth:`penalty` is read at :attr:`clock` instead of the step."""

    def __init__(self, base: assl.Schedule) -> None:
        self.base = base
        self.clock = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.base, name)

    def penalty(self, step: int, aligned: bool) -> float:
        """The base schedule's penalty at the paced clock (``step`` is ignored)."""
        return self.base.penalty(int(self.clock), aligned)


class RecoveryPace:
    """An observer of :func:`benchmarks.methods.run_method` that paces the Pruner's penalty by the
    task loss ``last_loss()`` of each step."""

    def __init__(self, pruner: assl.Pruner, last_loss: Callable[[], float], tol: float, slow: float) -> None:
        self.schedule = PacedSchedule(pruner.schedule)
        pruner.schedule = self.schedule  # type: ignore[assignment]  # read through duck typing
        self.start, self.reg_end, total = pruner.schedule.bounds(bool(pruner.aligned))
        self.deadline = self.reg_end + (total - self.reg_end) // 2
        self.last_loss, self.tol, self.slow = last_loss, tol, slow
        self.step = 0
        self.average: float | None = None
        self.level = 0.0
        self.slowed = 0

    def before_step(self) -> None:
        """Move the clock for the step the Pruner is about to take."""
        loss = self.last_loss()
        self.average = loss if self.average is None else 0.9 * self.average + 0.1 * loss
        if self.step < max(WARMUP, self.start):
            self.level = self.average
            self.schedule.clock = float(self.step)
        else:
            rate = 1.0 if self.average <= (1 + self.tol) * self.level else self.slow
            needed = (self.reg_end - self.schedule.clock) / max(self.deadline - self.step, 1)
            self.slowed += rate < 1 and needed < rate
            self.schedule.clock += max(rate, needed)
        self.step += 1

    def end(self) -> dict[str, Any]:
        """The steps whose clock ran slow, and where the clock ended."""
        return {"pace_slowed": self.slowed, "pace_clock": self.schedule.clock}


class GradGuard:
    """An observer of :func:`benchmarks.methods.run_method` that bounds the gradient's norm during the fade.

    The reference is the median norm of the gradients of ``model``'s parameters over the steps
    before the penalty starts (at least :data:`WARMUP`); from then on a gradient whose norm exceeds
    ``factor`` times it is scaled down to that norm before the optimizer step.
    """

    def __init__(self, pruner: assl.Pruner, model: nn.Module, factor: float) -> None:
        if not factor > 0:
            raise ValueError(f"the guard's factor must be positive, got {factor}")
        self.model, self.factor = model, factor
        self.start = max(WARMUP, pruner.schedule.bounds(bool(pruner.aligned))[0])
        self.norms: list[float] = []
        self.step = 0
        self.scaled = 0

    def before_step(self) -> None:
        """Measure the gradient's norm; scale it down when the fade has begun and it is too large."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return
        norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        if self.step < self.start:
            self.norms.append(norm)
        else:
            limit = self.factor * statistics.median(self.norms)
            if norm > limit:
                self.scaled += 1
                for g in grads:
                    g.mul_(limit / norm)
        self.step += 1

    def end(self) -> dict[str, Any]:
        """The steps whose gradient was scaled down, and the reference norm."""
        return {"guard_scaled": self.scaled, "guard_reference": statistics.median(self.norms) if self.norms else None}
