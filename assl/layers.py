"""What the library knows about each kind of layer, shared by tracing, scaling and slimming.

Convolutions, transposed convolutions and Linear layers *produce* channels (their output channels
can be pruned) and *consume* them (their input channels are cut). Normalization layers and PReLU
carry per-channel parameters. Every other module is traced through the operations it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

__all__ = [
    "BATCHNORM",
    "CHANNEL_NORMS",
    "CONV",
    "DECONV",
    "INSTANCENORM",
    "LAYER_TYPES",
    "PRODUCER_TYPES",
    "SIZE_ATTRS",
    "channel_dim",
    "has_affine",
    "implied_shapes",
    "layer_sizes",
    "output_dim",
    "resize",
    "size_attrs",
]

CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
DECONV = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
INSTANCENORM = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
LAYER_TYPES = (*CONV, *DECONV, nn.Linear, *BATCHNORM, *INSTANCENORM, nn.GroupNorm, nn.LayerNorm, nn.PReLU)
"""Layers the tracer treats as whole operations."""
PRODUCER_TYPES = (*CONV, *DECONV, nn.Linear)
"""Layers whose output channels can be pruned."""
CHANNEL_NORMS = (*BATCHNORM, *INSTANCENORM, nn.GroupNorm)
"""Normalizations with per-channel affine parameters (when ``affine=True``) along dim 1."""


# the layers slimming resizes, and the attributes that follow their tensors (what ``assl.save`` records)
SIZE_ATTRS: tuple[tuple[tuple[type[nn.Module], ...], tuple[str, ...]], ...] = (
    ((*CONV, *DECONV), ("in_channels", "out_channels", "groups")),
    ((nn.Linear,), ("in_features", "out_features")),
    ((*BATCHNORM, *INSTANCENORM), ("num_features",)),
    ((nn.GroupNorm,), ("num_channels", "num_groups")),
    ((nn.LayerNorm,), ("normalized_shape",)),
    ((nn.PReLU,), ("num_parameters",)),
)


def size_attrs(module: nn.Module) -> tuple[str, ...]:
    """The size attributes of ``module`` that slimming updates (none for a layer it does not resize)."""
    for types, attrs in SIZE_ATTRS:
        if isinstance(module, types):
            return attrs
    return ()


def layer_sizes(model: nn.Module) -> dict[str, dict[str, int | list[int]]]:
    """Module name -> its size attributes (``normalized_shape`` as a list), for every layer that has them."""
    sizes: dict[str, dict[str, int | list[int]]] = {}
    for name, m in model.named_modules():
        attrs = size_attrs(m)
        if attrs:
            sizes[name] = {a: list(getattr(m, a)) if a == "normalized_shape" else int(getattr(m, a)) for a in attrs}
    return sizes


def implied_shapes(m: nn.Module, s: Mapping[str, Any]) -> tuple[dict[str, tuple[int, ...]], str]:
    """The shapes the size attributes ``s`` give ``m``'s own tensors, or why they cannot be ``m``'s sizes (else "")."""
    if isinstance(m, (*CONV, *DECONV)):
        i, o, g = s["in_channels"], s["out_channels"], s["groups"]
        if g < 1 or i % g or o % g:
            return {}, f"in_channels {i} and out_channels {o} are not both multiples of groups {g}"
        k = tuple(cast(tuple[int, ...], m.kernel_size))  # slimming never changes kernels
        w = (i, o // g, *k) if m.transposed else (o, i // g, *k)
        return {"weight": w, "bias": (o,)}, ""
    if isinstance(m, nn.Linear):
        return {"weight": (s["out_features"], s["in_features"]), "bias": (s["out_features"],)}, ""
    if isinstance(m, (*BATCHNORM, *INSTANCENORM)):
        return dict.fromkeys(("weight", "bias", "running_mean", "running_var"), (s["num_features"],)), ""
    if isinstance(m, nn.GroupNorm):
        c, g = s["num_channels"], s.get("num_groups", m.num_groups)  # files before whole-group pruning lack it
        if g < 1 or c % g:
            return {}, f"num_channels {c} is not a multiple of num_groups {g}"
        return dict.fromkeys(("weight", "bias"), (c,)), ""
    if isinstance(m, nn.LayerNorm):
        return dict.fromkeys(("weight", "bias"), tuple(s["normalized_shape"])), ""
    if isinstance(m, nn.PReLU):
        return {"weight": (s["num_parameters"],)}, ""
    return {}, ""


def has_affine(module: nn.Module) -> bool:
    """Whether a normalization layer has a per-channel weight (gamma) and bias (beta)."""
    return isinstance(getattr(module, "weight", None), nn.Parameter) and isinstance(
        getattr(module, "bias", None), nn.Parameter
    )


def channel_dim(module: nn.Module, out: torch.Tensor) -> int:
    """The dimension of ``module``'s output ``out`` that holds its channels."""
    if isinstance(module, nn.Linear):
        return out.ndim - 1
    if isinstance(module, (*CONV, *DECONV)):
        return out.ndim - len(module.kernel_size) - 1
    if isinstance(module, INSTANCENORM):
        spatial = 1 if isinstance(module, nn.InstanceNorm1d) else 2 if isinstance(module, nn.InstanceNorm2d) else 3
        return out.ndim - spatial - 1
    return 1 if out.ndim > 1 else 0


def output_dim(module: nn.Module) -> int:
    """The weight dimension that indexes output channels (1 for transposed convolutions)."""
    return 1 if isinstance(module, DECONV) else 0


def resize(m: nn.Module) -> None:
    """Update a slimmed layer's size attributes from its (already cut) tensors."""
    if isinstance(m, (*CONV, *DECONV)):
        w = m.weight
        depthwise = m.groups > 1 and m.in_channels == m.groups
        if isinstance(m, DECONV):
            if depthwise:
                m.groups = w.shape[0]
            m.in_channels = w.shape[0]
            m.out_channels = w.shape[1] * m.groups
        else:
            if depthwise:
                # cut rows of a depthwise weight remove whole groups of `multiplier` rows
                m.groups = w.shape[0] // (m.out_channels // m.in_channels)
            m.out_channels = w.shape[0]
            m.in_channels = w.shape[1] * m.groups
    elif isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, (*BATCHNORM, *INSTANCENORM)):
        n = _first_size(m, ("weight", "running_mean"))
        if n is not None:
            m.num_features = n
    elif isinstance(m, nn.GroupNorm):
        n = _first_size(m, ("weight",))
        if n is not None:
            per_group = m.num_channels // m.num_groups
            if n % per_group == 0:  # whole groups went (under approximate_norms, one group lost channels)
                m.num_groups = n // per_group
            m.num_channels = n
    elif isinstance(m, nn.LayerNorm):
        n = _first_size(m, ("weight", "bias"))
        if n is not None:
            m.normalized_shape = (n,)
    elif isinstance(m, nn.PReLU):
        m.num_parameters = m.weight.shape[0]


def _first_size(m: nn.Module, names: tuple[str, ...]) -> int | None:
    for n in names:
        t = getattr(m, n, None)
        if isinstance(t, torch.Tensor):
            return int(t.shape[0])
    return None
