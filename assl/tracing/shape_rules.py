"""Rules for operations that move the channel dimension: reshape, permute, index, split, cat.

A channel keeps its node wherever it moves; pieces of constant size (``split`` with sizes,
``x[:, a:b]``) pin the channels they cut, because the forward code would cut the slimmed tensor at
the same sizes. ``chunk`` sizes its pieces from the tensor, so it only ties them.

Sizes given to ``view``/``reshape``/``unflatten``/``expand`` follow the same rule: the size the
channels land in must be ``-1`` or computed from a traced channel size (a :class:`SizeInt` that
``x.size(1)``, ``x.shape`` or ``x.numel()`` returned while tracing); a size written in the forward
code (``h.reshape(b, 8 * 144)``) would not fit the slimmed tensor, so it pins the channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .channels import FIXED, Value
from .protocol import Opaque, Rule, Tracer
from .protocol import arg as _arg
from .protocol import norm_dim as _norm_dim
from .sizes import SizeInt


def reshape_map(in_shape: Sequence[int], out_shape: Sequence[int], d: int) -> tuple[int, int] | None:
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


def _labels_of(tr: Tracer, x: Any, out: Any) -> Value | None:
    """The labels of ``x`` when ``out`` is a tensor."""
    if not isinstance(out, torch.Tensor):
        return None
    return tr.get(x)


def _reshape(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = _labels_of(tr, x, out)
    if v is None:
        return
    mapped = reshape_map(tuple(x.shape), tuple(out.shape), v.dim)
    if mapped is None:
        raise Opaque
    j, repeat = mapped
    labels = np.repeat(v.labels, repeat)
    if name in ("view_as", "reshape_as"):
        _follow_shape_of(tr, name, _arg(args, kwargs, 1, "other"), j, labels)
    else:
        _check_size(tr, name, requested_sizes(name, args, kwargs, x.ndim, out.ndim), j, v)
    tr.put(out, Value(j, labels, np.repeat(v.zero, repeat)), name)


CONSTANT_SIZE = (
    "reshaped by `{name}` to a size written in the forward code ({size}): the slimmed tensor would not fit "
    "it; compute the size from the tensor (x.size(1), x.shape, -1) to let these channels go"
)


def requested_sizes(name: str, args: tuple, kwargs: dict, in_ndim: int, out_ndim: int) -> list[Any] | None:
    """The sizes the forward code asked for, one per output dimension (None: taken from the tensor)."""
    if name in ("view", "reshape", "expand", "broadcast_to"):
        rest: Any = args[1:]
        if len(rest) == 1 and not isinstance(rest[0], int):
            rest = rest[0]
        elif not rest:
            rest = kwargs.get("shape", kwargs.get("size"))
        if isinstance(rest, torch.dtype) or rest is None:
            return None
        sizes = list(rest)
        return sizes if len(sizes) == out_ndim else None
    if name == "unflatten":
        d = _norm_dim(_arg(args, kwargs, 1, "dim"), in_ndim)
        sizes = list(_arg(args, kwargs, 2, "sizes"))
        return [None] * d + sizes + [None] * (in_ndim - d - 1)
    return None  # flatten, squeeze, unsqueeze, ravel: every size comes from the tensor


def _check_size(tr: Tracer, name: str, sizes: list[Any] | None, j: int, v: Value) -> None:
    """Pin the channels unless the size they land in (``sizes[j]``) follows the tensor."""
    if sizes is None:
        return
    size = sizes[j]
    if size is None or (size == -1 and not isinstance(size, SizeInt)):
        return
    if isinstance(size, SizeInt):
        same = [s for s in size.sources if len(s) == v.size]
        if same:  # read from a tensor with as many channels: both must lose the same ones
            tr.union(same[0], v.labels, f"sized by `{name}` after a channel that cannot be removed")
            return
    tr.fix(v.labels, CONSTANT_SIZE.format(name=name, size=size))


def _follow_shape_of(tr: Tracer, name: str, other: Any, j: int, labels: np.ndarray) -> None:
    """``x.view_as(other)``: x's channels land where other's are, and must go with them."""
    w = tr.get(other)
    if w is not None and w.dim == j and w.size == len(labels):
        tr.union(w.labels, labels, f"shaped by `{name}` like a channel that cannot be removed")
    else:
        tr.fix(labels, CONSTANT_SIZE.format(name=name, size="the shape of a tensor whose channels stay"))


def permutation(name: str, args: tuple, kwargs: dict, ndim: int) -> list[int]:
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


def _permute(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None or not isinstance(out, torch.Tensor):
        return
    perm = permutation(name, args, kwargs, x.ndim)
    tr.put(out, v.moved(perm.index(v.dim)), name)


def _expand(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None or not isinstance(out, torch.Tensor):
        return
    pos = v.dim + out.ndim - x.ndim
    if out.shape[pos] != v.size:
        raise Opaque
    if name == "expand_as":
        _follow_shape_of(tr, name, _arg(args, kwargs, 1, "other"), pos, v.labels)
    else:
        _check_size(tr, name, requested_sizes(name, args, kwargs, x.ndim, out.ndim), pos, v)
    tr.put(out, v.moved(pos), name)


_CONSTANT_CUT = (
    "cut into pieces of constant size by `{name}`: the forward code would cut the slimmed tensor at the "
    "same sizes (torch.chunk, which sizes its pieces from the tensor, can be pruned)"
)


def _getitem(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x, index = args[0], args[1]
    v = _labels_of(tr, x, out)
    if v is None:
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
                # the index is a constant: removing any channel shifts what it selects
                tr.fix(v.labels, "one channel selected by a constant index")
                return
            if i.indices(v.size) != (0, v.size, 1):
                tr.fix(v.labels, _CONSTANT_CUT.format(name="indexing"))
            tr.put(out, Value(d_out, v.labels[i], v.zero[i]), name)
            return
        d_in += 1
        d_out += 0 if isinstance(i, int) else 1
    tr.put(out, v.moved(v.dim - d_in + d_out), name)


def _split(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
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
        elif name != "chunk" or len(outs) > 1:  # sizes given by the forward code, even one piece
            tr.fix(v.labels, _CONSTANT_CUT.format(name=name))
    start = 0
    for o in outs:
        if d == v.dim:
            n = o.shape[d]
            tr.put(o, Value(v.dim, v.labels[start : start + n], v.zero[start : start + n]), name)
            start += n
        else:
            tr.put(o, v, name)


def _narrow(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None:
        return
    d = _norm_dim(_arg(args, kwargs, 1, "dim"), x.ndim)
    start = int(_arg(args, kwargs, 2, "start"))
    if start < 0:
        start += x.shape[d]
    n = int(_arg(args, kwargs, 3, "length"))
    if d == v.dim:  # start and length are constants of the forward code, even over the full width
        tr.fix(v.labels, _CONSTANT_CUT.format(name=name))
        tr.put(out, Value(d, v.labels[start : start + n], v.zero[start : start + n]), name)
    else:
        tr.put(out, v, name)


def _cat(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
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


RESHAPES = (
    "view", "reshape", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "view_as",
    "reshape_as", "ravel",
)  # fmt: skip
"""Tensor methods and functions that reshape: the channel dimension moves or merges with others."""

SHAPE_RULES: dict[str, Rule] = {}
SHAPE_RULES.update({n: _reshape for n in RESHAPES})
SHAPE_RULES.update(
    {
        n: _permute
        for n in ("permute", "transpose", "transpose_", "swapaxes", "swapdims", "t", "T", "mT", "movedim", "moveaxis")
    }
)
SHAPE_RULES.update({n: _expand for n in ("expand", "expand_as", "broadcast_to")})
SHAPE_RULES["__getitem__"] = _getitem
SHAPE_RULES.update({n: _split for n in ("split", "split_with_sizes", "chunk", "tensor_split", "unbind")})
SHAPE_RULES["narrow"] = _narrow
SHAPE_RULES.update({n: _cat for n in ("cat", "concat", "concatenate", "stack")})
