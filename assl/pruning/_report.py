"""What the Pruner tells the user: its progress, the per-group table, how much slimming changed the output."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .._slim import max_rel_err
from ..errors import warn
from ._liveness import ALIVE
from ._selection import Selection

__all__ = ["SLIM_CHANGE_WARNING", "Progress", "report_change", "summary_table", "warn_early"]

logger = logging.getLogger("assl")

SLIM_CHANGE_WARNING = 0.05
"""slim() warns when removing the chosen channels changes the output by more than this (relative)."""


def summary_table(
    selection: Selection,
    aligned: list[str],
    alive: Mapping[str, float],
    head: str,
    silent: Mapping[str, float] | None = None,
) -> str:
    """A table per pruned group: carriers, units, units removed, the agreement of an aligned
    group's carriers on the units to keep, mean |scale| of chosen vs kept, and the chosen
    channels' liveness (RMS relative to the kept ones on the example inputs); ``kept silent``
    instead for the groups of ``silent`` (kept channels' RMS relative to when pruning began),
    whose liveness means nothing."""
    silent = silent or {}
    agree = selection.agreement(aligned)
    rows = [("group", "carriers", "channels", "remove", "aligned (agree)", "|s| chosen", "|s| kept", "alive")]
    for name, layers in selection.layers.items():
        with torch.no_grad():
            s = selection.unit_table(name).mean(0).cpu()
        chosen = selection.chosen.get(name)
        mask = torch.zeros(s.numel(), dtype=torch.bool)
        if chosen:
            mask[chosen] = True
        rows.append(
            (
                name,
                str(len(layers)),
                str(s.numel()),
                str(selection.removed[name]),
                f"yes ({agree[name]:.2f})" if name in aligned else "no",
                _mean(s[mask]) if chosen else "-",
                _mean(s[~mask]),
                f"kept silent ({silent[name]:.2g})"
                if name in silent
                else f"{alive[name]:.2g}"
                if name in alive
                else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([head, *lines])


def _mean(t: torch.Tensor) -> str:
    return f"{t.mean():.4f}" if t.numel() else "-"


def warn_early(phase: str, step: int) -> None:
    """Warn that slimming comes before the schedule is done."""
    warn(f"slimming in phase {phase} (step {step}): the chosen channels were not driven to zero, expect a larger drop")


def report_change(
    model: nn.Module, small: nn.Module, example_inputs: object, alive: Callable[[], Mapping[str, float]]
) -> float:
    """Log how much removing the chosen channels changed the output on the example inputs (warn when large).

    Args:
        alive: Gives the liveness of each group's chosen channels (:func:`assl.liveness.liveness`);
            called only when the change is large enough to warn (it costs a forward pass).

    Returns:
        The largest difference relative to the largest output; an :class:`assl.ASSLWarning`,
        naming the groups whose chosen channels are still alive, above :data:`SLIM_CHANGE_WARNING`.
    """
    change = max_rel_err(model, small, example_inputs)
    if change > SLIM_CHANGE_WARNING:
        loud = sorted(((v, k) for k, v in alive().items() if v > ALIVE), reverse=True)
        named = ", ".join(f"{k} ({v:.2g})" for v, k in loud[:5]) + (" ..." if len(loud) > 5 else "")
        why = (
            f"The chosen channels of these groups are still alive (RMS relative to kept): {named}"
            if loud
            else "The chosen channels are silent where they are read, so the change comes from elsewhere"
        )
        warn(
            f"slimming changed the output on the example inputs by {change:.3g} (largest difference over the "
            f"largest output). {why}; give the schedule more steps (Schedule.for_steps with a larger n, or a "
            "longer stabilize phase) or a stronger penalty (a larger reg_limit), or fine-tune longer"
        )
    else:
        logger.info("slimming changed the output on the example inputs by %.3g (relative)", change)
    return change


def report_collapse(ratios: Mapping[str, float], guarded: bool = True) -> None:
    """Warn that the kept channels of these groups fell silent (:func:`assl.pruning._liveness.collapsed`);
    ``guarded``: whether the schedule guarded the kept units (``Schedule.guard_kept``)."""
    if not ratios:
        return
    guard = (
        ""
        if guarded
        else ", and with Schedule(guard_kept=True), the default, which keeps the task from lowering the kept "
        "channels' normalization biases as the others fade"
    )
    worst = sorted((v, k) for k, v in ratios.items())
    named = ", ".join(f"{k} ({v:.2g})" for v, k in worst[:5]) + (" ..." if len(worst) > 5 else "")
    warn(
        "the kept channels of these groups fell silent with the chosen ones (RMS where read, relative to the "
        f"group's when pruning began): {named}. What they computed is lost; it happens when the optimizer's steps "
        "on the kept channels grow as the others fade (SGD at a large learning rate, at high compression: the "
        "activations after them die). If the model's quality dropped, prune again from the dense weights with a "
        f"smaller learning rate, clipped gradient norms, or Adam{guard}"
    )


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
