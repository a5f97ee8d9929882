"""Weight-normalized scales: ``W = g * V / ||V||`` with one ``g`` per output channel.

The scale is a ``torch.nn.utils.parametrize`` parametrization that owns the new Parameter
``g``; the layer's weight Parameter stays the same object (as ``parametrizations.weight.original``),
so an optimizer built before the insertion keeps updating it. ``g`` starts at ``||W||`` of the
weight the layer holds at that moment, so inserting the scale does not change the output.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import output_dim

__all__ = ["WeightScale", "insert_scale", "scale_of", "scaled_state_dict"]

_EPS = 1e-12


class WeightScale(nn.Module):
    """The parametrization ``weight -> scale * weight / ||weight||`` along ``dim``.

    Attributes:
        scale: One scale per output channel (per slice along ``dim``), the importance ``g``.
    """

    def __init__(self, weight: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(self._norm(weight.detach()).clone())

    def _norm(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.transpose(0, self.dim).flatten(1).norm(dim=1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        shape = [1] * weight.ndim
        shape[self.dim] = -1
        factor = self.scale / self._norm(weight).clamp_min(_EPS)
        return weight * factor.view(shape)


def insert_scale(module: nn.Module) -> WeightScale:
    """Register a :class:`WeightScale` on ``module.weight`` and return it."""
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor to scale")
    ws = WeightScale(weight, output_dim(module))
    parametrize.register_parametrization(module, "weight", ws)
    return ws


def scaled_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``, a dense state dict, rewritten for ``model`` whose layers carry :class:`WeightScale`.

    Each scaled layer's ``weight`` becomes its ``parametrizations.weight.original`` and its scale
    is set to the per-channel norm of that weight, so the model then computes exactly what the
    dense weights compute. Keys already in the parametrized form are kept as they are.
    """
    out = dict(state)
    for name, module in model.named_modules():
        ws = scale_of(module)
        prefix = f"{name}." if name else ""
        dense = out.get(f"{prefix}weight")
        if ws is None or dense is None or f"{prefix}parametrizations.weight.original" in out:
            continue
        out[f"{prefix}parametrizations.weight.original"] = out.pop(f"{prefix}weight")
        out[f"{prefix}parametrizations.weight.0.scale"] = ws._norm(dense.detach()).to(ws.scale.dtype)
    return out


def scale_of(module: nn.Module) -> WeightScale | None:
    """The :class:`WeightScale` on ``module.weight``, if one is registered."""
    if not parametrize.is_parametrized(module, "weight"):
        return None
    for p in module.parametrizations["weight"]:  # type: ignore[index]
        if isinstance(p, WeightScale):
            return p
    return None
