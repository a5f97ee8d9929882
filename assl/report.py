"""What the Pruner tells the user: the per-group table and how much slimming changed the output."""

from __future__ import annotations

import logging

import torch
from torch import nn

from .selection import Selection
from .slim import max_rel_err

__all__ = ["SLIM_CHANGE_WARNING", "report_change", "summary_table"]

logger = logging.getLogger("assl")

SLIM_CHANGE_WARNING = 0.05
"""slim() warns when removing the chosen channels changes the output by more than this (relative)."""


def summary_table(selection: Selection, aligned: list[str], head: str) -> str:
    """A table per pruned group: layers, units, units removed, mean |g| of chosen vs kept."""
    rows = [("group", "layers", "channels", "remove", "aligned", "|g| chosen", "|g| kept")]
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
                "yes" if name in aligned else "no",
                _mean(s[mask]) if chosen else "-",
                _mean(s[~mask]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([head, *lines])


def _mean(t: torch.Tensor) -> str:
    return f"{t.mean():.4f}" if t.numel() else "-"


def report_change(model: nn.Module, small: nn.Module, example_inputs: object) -> float:
    """Log how much removing the chosen channels changed the output on the example inputs.

    Returns:
        The largest difference relative to the largest output; logged as a warning above
        :data:`SLIM_CHANGE_WARNING`.
    """
    change = max_rel_err(model, small, example_inputs)
    if change > SLIM_CHANGE_WARNING:
        logger.warning(
            "slimming changed the output on the example inputs by %.3g (largest difference over the largest "
            "output): the penalty did not drive the chosen channels to zero (see summary(): |g| chosen vs "
            "kept); fine-tune longer, or raise Schedule.reg_limit or stabilize_iters",
            change,
        )
    else:
        logger.info("slimming changed the output on the example inputs by %.3g (relative)", change)
    return change
