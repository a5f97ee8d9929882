"""How alive the chosen channels still are where their consumers read them.

A small ``|g|`` says little when a normalization follows, and nothing about the bias. What
matters is the signal the chosen channels still carry: their activation energy at the output of
each carrier (the producer's output, or the normalization layer's output) on the example inputs,
relative to the kept channels. ``0`` means the chosen channels are exactly zero there, so
removing them changes nothing; ``1`` means they are as loud as the channels that stay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._inputs import call_args
from ..layers import channel_dim
from ._selection import Selection

__all__ = ["ALIVE", "liveness"]

ALIVE = 1e-3
"""A group whose chosen channels carry more than this share of the kept channels' RMS is alive."""


def liveness(model: nn.Module, selection: Selection, example_inputs: Any) -> dict[str, float]:
    """Per group with chosen units: RMS of the chosen channels over RMS of the kept ones.

    The model runs once on ``example_inputs`` in eval mode (BatchNorm uses its running
    statistics, dropout is off), without gradients; training flags are restored afterwards.
    """
    energy: dict[str, torch.Tensor] = {}
    handles = []
    wanted = {c.name: c.module for c in selection.all_layers()}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.ndim == 0:
                return
            d = channel_dim(module, out)
            e = out.detach().float().pow(2).transpose(0, d).flatten(1).mean(1)
            energy[name] = energy[name] + e if name in energy else e

        return record

    for name, module in wanted.items():
        handles.append(module.register_forward_hook(hook(name)))
    flags = [m.training for m in model.modules()]
    args, kwargs = call_args(example_inputs)
    model.eval()
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, t in zip(model.modules(), flags):
            m.training = t
    return _ratios(selection, energy)


def _ratios(selection: Selection, energy: Mapping[str, torch.Tensor]) -> dict[str, float]:
    out: dict[str, float] = {}
    for group, chosen in selection.chosen.items():
        if not chosen:
            continue
        size = selection.graph.group(group).size
        total = torch.zeros(size, dtype=torch.float64)
        count = torch.zeros(size, dtype=torch.float64)
        for c in selection.layers[group]:
            e = energy.get(c.name)
            if e is None or e.numel() != c.channel_units.numel():
                continue
            mine = c.channel_units >= 0
            units = c.channel_units[mine].cpu()
            total.index_add_(0, units, e.cpu().double()[mine.cpu()])
            count.index_add_(0, units, torch.ones_like(units, dtype=torch.float64))
        mask = torch.zeros(size, dtype=torch.bool)
        mask[chosen] = True
        seen = count > 0
        per_unit = total / count.clamp_min(1)
        kept = per_unit[~mask & seen]
        gone = per_unit[mask & seen]
        if not gone.numel() or not kept.numel():
            continue
        ratio = float(gone.mean() / kept.mean().clamp_min(1e-30))
        out[group] = math.sqrt(max(ratio, 0.0))
    return out
