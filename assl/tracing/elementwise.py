"""How elementwise torch operations move and tie channel labels.

Each rule reads the labels of its tensor inputs from the tracer and records the labels of its
outputs. An operation without a rule is *opaque*: the channels of its tensor inputs can never be
removed (we cannot prove the result unchanged) and its outputs carry no labels. Operations on
trailing dimensions and reductions live in ``spatial``, those that move the channel dimension in
``shape_rules``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._inputs import tensors
from .channels import Value
from .protocol import Opaque, Rule, Tracer
from .protocol import arg as _arg
from .protocol import norm_dim as _norm_dim

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


_CASTS = {"type_as", "to"}
"""Unary operations whose other tensor argument gives only a dtype or device."""

_SINGULAR = {"log", "log_", "log2", "log10", "reciprocal", "reciprocal_", "rsqrt", "rsqrt_"}


def _unary(keeps_zero: bool, singular: bool = False) -> Rule:
    def rule(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        v = tr.get(x)
        if name not in _CASTS and any(tr.get(t) is not None for t in tensors((args[1:], kwargs))):
            raise Opaque  # a traced tensor in another place (torch.pow(2, x), clamp(x, max=y))
        if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
            return
        if v is None:
            return
        if singular or name in _SINGULAR:  # log(0), 1/0: a removed channel would poison what follows
            tr.fix(v.labels[v.zero], f"`{name}` of a channel that is zero once removed")
        if out.shape != x.shape:
            raise Opaque
        tr.put(out, Value(v.dim, v.labels, v.zero if keeps_zero else np.zeros_like(v.zero)), name)

    return rule


def _clamp(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    lo = _arg(args, kwargs, 1, "min")
    hi = _arg(args, kwargs, 2, "max")
    if name.startswith("clamp_max"):
        lo, hi = None, lo
    keeps = all(b is None or (isinstance(b, (int, float)) and s * b >= 0) for b, s in ((lo, -1), (hi, 1)))
    _unary(keeps)(tr, name, args, kwargs, out)


def _pow(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    e = _arg(args, kwargs, 1, "exponent")
    number = isinstance(e, (int, float))
    _unary(number and e > 0, singular=not number or e < 0)(tr, name, args, kwargs, out)


def _hardtanh(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    lo = _arg(args, kwargs, 1, "min_val", -1.0)
    hi = _arg(args, kwargs, 2, "max_val", 1.0)
    _unary(lo <= 0 <= hi)(tr, name, args, kwargs, out)


def _softmax(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
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


def _binary(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
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
                b = tr.bind(t, k, zeroed=not divisor)
                why = f"parameters that cannot be cut with them: {b.why}" if b is not None and b.why else None
                if why is None and (b is None or not b.axes or b.zero is None):
                    why = "a per-channel tensor that is not a parameter"
                if why is not None or b is None or b.zero is None:
                    tr.fix(labels, f"combined by `{name}` with {why}")
                    flags.append(np.zeros(size, dtype=bool))
                    continue
                # parameters (or tensors computed from them alone) are cut with the channels; the
                # masked model zeroes them where that keeps the result finite, never a divisor
                for module, tensor, dim, role in b.axes:
                    tr.entry(module, tensor, dim, labels, role)
                flags.append(b.zero)
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


ELEMENTWISE_RULES: dict[str, Rule] = {}
ELEMENTWISE_RULES.update({n: _unary(True) for n in _KEEPS_ZERO})
ELEMENTWISE_RULES.update({n: _unary(False) for n in _LOSES_ZERO})
ELEMENTWISE_RULES.update({n: _binary for n in _ADD | _RSUB | _MUL | _DIV | _RDIV})
ELEMENTWISE_RULES.update({"data": _unary(True)})
ELEMENTWISE_RULES.update(
    {n: _clamp for n in ("clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_")}
)
ELEMENTWISE_RULES.update({n: _pow for n in ("pow", "pow_", "__pow__", "__ipow__")})
ELEMENTWISE_RULES.update({n: _hardtanh for n in ("hardtanh", "hardtanh_")})
ELEMENTWISE_RULES.update({n: _softmax for n in ("softmax", "log_softmax", "softmin")})
