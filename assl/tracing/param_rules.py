"""How operations on parameters and buffers alone make :class:`~assl.tracing.derived.Derived` tensors.

Each rule maps the dimensions of its derived inputs to those of its outputs: elementwise operations
line them up as broadcasting does, reshapes and permutations move them, reductions and
normalizations *mix* the dimensions they reduce over (a weight standardized over each filter can
lose filters, not the input channels they read). An operation without a rule makes an output the
tracer cannot follow: the parameters it read are pinned wherever they meet channels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._inputs import tensors
from .derived import Axis, Derived, Expr, Leaf, template
from .protocol import Opaque, Tracer, arg, norm_dim
from .shape_rules import CONSTANT_SIZE, RESHAPES, permutation, requested_sizes, reshape_map
from .sizes import SizeInt, user_line

__all__ = ["PARAM_RULES", "derive"]

Dims = list[set[Axis]]
Mapped = tuple[list[tuple[Dims, Dims]], frozenset[Leaf]]
"""Per output: the axes and flattened axes of each dimension; and parameters that became singular."""
ParamRule = Callable[[Tracer, str, tuple, dict, list[torch.Tensor]], Mapped]


def derive(tr: Tracer, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
    """Record what the outputs of an operation on derived tensors (and constants) are computed from."""
    outs = [out] if isinstance(out, torch.Tensor) else [o for o in tensors(out)]
    found = [d for d in (tr.derived(t) for t in tensors((args, kwargs))) if d is not None]
    leaves = frozenset().union(*(d.leaves for d in found))
    why = next((d.why for d in found if d.why), None)
    rule = PARAM_RULES.get(name)
    mapped: Mapped | None = None
    if why is None:
        try:
            if rule is None or kwargs.get("out") is not None:
                raise Opaque
            mapped = rule(tr, name, args, kwargs, outs)
        except Opaque:
            names = ", ".join(f"`{m}.{t}`" for m, t in sorted(leaves))
            how = "takes its values out of torch" if not outs else "is not followed by the tracer"
            why = f"{names} go(es) through `{name}`, which {how} (at {user_line()})"
            tr.poison(leaves, why)
    if not outs:
        return
    singular: frozenset[Any] = frozenset().union(*(d.singular for d in found))
    expr_args, expr_kwargs = template(args, tr.derived), template(kwargs, tr.derived)
    inplace = name.endswith("_") and not name.startswith("__")
    for i, o in enumerate(outs):
        blank: list[set[Any]] = [set() for _ in range(o.ndim)]
        axes, flat = mapped[0][i] if mapped is not None else (blank, [set() for _ in range(o.ndim)])
        expr = Expr(
            func=_cloning(func) if inplace else func,
            args=expr_args,
            kwargs=expr_kwargs,
            index=None if isinstance(out, torch.Tensor) else i,
        )
        extra = mapped[1] if mapped is not None else frozenset()
        d = Derived(
            tuple(frozenset(a) for a in axes), tuple(frozenset(f) for f in flat), leaves, singular | extra, why, expr
        )
        tr.set_derived(o, d)


def _cloning(func: Any) -> Callable[..., Any]:
    """An in-place ``func`` computed again on a copy of its first argument (the original stays as it was)."""

    def call(first: Any, *args: Any, **kwargs: Any) -> Any:
        return func(first.clone() if isinstance(first, torch.Tensor) else first, *args, **kwargs)

    return call


def _dims_of(tr: Tracer, t: Any) -> tuple[Dims, Dims] | None:
    d = tr.derived(t) if isinstance(t, torch.Tensor) else None
    if d is None:
        return None
    return [set(a) for a in d.axes], [set(f) for f in d.flat]


def _mix(tr: Tracer, axes: set[Axis], reason: str) -> None:
    for a in axes:
        tr.mix(a, reason)


# --- elementwise ---------------------------------------------------------------------------

_SINGULAR = {"rsqrt", "rsqrt_", "reciprocal", "reciprocal_", "log", "log_", "log2", "log10", "log1p"}
_DIVISION = {"div", "div_", "__truediv__", "__itruediv__", "true_divide", "divide", "__div__"}
_RDIVISION = {"__rtruediv__", "__rdiv__"}
_POW = {"pow", "pow_", "__pow__", "__ipow__", "float_power"}


def _elementwise(tr: Tracer, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> Mapped:
    """Operands lined up from the right as broadcasting does; every output has their dimensions."""
    if len(outs) != 1:
        raise Opaque
    out = outs[0]
    no = out.ndim
    axes: Dims = [set() for _ in range(no)]
    flat: Dims = [set() for _ in range(no)]
    constant: set[int] = set()
    operands = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    for t in operands:
        if t.ndim > no:
            raise Opaque
        off = no - t.ndim
        dims = _dims_of(tr, t)
        for k in range(t.ndim):
            j = k + off
            if t.shape[k] != out.shape[j]:
                continue  # broadcast: one value for every index
            if dims is not None:
                axes[j] |= dims[0][k]
                flat[j] |= dims[1][k]
            elif t.shape[k] > 1:
                constant.add(j)
    for j in constant:
        _mix(tr, axes[j] | flat[j], f"combined by `{name}` with a tensor of that length that is not a parameter")
    return [(axes, flat)], _singular(tr, name, args, kwargs)


def _singular(tr: Tracer, name: str, args: tuple, kwargs: dict) -> frozenset[Leaf]:
    """Parameters this operation divides by, or takes the log, reciprocal or a negative power of."""
    hit: list[Any] = []
    if name in _SINGULAR:
        hit = [args[0]]
    elif name in _DIVISION:
        hit = [arg(args, kwargs, 1, "other")]
    elif name in _RDIVISION:
        hit = [args[0]]
    elif name in _POW:
        e = arg(args, kwargs, 1, "exponent")
        if isinstance(e, torch.Tensor) or (isinstance(e, (int, float)) and e < 0):
            hit = [args[0]]
    out: set[Leaf] = set()
    for t in hit:
        d = tr.derived(t) if isinstance(t, torch.Tensor) else None
        if d is not None:
            out |= d.leaves
    return frozenset(out)


def _cast(tr: Tracer, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> Mapped:
    """``w.to(x)``, ``w.type_as(x)``: the other tensor gives a dtype or a device, nothing else."""
    dims = _dims_of(tr, args[0])
    if dims is None or len(outs) != 1 or outs[0].shape != args[0].shape:
        raise Opaque
    return [dims], frozenset()


# --- shapes --------------------------------------------------------------------------------


def _reshape(tr: Tracer, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> Mapped:
    x, out = args[0], outs[0]
    dims = _dims_of(tr, x)
    if dims is None or len(outs) != 1:
        raise Opaque
    axes: Dims = [set() for _ in range(out.ndim)]
    flat: Dims = [set() for _ in range(out.ndim)]
    if name in ("view_as", "reshape_as"):
        other = arg(args, kwargs, 1, "other")
        od = tr.derived(other) if isinstance(other, torch.Tensor) else None
        ov = tr.get(other)
        sizes: list[Any] | None = [
            SizeInt(n, (ov.labels,) if ov is not None and ov.dim == j else (), tuple(od.axes[j]) if od else ())
            for j, n in enumerate(out.shape)
        ]
    else:
        sizes = requested_sizes(name, args, kwargs, x.ndim, out.ndim)
    for k in range(x.ndim):
        moving = dims[0][k] | dims[1][k]
        if not moving:
            continue
        mapped = reshape_map(tuple(x.shape), tuple(out.shape), k)
        if mapped is None:
            _mix(tr, moving, f"reshaped by `{name}` into other dimensions (at {user_line()})")
            continue
        j, repeat = mapped
        if repeat > 1:
            flat[j] |= moving
            continue
        axes[j] |= dims[0][k]
        flat[j] |= dims[1][k]
        if sizes is not None:
            _check_size(tr, name, sizes[j], dims[0][k])
    return [(axes, flat)], frozenset()


def _check_size(tr: Tracer, name: str, size: Any, axes: set[Axis]) -> None:
    """A parameter reshaped to a size written in the code cannot be cut: mix its dimensions."""
    if size is None or not axes:
        return
    if isinstance(size, SizeInt):
        if set(size.axes) & axes:
            return
        if size.sources:  # the length of traced channels: the parameter follows them
            for a in axes:
                for s in size.sources:
                    tr.tie_axis(a, s)
            return
    elif int(size) == -1:
        return
    _mix(tr, axes, CONSTANT_SIZE.format(name=name, size=size) + f" (at {user_line()})")


def _expand(tr: Tracer, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> Mapped:
    x, out = args[0], outs[0]
    dims = _dims_of(tr, x)
    if dims is None:
        raise Opaque
    off = out.ndim - x.ndim
    axes: Dims = [set() for _ in range(out.ndim)]
    flat: Dims = [set() for _ in range(out.ndim)]
    for k in range(x.ndim):
        if x.shape[k] == out.shape[k + off]:
            axes[k + off] = dims[0][k]
            flat[k + off] = dims[1][k]
    return [(axes, flat)], frozenset()


def _permute(tr: Tracer, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> Mapped:
    x = args[0]
    dims = _dims_of(tr, x)
    if dims is None:
        raise Opaque
    perm = permutation(name, args, kwargs, x.ndim)
    return [([dims[0][p] for p in perm], [dims[1][p] for p in perm])], frozenset()


def _getitem(tr: Tracer, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> Mapped:
    x, index = args[0], args[1]
    dims = _dims_of(tr, x)
    if dims is None:
        raise Opaque
    items = index if isinstance(index, tuple) else (index,)
    if any(not isinstance(i, (type(None), type(Ellipsis), int, slice)) or isinstance(i, bool) for i in items):
        raise Opaque
    consumed = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for i in items:
        expanded.extend([slice(None)] * (x.ndim - consumed) if i is Ellipsis else [i])
    expanded.extend([slice(None)] * (x.ndim - consumed - expanded.count(Ellipsis)) if Ellipsis not in items else [])
    axes: Dims = []
    flat: Dims = []
    k = 0
    for i in expanded:
        if i is None:
            axes.append(set())
            flat.append(set())
            continue
        if k >= x.ndim:
            break
        moving = dims[0][k] | dims[1][k]
        if isinstance(i, int):
            _mix(tr, moving, f"indexed at a constant position (at {user_line()})")
        else:
            if i.indices(x.shape[k]) != (0, x.shape[k], 1):
                _mix(tr, moving, f"cut to a constant range by indexing (at {user_line()})")
            axes.append(dims[0][k])
            flat.append(dims[1][k])
        k += 1
    while len(axes) < outs[0].ndim:
        axes.append(dims[0][k] if k < x.ndim else set())
        flat.append(dims[1][k] if k < x.ndim else set())
        k += 1
    if len(axes) != outs[0].ndim:
        raise Opaque
    return [(axes, flat)], frozenset()


# --- reductions and normalizations ---------------------------------------------------------


def _reduce(tr: Tracer, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> Mapped:
    x = args[0]
    dims = _dims_of(tr, x)
    if dims is None:
        raise Opaque
    d = arg(args, kwargs, 2 if name == "norm" else 1, "dim", kwargs.get("axis"))
    reduced = list(range(x.ndim)) if d is None else [norm_dim(i, x.ndim) for i in ([d] if isinstance(d, int) else d)]
    why = f"reduced over by `{name}`, which mixes them (at {user_line()})"
    for k in reduced:
        _mix(tr, dims[0][k] | dims[1][k], why)
    result = []
    for o in outs:
        keep = o.ndim == x.ndim
        axes = [dims[0][k] if k not in reduced else set() for k in range(x.ndim) if keep or k not in reduced]
        flat = [dims[1][k] if k not in reduced else set() for k in range(x.ndim) if keep or k not in reduced]
        if len(axes) != o.ndim:
            raise Opaque
        result.append((axes, flat))
    return result, frozenset()


def _normalize(tr: Tracer, name: str, args: tuple, kwargs: dict, outs: list[torch.Tensor]) -> Mapped:
    """``batch_norm``/``instance_norm`` (per dim 1), ``group_norm``, ``layer_norm`` of a derived tensor."""
    x, out = args[0], outs[0]
    dims = _dims_of(tr, x)
    if dims is None or x.ndim < 2:
        raise Opaque
    why = f"normalized over by `{name}`, which mixes them (at {user_line()})"
    kept: set[int] = set()
    if name in ("batch_norm", "instance_norm"):
        kept = {1}
        affine = [
            arg(args, kwargs, i, n) for i, n in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias"))
        ]
        align = 1
    elif name == "group_norm":
        groups = arg(args, kwargs, 1, "num_groups")
        kept = {1} if groups == x.shape[1] else set()
        affine = [arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")]
        align = 1
    else:  # layer_norm
        shape = arg(args, kwargs, 1, "normalized_shape")
        n = 1 if isinstance(shape, int) else len(shape)
        kept = set(range(x.ndim - n))
        affine = [arg(args, kwargs, 2, "weight"), arg(args, kwargs, 3, "bias")]
        align = x.ndim - n
    axes: Dims = [set(dims[0][k]) if k in kept else set() for k in range(x.ndim)]
    flat: Dims = [set(dims[1][k]) if k in kept else set() for k in range(x.ndim)]
    for k in range(x.ndim):
        if k not in kept:
            _mix(tr, dims[0][k] | dims[1][k], why)
    for p in affine:
        pd = _dims_of(tr, p)
        if pd is None:
            continue
        for k in range(len(pd[0])):
            j = align + k
            if j < out.ndim:
                axes[j] |= pd[0][k]
                flat[j] |= pd[1][k]
    singular: frozenset[Any] = frozenset()
    var = arg(args, kwargs, 2, "running_var") if name in ("batch_norm", "instance_norm") else None
    vd = tr.derived(var) if isinstance(var, torch.Tensor) else None
    if vd is not None:
        singular = vd.leaves
    return [(axes, flat)], singular


PARAM_RULES: dict[str, ParamRule] = {}
_ELEMENTWISE_NAMES = (
    "add add_ __add__ __radd__ __iadd__ sub sub_ __sub__ __rsub__ __isub__ rsub subtract mul mul_ __mul__ __rmul__ "
    "__imul__ multiply div div_ __truediv__ __rtruediv__ __itruediv__ true_divide divide __div__ __rdiv__ pow pow_ "
    "__pow__ __ipow__ __rpow__ float_power maximum minimum fmax fmin rsqrt rsqrt_ sqrt sqrt_ reciprocal reciprocal_ "
    "exp exp_ log log_ log2 log10 log1p expm1 abs abs_ __abs__ neg neg_ __neg__ square sign sigmoid sigmoid_ tanh "
    "tanh_ relu relu_ softplus clamp clamp_ clip clip_ clamp_min clamp_min_ clamp_max clamp_max_ contiguous clone "
    "detach detach_ to type float double half bfloat16 cpu cuda data requires_grad_ positive where lerp addcmul "
    "addcdiv zeros_like ones_like empty_like full_like exp2 sin cos erf gelu silu hardsigmoid hardswish"
)
PARAM_RULES.update({n: _elementwise for n in _ELEMENTWISE_NAMES.split()})
PARAM_RULES.update({n: _cast for n in ("to", "type_as")})
PARAM_RULES.update({n: _reshape for n in RESHAPES})
PARAM_RULES.update({n: _expand for n in ("expand", "expand_as", "broadcast_to")})
PARAM_RULES.update(
    {n: _permute for n in "permute transpose transpose_ swapaxes swapdims t T mT movedim moveaxis".split()}
)
PARAM_RULES["__getitem__"] = _getitem
PARAM_RULES.update(
    {n: _reduce for n in "mean sum amax amin std var norm prod nanmean nansum var_mean std_mean logsumexp".split()}
)
PARAM_RULES.update({n: _normalize for n in ("batch_norm", "instance_norm", "group_norm", "layer_norm")})
