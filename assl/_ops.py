"""How elementwise, per-channel and reducing torch operations move and tie channel labels.

Each rule reads the labels of its tensor inputs from the tracer and records the labels of its
outputs. An operation without a rule is *opaque*: the channels of its tensor inputs can never be
removed (we cannot prove the result unchanged) and its outputs carry no labels. Operations that
move the channel dimension live in ``_shape_ops``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._oputil import Opaque, Rule, tensors
from ._oputil import arg as _arg
from ._oputil import first_out as _first_out
from ._oputil import norm_dim as _norm_dim
from ._shape_ops import SHAPE_RULES
from ._values import Value

if TYPE_CHECKING:
    from .trace import _Tracer

# --- elementwise ---------------------------------------------------------------------------

_KEEPS_ZERO = {
    "relu",
    "relu_",
    "relu6",
    "leaky_relu",
    "leaky_relu_",
    "gelu",
    "silu",
    "hardswish",
    "elu",
    "elu_",
    "selu",
    "selu_",
    "celu",
    "celu_",
    "mish",
    "tanh",
    "tanh_",
    "neg",
    "neg_",
    "__neg__",
    "abs",
    "abs_",
    "__abs__",
    "sin",
    "sin_",
    "sign",
    "square",
    "sqrt",
    "sqrt_",
    "softsign",
    "tanhshrink",
    "hardshrink",
    "softshrink",
    "erf",
    "erf_",
    "rrelu",
    "rrelu_",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "contiguous",
    "clone",
    "detach",
    "detach_",
    "to",
    "type",
    "type_as",
    "float",
    "double",
    "half",
    "bfloat16",
    "cpu",
    "cuda",
    "requires_grad_",
    "positive",
    "nan_to_num",
    "nan_to_num_",
}
_LOSES_ZERO = {
    "sigmoid",
    "sigmoid_",
    "hardsigmoid",
    "exp",
    "exp_",
    "cos",
    "cos_",
    "softplus",
    "log",
    "log_",
    "reciprocal",
    "reciprocal_",
    "rsqrt",
    "rsqrt_",
    "logsigmoid",
    "log1p",
    "expm1",
    "cosh",
    "erfc",
}


_SINGULAR = {"log", "log_", "log2", "log10", "reciprocal", "reciprocal_", "rsqrt", "rsqrt_"}


def _unary(keeps_zero: bool, singular: bool = False) -> Rule:
    def rule(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        v = tr.get(x)
        if any(tr.get(t) is not None for t in tensors((args[1:], kwargs))):
            raise Opaque  # a traced tensor in another place (torch.pow(2, x), clamp(x, max=y))
        if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
            return
        if v is None:
            if keeps_zero:  # exp(0) = 1: a parameter zeroed in the masked model must not pass
                tr.propagate_param_ref(x, out)
            return
        if singular or name in _SINGULAR:  # log(0), 1/0: a removed channel would poison what follows
            tr.fix(v.labels[v.zero], f"`{name}` of a channel that is zero once removed")
        if out.shape != x.shape:
            raise Opaque
        tr.put(out, Value(v.dim, v.labels, v.zero if keeps_zero else np.zeros_like(v.zero)), name)

    return rule


def _clamp(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    lo = _arg(args, kwargs, 1, "min")
    hi = _arg(args, kwargs, 2, "max")
    if name.startswith("clamp_max"):
        lo, hi = None, lo
    keeps = all(b is None or (isinstance(b, (int, float)) and s * b >= 0) for b, s in ((lo, -1), (hi, 1)))
    _unary(keeps)(tr, name, args, kwargs, out)


def _pow(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    e = _arg(args, kwargs, 1, "exponent")
    number = isinstance(e, (int, float))
    _unary(number and e > 0, singular=not number or e < 0)(tr, name, args, kwargs, out)


def _hardtanh(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    lo = _arg(args, kwargs, 1, "min_val", -1.0)
    hi = _arg(args, kwargs, 2, "max_val", 1.0)
    _unary(lo <= 0 <= hi)(tr, name, args, kwargs, out)


def _softmax(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None:
        return
    d = _arg(args, kwargs, 1, "dim")
    if d is None or _norm_dim(d, x.ndim) == v.dim:
        raise Opaque
    _unary(False)(tr, name, args, kwargs, out)


_ADD = {
    "add",
    "add_",
    "__add__",
    "__radd__",
    "__iadd__",
    "sub",
    "sub_",
    "__sub__",
    "__isub__",
    "subtract",
    "maximum",
    "minimum",
    "fmax",
    "fmin",
}
_RSUB = {"__rsub__", "rsub"}
_MUL = {"mul", "mul_", "__mul__", "__rmul__", "__imul__", "multiply"}
_DIV = {"div", "div_", "__truediv__", "__itruediv__", "true_divide", "divide", "__div__"}
_RDIV = {"__rtruediv__", "__rdiv__"}


def _binary(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    if name in ("max", "min"):
        name = "maximum"
    if not isinstance(out, torch.Tensor):
        return
    a = args[0]
    b = _arg(args, kwargs, 1, "other")
    if name in _RSUB or name in _RDIV:
        a, b = b, a
    operands = [a, b]
    values = [tr.get(t) if isinstance(t, torch.Tensor) else None for t in operands]
    if all(v is None for v in values):
        return
    no = out.ndim
    positions = {v.dim + no - t.ndim for t, v in zip(operands, values) if v is not None}
    if len(positions) > 1:
        raise Opaque
    pos = positions.pop()
    size = out.shape[pos]
    tied: list[Value] = [v for t, v in zip(operands, values) if v is not None and v.size == size]
    if not tied:
        raise Opaque
    labels = tied[0].labels
    # per operand: exactly zero once removed (numerators), or never zero there (the divisor)
    flags: list[np.ndarray] = []
    for i, (t, v) in enumerate(zip(operands, values)):
        divisor = i == 1 and (name in _DIV or name in _RDIV)
        if v is not None and v.size == size:
            if divisor:  # a removed divisor channel is 0: 0/0 = NaN in the masked model
                tr.fix(v.labels[v.zero], f"divides by a channel through `{name}` that is zero once removed")
                flags.append(np.ones(size, dtype=bool))
            else:
                flags.append(v.zero)
            continue
        if v is not None:  # a broadcast channel of size 1: it can never be removed
            tr.fix(v.labels, f"broadcast against {size} channels by `{name}`")
            flags.append(np.full(size, divisor))
            continue
        if isinstance(t, torch.Tensor):
            k = pos - (no - t.ndim)
            n = t.shape[k] if k >= 0 else 1
            if n == size and size > 1:
                ref = tr.param_ref(t)
                if ref is None or ref.dim != k:
                    tr.fix(labels, f"combined by `{name}` with a per-channel tensor that is not a parameter")
                    flags.append(np.zeros(size, dtype=bool))
                    continue
                # the masked model zeroes an additive or multiplicative parameter, never a divisor
                tr.entry(ref.module, ref.tensor, ref.param_dim, labels, "slice" if divisor else "zero")
                flags.append(np.ones(size, dtype=bool))
                continue
            flags.append(np.full(size, bool(torch.all(t != 0)) if divisor else not bool(torch.any(t))))
            continue
        flags.append(np.full(size, (t != 0) if divisor else (t == 0)))
    for other in tied[1:]:
        tr.union(labels, other.labels, f"tied by `{name}` to a channel that cannot be removed")
    if name in _MUL:
        zero = flags[0] | flags[1]
    else:  # add, sub, max, min: both zero; division: zero numerator over a divisor that is not
        zero = flags[0] & flags[1]
    tr.put(out, Value(pos, labels, zero), name)


def _max_min(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    if isinstance(_arg(args, kwargs, 1, "other"), torch.Tensor):
        _binary(tr, name, args, kwargs, out)
    else:
        _reduce(tr, name, args, kwargs, out)


# --- per-channel ops on trailing dims ------------------------------------------------------


def _spatial(n_trailing: Callable[[tuple, dict, torch.Tensor], int], keeps_zero: bool = True) -> Rule:
    def rule(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        v = tr.get(x)
        o = _first_out(out)
        if v is None or o is None:
            return
        if v.dim >= x.ndim - n_trailing(args, kwargs, x) or o.ndim != x.ndim:
            raise Opaque
        tr.put(o, Value(v.dim, v.labels, v.zero if keeps_zero else np.zeros_like(v.zero)), name)

    return rule


def _suffix_dims(name: str) -> int:
    for n in (1, 2, 3):
        if f"{n}d" in name:
            return n
    raise Opaque


def _pool(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    n = _suffix_dims(name)
    _spatial(lambda a, k, x: n)(tr, name, args, kwargs, out)


def _pad(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    pad = _arg(args, kwargs, 1, "pad")
    mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    keeps = mode != "constant" or not value
    _spatial(lambda a, k, x: len(pad) // 2, keeps)(tr, name, args, kwargs, out)


def _interpolate(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    _spatial(lambda a, k, x: x.ndim - 2)(tr, name, args, kwargs, out)


def _roll_flip(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None:
        return
    dims = _arg(args, kwargs, 2 if name == "roll" else 1, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if not dims or any(_norm_dim(d, x.ndim) == v.dim for d in dims):
        raise Opaque
    tr.put(out, v, name)


def _shuffle(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None:
        return
    factor = int(_arg(args, kwargs, 1, "upscale_factor" if name == "pixel_shuffle" else "downscale_factor"))
    r2 = factor * factor
    if v.dim != x.ndim - 3:
        raise Opaque
    if name == "pixel_shuffle":
        # channel c after the shuffle is made of channels c*r^2 .. c*r^2 + r^2 - 1 before it
        blocks = v.labels.reshape(-1, r2)
        for j in range(1, r2):
            tr.union(blocks[:, 0], blocks[:, j], "shuffled with a channel that cannot be removed")
        tr.put(out, Value(v.dim, blocks[:, 0].copy(), np.asarray(v.zero.reshape(-1, r2).all(axis=1))), name)
    else:
        tr.put(out, Value(v.dim, np.repeat(v.labels, r2), np.repeat(v.zero, r2)), name)


# --- reductions ----------------------------------------------------------------------------

_REDUCE_KEEPS_ZERO = {
    "mean",
    "sum",
    "amax",
    "amin",
    "max",
    "min",
    "std",
    "var",
    "norm",
    "prod",
    "nanmean",
    "nansum",
    "median",
    "nanmedian",
}


def _reduce(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    o = _first_out(out)
    if v is None or o is None:
        return
    dim_pos = 2 if name == "norm" else 1
    dims = _arg(args, kwargs, dim_pos, "dim", kwargs.get("axis"))
    if dims is None:
        raise Opaque
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [_norm_dim(d, x.ndim) for d in dims]
    if v.dim in dims:
        raise Opaque
    keepdim = o.ndim == x.ndim
    new_dim = v.dim if keepdim else v.dim - sum(d < v.dim for d in dims)
    keeps = name in _REDUCE_KEEPS_ZERO
    tr.put(o, Value(new_dim, v.labels, v.zero if keeps else np.zeros_like(v.zero)), name)


# --- shape ops -----------------------------------------------------------------------------


RULES: dict[str, Rule] = {}
RULES.update({n: _unary(True) for n in _KEEPS_ZERO})
RULES.update({n: _unary(False) for n in _LOSES_ZERO})
RULES.update({n: _binary for n in _ADD | _RSUB | _MUL | _DIV | _RDIV})
RULES.update({"data": _unary(True)})
RULES.update(
    {n: _clamp for n in ("clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_")}
)
RULES.update({n: _pow for n in ("pow", "pow_", "__pow__", "__ipow__")})
RULES.update({n: _hardtanh for n in ("hardtanh", "hardtanh_")})
RULES.update({n: _softmax for n in ("softmax", "log_softmax", "softmin")})
RULES.update({n: _max_min for n in ("max", "min")})
RULES.update(
    {
        n: _pool
        for n in (
            "max_pool1d",
            "max_pool2d",
            "max_pool3d",
            "avg_pool1d",
            "avg_pool2d",
            "avg_pool3d",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "adaptive_avg_pool3d",
            "adaptive_max_pool1d",
            "adaptive_max_pool2d",
            "adaptive_max_pool3d",
            "max_pool1d_with_indices",
            "max_pool2d_with_indices",
            "max_pool3d_with_indices",
            "adaptive_max_pool1d_with_indices",
            "adaptive_max_pool2d_with_indices",
            "adaptive_max_pool3d_with_indices",
            "lp_pool1d",
            "lp_pool2d",
            "lp_pool3d",
            "_max_pool1d",
            "_max_pool2d",
            "_max_pool3d",
            "_adaptive_max_pool1d",
            "_adaptive_max_pool2d",
            "_adaptive_max_pool3d",
        )
    }
)
RULES.update({n: _interpolate for n in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear")})
RULES["pad"] = _pad
RULES.update({n: _roll_flip for n in ("roll", "flip")})
RULES.update({n: _shuffle for n in ("pixel_shuffle", "pixel_unshuffle")})
RULES.update({n: _reduce for n in _REDUCE_KEEPS_ZERO - {"max", "min"} | {"logsumexp"}})
RULES.update(SHAPE_RULES)
