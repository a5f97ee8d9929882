"""Tensors computed from the model's own parameters and buffers, followed along their dimensions.

A layer whose forward the tracer follows computes with its tensors before it meets the input: the
reciprocal square root of a running variance, a weight standardized over each filter and times a
gain, a layer scale reshaped to ``(1, C, 1, 1)``. Every parameter and buffer is a :class:`Derived`
*leaf*; each operation on derived tensors alone (and constants) makes a new one that knows, per
dimension, which parameter dimensions run along it (:data:`Axis`), and how to compute it again with
some parameters zeroed (:class:`Expr`), which is what the masked model holds for removed channels.

When a derived tensor meets traced channels (multiplied into an activation, given to a convolution
as its weight), the tracer *binds* the dimension that lines up with the channels: every parameter
dimension along it is cut with those channels. A parameter dimension that an operation *mixes*
(a mean over a filter's input channels, a reshape to a size written in the code, an operation the
tracer does not follow) cannot be cut exactly: the tracer records it (``Tracer.mix``) and pins
whatever channels it is bound to, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from .sizes import SizeInt

__all__ = ["Axis", "Binding", "Derived", "Expr", "Leaf", "axis_name", "bind", "leaf", "per_channel", "template"]

Axis = tuple[str, str, int]
"""One dimension of a parameter or buffer: (module, tensor name, dimension)."""

Leaf = tuple[str, str]
"""A parameter or buffer: (module, tensor name)."""


class Expr:
    """How to compute a derived tensor again from its parameters, some of them zeroed.

    A leaf holds its tensor; any other node holds the torch function, its arguments (derived
    tensors among them replaced by their ``Expr``) and which output it is.
    """

    __slots__ = ("args", "func", "index", "kwargs", "leaf", "tensor")

    def __init__(
        self,
        *,
        leaf: Leaf | None = None,
        tensor: torch.Tensor | None = None,
        func: Callable[..., Any] | None = None,
        args: tuple = (),
        kwargs: dict | None = None,
        index: int | None = None,
    ) -> None:
        self.leaf = leaf
        self.tensor = tensor
        self.func = func
        self.args = args
        self.kwargs = kwargs or {}
        self.index = index

    def value(self, zeroed: frozenset[Leaf], memo: dict[int, Any]) -> Any:
        """The tensor with the parameters of ``zeroed`` set to zero (everything else as traced)."""
        key = id(self)
        if key in memo:
            return memo[key]
        if self.leaf is not None:
            t = self.tensor
            assert t is not None
            out: Any = torch.zeros_like(t) if self.leaf in zeroed else t.detach().clone()
        else:
            assert self.func is not None
            args = _substitute(self.args, zeroed, memo)
            kwargs = _substitute(self.kwargs, zeroed, memo)
            out = self.func(*args, **kwargs)
            if self.index is not None:
                out = out[self.index]
        memo[key] = out
        return out


def _substitute(obj: Any, zeroed: frozenset[Leaf], memo: dict[int, Any]) -> Any:
    if isinstance(obj, Expr):
        return obj.value(zeroed, memo)
    if isinstance(obj, tuple):
        return tuple(_substitute(o, zeroed, memo) for o in obj)
    if isinstance(obj, list):
        return [_substitute(o, zeroed, memo) for o in obj]
    if isinstance(obj, dict):
        return {k: _substitute(v, zeroed, memo) for k, v in obj.items()}
    if isinstance(obj, SizeInt):
        return int.__int__(obj)
    return obj


def template(obj: Any, derived: Callable[[Any], Derived | None]) -> Any:
    """``obj`` (arguments of a call) with every derived tensor replaced by its :class:`Expr`."""
    if isinstance(obj, torch.Tensor):
        d = derived(obj)
        return d.expr if d is not None else obj
    if isinstance(obj, tuple):
        return tuple(template(o, derived) for o in obj)
    if isinstance(obj, list):
        return [template(o, derived) for o in obj]
    if isinstance(obj, dict):
        return {k: template(v, derived) for k, v in obj.items()}
    return obj


@dataclass(eq=False)
class Derived:
    """What the tracer knows of a tensor computed from parameters and buffers alone.

    Attributes:
        axes: Per dimension of the tensor, the parameter dimensions that run along it.
        flat: Per dimension, parameter dimensions flattened into it together with others (a
            ``(O, I, k, k)`` weight reshaped to ``(1, O, I*k*k)``): they cannot be cut as they are.
        leaves: Every parameter and buffer it is computed from.
        singular: Those that reach a divisor, ``rsqrt``, ``log`` or a negative power: the masked
            model only cuts them, never zeroes them (a zero there would give inf or NaN).
        why: Set when it went through an operation the tracer does not follow.
        expr: How to compute it again with some parameters zeroed.
    """

    axes: tuple[frozenset[Axis], ...]
    flat: tuple[frozenset[Axis], ...]
    leaves: frozenset[Leaf]
    singular: frozenset[Leaf]
    why: str | None
    expr: Expr
    _masked: Any = field(default=None, repr=False)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    def masked(self, zeroed: frozenset[Leaf]) -> torch.Tensor | None:
        """Its value with the parameters of ``zeroed`` set to zero (None if it cannot be computed)."""
        cache = self._masked if self._masked is not None else {}
        self._masked = cache
        if zeroed not in cache:
            try:
                with torch.no_grad():
                    cache[zeroed] = self.expr.value(zeroed, {})
            except Exception:  # an operation that cannot run on the zeroed values: nothing is known
                cache[zeroed] = None
        value = cache[zeroed]
        return value if isinstance(value, torch.Tensor) else None


class Binding(NamedTuple):
    """The parameter dimensions along one dimension of a derived tensor that meets channels.

    Attributes:
        axes: ``(module, tensor, dim, role)``: cut with the channels; ``"zero"`` where the masked
            model zeroes them, ``"slice"`` where it keeps their values.
        zero: Per channel, whether the tensor is zero there in the masked model once the channel
            is removed (for ``zeroed=False``: whether it is non-zero everywhere, safe to divide by).
        why: Set when the parameters cannot be cut along these channels: they stay, for this reason.
    """

    axes: list[tuple[str, str, int, str]]
    zero: np.ndarray | None
    why: str | None


def axis_name(axis: Axis) -> str:
    """A parameter dimension as messages name it: ``module.tensor`` and the dim."""
    return f"`{axis[0]}.{axis[1]}` (dim {axis[2]})" if axis[0] else f"`{axis[1]}` (dim {axis[2]})"


def bind(
    d: Derived, dim: int, size: int, mixed: Callable[[Axis], str | None], *, zeroed: bool = True, values: bool = True
) -> Binding:
    """Bind dimension ``dim`` (of length ``size``) of ``d`` to channels.

    Args:
        mixed: Why a parameter dimension cannot be cut (it is mixed, see ``Tracer.mix``), or None.
        zeroed: Try zeroing the parameters along ``dim`` in the masked model (first all of them,
            then all but those that reach a divisor or ``rsqrt``); with False they keep their values.
        values: Compute the masked values; with False only check that the dimension can be cut.
    """
    if d.why:
        return Binding([], None, d.why)
    axes = d.axes[dim]
    for a in sorted(d.flat[dim]):
        return Binding([], None, f"{axis_name(a)} is flattened together with other dimensions, so it cannot be cut")
    if not axes:
        return Binding([], None, None)
    for a in sorted(axes):
        why = mixed(a)
        if why:
            return Binding([], None, why)
    leaves = frozenset(a[:2] for a in axes)
    if not values:
        return Binding([(*a, "slice") for a in sorted(axes)], None, None)
    attempts = [leaves, leaves - d.singular] if zeroed else [frozenset()]
    for z in dict.fromkeys(attempts):
        m = d.masked(z)
        if m is None or m.ndim != d.ndim or m.shape[dim] != size:
            continue
        zero, finite = per_channel(m, dim)
        if not finite.all():
            continue
        if not zeroed:
            zero = ~_any_zero(m, dim)
        roles = [(*a, "zero" if a[:2] in z else "slice") for a in sorted(axes)]
        return Binding(roles, zero, None)
    names = ", ".join(axis_name(a) for a in sorted(axes))
    return Binding([], None, f"computed from {names} into a value that would be inf or NaN once removed")


def _any_zero(t: torch.Tensor, dim: int) -> np.ndarray:
    moved = t.detach().movedim(dim, 0).reshape(t.shape[dim], -1)
    return (moved == 0).any(dim=1).cpu().numpy()


def leaf(module: str, tensor: str, t: torch.Tensor) -> Derived:
    """A parameter or buffer itself: each of its dimensions longer than 1 is an axis."""
    axes = tuple(frozenset({(module, tensor, d)}) if n > 1 else frozenset() for d, n in enumerate(t.shape))
    name = (module, tensor)
    return Derived(
        axes, tuple(frozenset() for _ in axes), frozenset({name}), frozenset(), None, Expr(leaf=name, tensor=t)
    )


def per_channel(t: torch.Tensor, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per index along ``dim``: whether every value there is zero, and whether every one is finite."""
    moved = t.detach().movedim(dim, 0).reshape(t.shape[dim], -1)
    zero = (moved == 0).all(dim=1).cpu().numpy()
    finite = torch.isfinite(moved).all(dim=1).cpu().numpy()
    return zero, finite
