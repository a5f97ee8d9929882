"""Rules for the layers the tracer treats as whole operations.

Convolutions and Linear layers *produce* channels (each output channel gets a node) and
*consume* them (their input channels are cut when a node goes). Normalization layers and PReLU
carry per-channel parameters along. Every other module is traced through its operations.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..layers import DECONV, channel_dim
from .channels import Value, fixed_value
from .protocol import Tracer

_ACROSS = (
    "{name} ({kind}) normalizes across channels: removing its input channels changes the statistics of "
    "the others, so no slimming of them is exact; pass approximate_norms=True to prune them anyway"
)


def _input_value(tr: Tracer, x: torch.Tensor, channel_dim: int, name: str) -> Value:
    v = tr.get(x)
    if v is not None and v.dim == channel_dim:
        return v
    if v is not None:
        tr.fix(v.labels, f"reaches `{name}` on a dimension that is not its channel dimension")
    return fixed_value(channel_dim, x.shape[channel_dim])


def _conv(tr: Tracer, name: str, m: _ConvNd, x: torch.Tensor, out: torch.Tensor) -> None:
    transposed = isinstance(m, DECONV)
    spatial = len(m.kernel_size)
    cd = x.ndim - spatial - 1
    v = _input_value(tr, x, cd, name)
    g = m.groups
    c_in, c_out = m.in_channels, m.out_channels
    b_in, b_out = c_in // g, c_out // g
    w_in, w_out = (0, 1) if transposed else (1, 0)
    # MACs = positions x weight size: output positions, or input positions for a transposed conv
    tr.count_positions(name, x.numel() // c_in if transposed else out.numel() // c_out)
    if g > 1 and b_in == 1:
        # depthwise: output channel k*b_out + i is computed from input channel k alone
        labels = np.repeat(v.labels, b_out)
        tr.entry(name, "weight", 0, v.labels if transposed else labels, "zero")
        if m.bias is not None:
            tr.entry(name, "bias", 0, labels, "zero")
        tr.put(out, Value(cd, labels, np.ones(c_out, dtype=bool)), name)
        return
    tr.consume(v, name)
    if g > 1:
        tr.nodes.tie_blocks(v.labels, g, f"grouped `{name}` keeps equal groups")
    tr.entry(name, "weight", w_in, v.labels if transposed else v.labels[:b_in], "slice")
    src = tr.source(name, c_out)
    if g > 1:
        tr.nodes.tie_blocks(src, g, f"grouped `{name}` keeps equal groups")
    tr.entry(name, "weight", w_out, src[:b_out] if transposed else src, "zero")
    if m.bias is not None:
        tr.entry(name, "bias", 0, src, "zero")
    tr.put(out, Value(cd, src, np.ones(c_out, dtype=bool)), name)


def _linear(tr: Tracer, name: str, m: nn.Linear, x: torch.Tensor, out: torch.Tensor) -> None:
    v = _input_value(tr, x, x.ndim - 1, name)
    tr.count_positions(name, out.numel() // m.out_features)
    tr.consume(v, name)
    tr.entry(name, "weight", 1, v.labels, "slice")
    src = tr.source(name, m.out_features)
    tr.entry(name, "weight", 0, src, "zero")
    if m.bias is not None:
        tr.entry(name, "bias", 0, src, "zero")
    tr.put(out, Value(out.ndim - 1, src, np.ones(m.out_features, dtype=bool)), name)


def _norm(tr: Tracer, name: str, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    cd = channel_dim(m, x)  # unbatched input has its channels first
    v = _input_value(tr, x, cd, name)
    tr.normalizes(name, v.labels)
    if isinstance(m, nn.GroupNorm):
        if not tr.approximate_norms:
            tr.fix(v.labels, _ACROSS.format(name=name, kind="GroupNorm"))
        else:
            tr.nodes.tie_blocks(v.labels, m.num_groups, f"`{name}` keeps equal groups")
    affine = bool(getattr(m, "affine", False))
    if affine:
        tr.entry(name, "weight", 0, v.labels, "zero")
        tr.entry(name, "bias", 0, v.labels, "zero")
    if getattr(m, "running_mean", None) is not None:
        tr.entry(name, "running_mean", 0, v.labels, "zero")
        tr.entry(name, "running_var", 0, v.labels, "slice")
    zero = np.ones(v.size, dtype=bool) if affine else v.zero
    tr.put(out, Value(cd, v.labels, zero), name)


def _layernorm(tr: Tracer, name: str, m: nn.LayerNorm, x: torch.Tensor, out: torch.Tensor) -> None:
    v = tr.get(x)
    if v is None:
        return
    first_normalized = x.ndim - len(m.normalized_shape)
    if v.dim < first_normalized:
        # channels are not normalized together; the output is not zero where the bias is not
        zero = v.zero if m.bias is None else np.zeros_like(v.zero)
        tr.put(out, Value(v.dim, v.labels, zero), name)
        return
    if not tr.approximate_norms or len(m.normalized_shape) != 1:
        tr.fix(v.labels, _ACROSS.format(name=name, kind="LayerNorm"))
        tr.put(out, Value(v.dim, v.labels, np.zeros_like(v.zero)), name)
        return
    if m.weight is not None:
        tr.entry(name, "weight", 0, v.labels, "zero")
    if m.bias is not None:
        tr.entry(name, "bias", 0, v.labels, "zero")
    tr.put(out, Value(v.dim, v.labels, np.full(v.size, m.weight is not None)), name)


def _prelu(tr: Tracer, name: str, m: nn.PReLU, x: torch.Tensor, out: torch.Tensor) -> None:
    cd = 1 if x.ndim >= 2 else 0
    v = tr.get(x)
    if v is None:
        return
    if m.num_parameters > 1:
        v = _input_value(tr, x, cd, name)
        tr.entry(name, "weight", 0, v.labels, "slice")
    tr.put(out, v, name)


def opaque_layer(tr: Tracer, name: str, m: nn.Module, inputs: list[torch.Tensor], out: object, why: str) -> None:
    """A known layer whose computation the tracer cannot see: its input and output channels stay."""
    reason = f"`{name}` is opaque: {why}"
    for x in inputs:
        v = tr.get(x)
        if v is not None:
            tr.fix(v.labels, reason)
    if isinstance(out, torch.Tensor) and out.ndim:
        d = channel_dim(m, out)
        if 0 <= d < out.ndim:  # channels of its own that carry the reason to whatever they meet
            labels = tr.nodes.new(out.shape[d])
            tr.fix(labels, reason)
            tr.put(out, Value(d, labels, np.zeros(out.shape[d], dtype=bool)), name)


def record(tr: Tracer, name: str, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    """Record one call of a known layer: its entries and the labels of its output."""
    if isinstance(m, _ConvNd):
        _conv(tr, name, m, x, out)
    elif isinstance(m, nn.Linear):
        _linear(tr, name, m, x, out)
    elif isinstance(m, nn.LayerNorm):
        _layernorm(tr, name, m, x, out)
    elif isinstance(m, nn.PReLU):
        _prelu(tr, name, m, x, out)
    else:
        _norm(tr, name, m, x, out)


__all__ = ["opaque_layer", "record"]
