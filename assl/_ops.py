"""How functional torch operations move and tie channel labels.

Each rule reads the labels of its tensor inputs from the tracer and records the labels of its
outputs. An operation without a rule is *opaque*: the channels of its tensor inputs can never be
removed (we cannot prove the result unchanged) and its outputs carry no labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._values import FIXED, Value

if TYPE_CHECKING:
    from .trace import _Tracer

Rule = Callable[["_Tracer", str, tuple, dict, Any], None]


class Opaque(Exception):
    """Raised by a rule that cannot map its inputs: the op is then treated as opaque."""


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


def _arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def _first_out(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


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
    "hardtanh",
    "hardtanh_",
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


def _unary(keeps_zero: bool) -> Rule:
    def rule(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0]
        v = tr.get(x)
        if not isinstance(out, torch.Tensor) or not isinstance(x, torch.Tensor):
            return
        if v is None:
            tr.propagate_param_ref(x, out)
            return
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
    _unary(isinstance(e, (int, float)) and e > 0)(tr, name, args, kwargs, out)


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
    zeros: list[np.ndarray] = []
    for i, (t, v) in enumerate(zip(operands, values)):
        is_denominator = i == 1 and (name in _DIV or name in _RDIV)
        if v is not None and v.size == size:
            if is_denominator:
                zeros.append(~v.zero)  # a removed denominator is 0: 0/0 in the masked model
            else:
                zeros.append(v.zero)
            continue
        if v is not None:  # a broadcast channel of size 1: it can never be removed
            tr.fix(v.labels, f"broadcast against {size} channels by `{name}`")
            zeros.append(np.zeros(size, dtype=bool))
            continue
        if isinstance(t, torch.Tensor):
            k = pos - (no - t.ndim)
            n = t.shape[k] if k >= 0 else 1
            if n == size and size > 1:
                ref = tr.param_ref(t)
                if ref is None or ref.dim != k:
                    tr.fix(labels, f"combined by `{name}` with a per-channel tensor that is not a parameter")
                    zeros.append(np.zeros(size, dtype=bool))
                    continue
                role = "slice" if (is_denominator or name in _RDIV) else "zero"
                tr.entry(ref.module, ref.tensor, ref.param_dim, labels, role)
                zeros.append(np.full(size, role == "zero"))
                continue
            const_zero = bool(t.numel() > 0 and not torch.any(t).item())
            zeros.append(np.full(size, const_zero and not is_denominator))
            continue
        zeros.append(np.full(size, isinstance(t, (int, float)) and t == 0 and not is_denominator))
    for other in tied[1:]:
        tr.union(labels, other.labels, f"tied by `{name}` to a channel that cannot be removed")
    if name in _MUL:
        zero = zeros[0] | zeros[1]
    elif name in _DIV:
        zero = zeros[0] & zeros[1]
    elif name in _RDIV:
        zero = np.zeros(size, dtype=bool)
    else:
        zero = zeros[0] & zeros[1]
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


def _reshape_map(in_shape: Sequence[int], out_shape: Sequence[int], d: int) -> tuple[int, int] | None:
    """Where channel dim ``d`` of ``in_shape`` lands in ``out_shape`` and how often each repeats.

    Supported: the channel dim kept whole, possibly merged with the dims after it (flatten), with
    any number of size-1 dims added or removed. Splitting the channel dim is not supported.
    """
    before = math.prod(in_shape[:d])
    c = in_shape[d]
    prod = 1
    for j, n in enumerate(out_shape):
        if prod == before and n != 1 and n % c == 0:
            repeat = n // c
            tail = 1
            for m in range(d + 1, len(in_shape) + 1):
                if tail == repeat:
                    return j, repeat
                if m < len(in_shape):
                    tail *= in_shape[m]
            return None
        prod *= n
        if prod > before and before > 0:
            return None
    return None


def _reshape(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    if not isinstance(out, torch.Tensor):
        return
    v = tr.get(x)
    if v is None:
        tr.propagate_param_ref(x, out)
        return
    mapped = _reshape_map(tuple(x.shape), tuple(out.shape), v.dim)
    if mapped is None:
        raise Opaque
    j, repeat = mapped
    tr.put(out, Value(j, np.repeat(v.labels, repeat), np.repeat(v.zero, repeat)), name)


def _permutation(name: str, args: tuple, kwargs: dict, ndim: int) -> list[int]:
    if name == "permute":
        if len(args) == 1:
            dims = kwargs["dims"]
        elif len(args) == 2 and not isinstance(args[1], int):
            dims = args[1]
        else:
            dims = args[1:]
        return [_norm_dim(d, ndim) for d in dims]
    perm = list(range(ndim))
    if name in ("transpose", "transpose_", "swapaxes", "swapdims"):
        d0 = _norm_dim(_arg(args, kwargs, 1, "dim0"), ndim)
        d1 = _norm_dim(_arg(args, kwargs, 2, "dim1"), ndim)
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return perm
    if name in ("t", "T"):
        return perm[::-1]
    if name == "mT":
        perm[-1], perm[-2] = perm[-2], perm[-1]
        return perm
    if name in ("movedim", "moveaxis"):
        src = _arg(args, kwargs, 1, "source")
        dst = _arg(args, kwargs, 2, "destination")
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src = [_norm_dim(s, ndim) for s in src]
        dst = [_norm_dim(s, ndim) for s in dst]
        rest = [i for i in range(ndim) if i not in src]
        result: list[int | None] = [None] * ndim
        for s, t in zip(src, dst):
            result[t] = s
        it = iter(rest)
        return [r if r is not None else next(it) for r in result]
    raise Opaque


def _permute(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None or not isinstance(out, torch.Tensor):
        return
    perm = _permutation(name, args, kwargs, x.ndim)
    tr.put(out, v.moved(perm.index(v.dim)), name)


def _expand(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None or not isinstance(out, torch.Tensor):
        return
    pos = v.dim + out.ndim - x.ndim
    if out.shape[pos] != v.size:
        raise Opaque
    tr.put(out, v.moved(pos), name)


_CONSTANT_CUT = (
    "cut into pieces of constant size by `{name}`: the forward code would cut the slimmed tensor at the "
    "same sizes (torch.chunk, which sizes its pieces from the tensor, can be pruned)"
)


def _getitem(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, index = args[0], args[1]
    if not isinstance(out, torch.Tensor):
        return
    v = tr.get(x)
    if v is None:
        tr.propagate_param_ref(x, out)
        return
    items = index if isinstance(index, tuple) else (index,)
    basic = (type(None), type(Ellipsis), int, slice)
    if any(not isinstance(i, basic) or isinstance(i, bool) for i in items):
        raise Opaque
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in items:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - consumed))
        else:
            expanded.append(i)
    d_in = d_out = 0
    for i in expanded:
        if i is None:
            d_out += 1
            continue
        if d_in == v.dim:
            if isinstance(i, int):
                tr.fix(v.labels[i : i + 1] if i != -1 else v.labels[-1:], "selected alone by indexing")
                return
            if i.indices(v.size) != (0, v.size, 1):
                tr.fix(v.labels, _CONSTANT_CUT.format(name="indexing"))
            tr.put(out, Value(d_out, v.labels[i], v.zero[i]), name)
            return
        d_in += 1
        d_out += 0 if isinstance(i, int) else 1
    tr.put(out, v.moved(v.dim - d_in + d_out), name)


def _split(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None:
        return
    if name == "unbind":
        d = _arg(args, kwargs, 1, "dim", 0)
    elif name in ("chunk", "tensor_split"):
        d = _arg(args, kwargs, 2, "dim", 0)
    else:
        d = _arg(args, kwargs, 2, "dim", 0)
    d = _norm_dim(d, x.ndim)
    outs = list(out)
    if name == "unbind":
        if d == v.dim:
            raise Opaque
        for o in outs:
            tr.put(o, v.moved(v.dim - (d < v.dim)), name)
        return
    if d == v.dim:
        sizes = {o.shape[d] for o in outs}
        if name == "chunk" and len(sizes) == 1 and len(outs) > 1:
            # equal pieces computed from the size: keep them equal by tying channel i of each
            tr.nodes.tie_blocks(v.labels, len(outs), f"`{name}` keeps its pieces equal")
        elif len(outs) > 1:
            tr.fix(v.labels, _CONSTANT_CUT.format(name=name))
    start = 0
    for o in outs:
        if d == v.dim:
            n = o.shape[d]
            tr.put(o, Value(v.dim, v.labels[start : start + n], v.zero[start : start + n]), name)
            start += n
        else:
            tr.put(o, v, name)


def _narrow(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None:
        return
    d = _norm_dim(_arg(args, kwargs, 1, "dim"), x.ndim)
    start = int(_arg(args, kwargs, 2, "start"))
    if start < 0:
        start += x.shape[d]
    n = int(_arg(args, kwargs, 3, "length"))
    if d == v.dim:
        if (start, n) != (0, v.size):
            tr.fix(v.labels, _CONSTANT_CUT.format(name=name))
        tr.put(out, Value(d, v.labels[start : start + n], v.zero[start : start + n]), name)
    else:
        tr.put(out, v, name)


def _cat(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensors = list(_arg(args, kwargs, 0, "tensors"))
    d = _arg(args, kwargs, 1, "dim", kwargs.get("axis", 0))
    values = [tr.get(t) for t in tensors]
    if all(v is None for v in values) or not isinstance(out, torch.Tensor):
        return
    stack = name == "stack"
    d = _norm_dim(d, out.ndim)
    dims = {v.dim for v in values if v is not None}
    if len(dims) > 1:
        raise Opaque
    cd = dims.pop()
    if not stack and cd == d:
        labels = [v.labels if v is not None else np.full(t.shape[d], FIXED) for t, v in zip(tensors, values)]
        zeros = [v.zero if v is not None else np.zeros(t.shape[d], bool) for t, v in zip(tensors, values)]
        tr.put(out, Value(d, np.concatenate(labels).astype(np.int64), np.concatenate(zeros)), name)
        return
    # joined along another dim: channel k of every piece becomes channel k of the result
    first = next(v for v in values if v is not None)
    zero = first.zero.copy()
    for v in values:
        if v is None:
            tr.fix(first.labels, f"joined by `{name}` with a tensor whose channels cannot be removed")
            zero[:] = False
            continue
        tr.union(first.labels, v.labels, f"joined by `{name}` with a channel that cannot be removed")
        zero &= v.zero
    tr.put(out, Value(cd + (1 if stack and d <= cd else 0), first.labels, zero), name)


def _property(tr: _Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    # ``Tensor.T``/``Tensor.data`` arrive as ``__get__`` of a descriptor; the rule is by attribute.
    rule = RULES.get(name)
    if rule is None:
        raise Opaque
    rule(tr, name, args, kwargs, out)


RULES: dict[str, Rule] = {}
RULES.update({n: _unary(True) for n in _KEEPS_ZERO})
RULES.update({n: _unary(False) for n in _LOSES_ZERO})
RULES.update({n: _binary for n in _ADD | _RSUB | _MUL | _DIV | _RDIV})
RULES.update({"data": _unary(True)})
RULES.update(
    {n: _clamp for n in ("clamp", "clamp_", "clip", "clip_", "clamp_min", "clamp_min_", "clamp_max", "clamp_max_")}
)
RULES.update({n: _pow for n in ("pow", "pow_", "__pow__", "__ipow__")})
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
RULES.update(
    {
        n: _reshape
        for n in (
            "view",
            "reshape",
            "flatten",
            "unflatten",
            "squeeze",
            "squeeze_",
            "unsqueeze",
            "unsqueeze_",
            "view_as",
            "reshape_as",
            "ravel",
        )
    }
)
RULES.update(
    {
        n: _permute
        for n in ("permute", "transpose", "transpose_", "swapaxes", "swapdims", "t", "T", "mT", "movedim", "moveaxis")
    }
)
RULES.update({n: _expand for n in ("expand", "expand_as", "broadcast_to")})
RULES["__getitem__"] = _getitem
RULES.update({n: _split for n in ("split", "split_with_sizes", "chunk", "tensor_split", "unbind")})
RULES["narrow"] = _narrow
RULES.update({n: _cat for n in ("cat", "concat", "concatenate", "stack")})
