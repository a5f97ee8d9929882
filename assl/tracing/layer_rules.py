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
    "`{name}` ({kind}) normalizes across channels: removing its input channels changes the statistics of "
    "the others, so no slimming of them is exact; pass approximate_norms=True to prune them anyway"
)


_WHOLE = " (whole groups of channels can go when it has affine parameters)"


def _input_value(tr: Tracer, x: torch.Tensor, channel_dim: int, name: str) -> Value:
    v = tr.get(x)
    if v is not None and v.dim == channel_dim:
        return v
    if v is not None:
        tr.fix(v.labels, f"reaches `{name}` on a dimension that is not its channel dimension")
    return fixed_value(channel_dim, x.shape[channel_dim])


ParamAxes = list[tuple[str, str, int, str]]
"""Dimensions of parameters that follow a call's channels: (module, tensor, dim, role)."""


def _own(name: str, tensor: str, dim: int, role: str = "zero") -> ParamAxes:
    return [(name, tensor, dim, role)]


def _record_axes(tr: Tracer, axes: ParamAxes, labels: np.ndarray, role: str | None = None) -> None:
    for module, tensor, dim, own_role in axes:
        tr.entry(module, tensor, dim, labels, role or own_role)


def conv_call(
    tr: Tracer,
    name: str,
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    transposed: bool,
    spatial: int,
    groups: int,
    weight: tuple[ParamAxes, ParamAxes],
    bias: ParamAxes,
    out_zero: np.ndarray | None = None,
) -> None:
    """One call of a convolution (of a layer, or ``F.conv2d`` in a forward the tracer follows).

    Args:
        name: The producer: the layer whose output channels the call makes.
        weight: The parameter dimensions along the weight's dims 0 and 1.
        bias: The parameter dimensions along the bias.
        out_zero: Per output channel, whether it is zero once removed (default: all).
    """
    cd = x.ndim - spatial - 1
    v = _input_value(tr, x, cd, name)
    g = groups
    c_out = out.shape[cd]
    c_in = x.shape[cd]
    b_in, b_out = c_in // g, c_out // g
    w_in, w_out = (weight[0], weight[1]) if transposed else (weight[1], weight[0])
    # MACs = positions x weight size: output positions, or input positions for a transposed conv
    tr.count_positions(name, x.numel() // c_in if transposed else out.numel() // c_out)
    zero = np.ones(c_out, dtype=bool) if out_zero is None else out_zero
    if g > 1 and b_in == 1:
        # depthwise: output channel k*b_out + i is computed from input channel k alone
        labels = np.repeat(v.labels, b_out)
        _record_axes(tr, weight[0], v.labels if transposed else labels)
        _record_axes(tr, bias, labels)
        tr.put(out, Value(cd, labels, zero), name)
        return
    tr.consume(v, name)
    if g > 1:
        tr.nodes.tie_blocks(v.labels, g, f"grouped `{name}` keeps equal groups")
    _record_axes(tr, w_in, v.labels if transposed else v.labels[:b_in], "slice")
    src = tr.source(name, c_out)
    if g > 1:
        tr.nodes.tie_blocks(src, g, f"grouped `{name}` keeps equal groups")
    _record_axes(tr, w_out, src[:b_out] if transposed else src)
    _record_axes(tr, bias, src)
    tr.put(out, Value(cd, src, zero), name)


def _conv(tr: Tracer, name: str, m: _ConvNd, x: torch.Tensor, out: torch.Tensor) -> None:
    transposed = isinstance(m, DECONV)
    weight = (_own(name, "weight", 0), _own(name, "weight", 1))
    bias = _own(name, "bias", 0) if m.bias is not None else []
    conv_call(
        tr, name, x, out, transposed=transposed, spatial=len(m.kernel_size), groups=m.groups, weight=weight, bias=bias
    )


def linear_call(
    tr: Tracer,
    name: str,
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    weight: tuple[ParamAxes, ParamAxes],
    bias: ParamAxes,
    out_zero: np.ndarray | None = None,
) -> None:
    """One call of a Linear layer (or ``F.linear``): producer of ``name``'s output features."""
    v = _input_value(tr, x, x.ndim - 1, name)
    n_out = out.shape[-1]
    tr.count_positions(name, out.numel() // n_out)
    tr.consume(v, name)
    _record_axes(tr, weight[1], v.labels, "slice")
    src = tr.source(name, n_out)
    _record_axes(tr, weight[0], src)
    _record_axes(tr, bias, src)
    zero = np.ones(n_out, dtype=bool) if out_zero is None else out_zero
    tr.put(out, Value(out.ndim - 1, src, zero), name)


def _linear(tr: Tracer, name: str, m: nn.Linear, x: torch.Tensor, out: torch.Tensor) -> None:
    bias = _own(name, "bias", 0) if m.bias is not None else []
    linear_call(tr, name, x, out, weight=(_own(name, "weight", 0), _own(name, "weight", 1)), bias=bias)


def norm_call(
    tr: Tracer,
    name: str | None,
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    cd: int,
    groups: int | None,
    params: ParamAxes,
    out_zero: np.ndarray | None,
) -> None:
    """One call of a per-channel normalization (BatchNorm, InstanceNorm, GroupNorm, or their
    functional forms): its parameters follow the channels; GroupNorm normalizes across them.

    Args:
        name: The normalization layer (``None`` for a functional call without parameters of a layer).
        groups: GroupNorm's number of groups (``None`` for per-channel norms).
        params: Its per-channel parameters and buffers with their roles.
        out_zero: Per channel, whether the output is zero once removed (default: where the input is).
    """
    v = _input_value(tr, x, cd, name or "batch_norm")
    if name is not None:
        tr.normalizes(name, v.labels)
    if groups is not None:
        norm = name or "group_norm"
        whole = bool(params) and v.size % groups == 0 and groups > 1
        if whole:  # a whole norm group goes or stays: the other groups' statistics do not change
            rows = v.labels.reshape(groups, -1)
            for j in range(1, rows.shape[1]):
                tr.union(rows[:, 0], rows[:, j], f"normalized by `{norm}` with a channel that cannot be removed")
        elif tr.approximate_norms:
            tr.nodes.tie_blocks(v.labels, groups, f"`{norm}` keeps equal groups")
        else:
            tr.fix(v.labels, _ACROSS.format(name=norm, kind="GroupNorm") + _WHOLE)
    _record_axes(tr, params, v.labels)
    tr.put(out, Value(cd, v.labels, v.zero if out_zero is None else out_zero), name or "batch_norm")


def _norm(tr: Tracer, name: str, m: nn.Module, x: torch.Tensor, out: torch.Tensor) -> None:
    affine = bool(getattr(m, "affine", False))
    params: ParamAxes = []
    if affine:
        params += _own(name, "weight", 0) + _own(name, "bias", 0)
    if getattr(m, "running_mean", None) is not None:
        params += _own(name, "running_mean", 0) + _own(name, "running_var", 0, "slice")
    cd = channel_dim(m, x)  # unbatched input has its channels first
    groups = m.num_groups if isinstance(m, nn.GroupNorm) else None
    zero = np.ones(x.shape[cd], dtype=bool) if affine else None
    norm_call(tr, name, x, out, cd=cd, groups=groups, params=params, out_zero=zero)


def layer_norm_call(
    tr: Tracer,
    name: str,
    x: torch.Tensor,
    out: torch.Tensor,
    *,
    normalized: int,
    weight: ParamAxes | None,
    bias: ParamAxes | None,
    out_zero: np.ndarray | None = None,
) -> None:
    """One call of a LayerNorm over the last ``normalized`` dims (``None``: no such parameter)."""
    v = tr.get(x)
    if v is None:
        return
    if v.dim < x.ndim - normalized:
        # channels are not normalized together; the output is not zero where the bias is not
        zero = v.zero if bias is None else np.zeros_like(v.zero)
        tr.put(out, Value(v.dim, v.labels, zero), name)
        return
    if not tr.approximate_norms or normalized != 1:
        tr.fix(v.labels, _ACROSS.format(name=name, kind="LayerNorm"))
        tr.put(out, Value(v.dim, v.labels, np.zeros_like(v.zero)), name)
        return
    _record_axes(tr, (weight or []) + (bias or []), v.labels)
    zero = np.full(v.size, weight is not None) if out_zero is None else out_zero
    tr.put(out, Value(v.dim, v.labels, zero), name)


def _layernorm(tr: Tracer, name: str, m: nn.LayerNorm, x: torch.Tensor, out: torch.Tensor) -> None:
    weight = _own(name, "weight", 0) if m.weight is not None else None
    bias = _own(name, "bias", 0) if m.bias is not None else None
    layer_norm_call(tr, name, x, out, normalized=len(m.normalized_shape), weight=weight, bias=bias)


def prelu_call(tr: Tracer, name: str, x: torch.Tensor, out: torch.Tensor, *, weight: ParamAxes | None) -> None:
    """One call of PReLU; ``weight``: the parameter dims along its channels (``None``: one slope)."""
    cd = 1 if x.ndim >= 2 else 0
    v = tr.get(x)
    if v is None:
        return
    if weight is not None:
        v = _input_value(tr, x, cd, name)
        _record_axes(tr, weight, v.labels, "slice")
    tr.put(out, v, name)


def _prelu(tr: Tracer, name: str, m: nn.PReLU, x: torch.Tensor, out: torch.Tensor) -> None:
    prelu_call(tr, name, x, out, weight=_own(name, "weight", 0, "slice") if m.num_parameters > 1 else None)


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


__all__ = [
    "ParamAxes",
    "conv_call",
    "layer_norm_call",
    "linear_call",
    "norm_call",
    "opaque_layer",
    "prelu_call",
    "record",
]
