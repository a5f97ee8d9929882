"""Numbers read from the shapes of traced tensors: followed where they are sizes, pinned where values.

While tracing, ``x.size(1)``, ``x.shape``, ``x.numel()`` and ``len(x)`` of a traced tensor return a
:class:`SizeInt` in place of a plain ``int`` at the channels' position: it remembers the channel
labels it counts (``sources``) through ``+ - * // % **``. Size attributes of a layer whose forward
the tracer follows (``out_channels``, ``num_features``, ...) and the shapes of its parameters are
``SizeInt`` too, remembering the parameter dimension they count (``axes``). A reshape can then tell
``x.view(b, c * h * w)`` with ``c = x.size(1)``, which follows a slimmed tensor, from
``x.view(b, 1152)``, which does not.

A channel count used as a *number* does not follow slimming: ``h * c ** -0.5`` or ``if c == 8:``
computes something else once channels are gone. Such uses report to the tracer (``sink``), which
pins the channels counted, naming the line of the forward code:

* arithmetic that leaves the integers (``c ** -0.5``, ``c / 4``) gives a :class:`SizeFloat`, which
  remembers the same; ``int()``, ``float()``, ``bool()`` and comparisons report;
* a ``SizeInt`` or ``SizeFloat`` given to a torch operation as a value (``h * c``, ``torch.full(s, c)``)
  is reported by the tracer, which sees every operation;
* one that reaches the model's outputs too.

``a == b`` of two sizes that are equal reports nothing when both count channels: the tracer ties
them instead, so the two counts stay equal after slimming.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["QUIET", "SIZE_OPS", "Sink", "SizeFloat", "SizeInt", "is_size", "numbers_in", "sizes_used", "user_line"]

Axis = tuple[str, str, int]
"""A dimension of a parameter or buffer: module, tensor name, dimension."""

Sink = Callable[[Any, str], None]
"""What a size calls with itself and a reason when it is used as a number."""

QUIET = [0]
"""Above zero while the tracer itself computes: uses of sizes then report nothing."""

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TORCH = os.path.dirname(os.path.abspath(sys.modules["torch"].__file__ or "")) if "torch" in sys.modules else ""


def _internal(path: str) -> bool:
    path = os.path.abspath(path)
    return path.startswith(_PACKAGE) or bool(_TORCH and path.startswith(_TORCH))


def user_line() -> str:
    """``file.py:line`` of the innermost frame outside this library and torch: the forward code."""
    frame = sys._getframe(1)
    while frame is not None:
        path = frame.f_code.co_filename
        if not _internal(path) and "<frozen" not in path:
            return f"{os.path.basename(path)}:{frame.f_lineno}"
        frame = frame.f_back  # type: ignore[assignment]
    return "an unknown line"


class _Counted:
    """What :class:`SizeInt` and :class:`SizeFloat` share: what they count and whom they tell."""

    sources: tuple[np.ndarray, ...]
    axes: tuple[Axis, ...]
    sink: Sink | None

    def _report(self, how: str) -> None:
        if self.sink is None or QUIET[0] or not (self.sources or self.axes):
            return
        if _internal(sys._getframe(2).f_code.co_filename):  # torch's own code (a layer's repr): not the model's
            return
        self.sink(self, f"a channel count is {how} at {user_line()}")

    def _merge(self, others: tuple[object, ...]) -> tuple[tuple[np.ndarray, ...], tuple[Axis, ...], Sink | None]:
        sources, axes, sink = self.sources, self.axes, self.sink
        for o in others:
            if isinstance(o, _Counted):
                sources += o.sources
                axes += o.axes
                sink = sink or o.sink
        return sources, axes, sink


def is_size(x: object) -> bool:
    """Whether ``x`` is a number that counts traced channels or parameter entries."""
    return isinstance(x, _Counted) and bool(x.sources or x.axes)


class SizeInt(_Counted, int):
    """A size the forward code read from a traced tensor's channel dimension, or computed from one.

    Behaves as an ``int``. Arithmetic that stays in the integers keeps ``sources`` (the channel
    labels it counts) and ``axes`` (the parameter dimensions it counts); true division and negative
    powers give a :class:`SizeFloat`. Copies and pickles of a ``SizeInt`` are plain ints.
    """

    def __new__(
        cls, value: int, sources: tuple[np.ndarray, ...] = (), axes: tuple[Axis, ...] = (), sink: Sink | None = None
    ) -> SizeInt:
        obj = super().__new__(cls, value)
        obj.sources = sources
        obj.axes = axes
        obj.sink = sink
        return obj

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return int, (int.__int__(self),)

    __hash__ = int.__hash__

    def __int__(self) -> int:
        self._report("converted by int()")
        return int.__int__(self)

    def __float__(self) -> float:
        self._report("converted to a float")
        return int.__float__(self)

    def __bool__(self) -> bool:
        self._report("used as a condition")
        return int.__bool__(self)


class SizeFloat(_Counted, float):
    """A :class:`SizeInt` after arithmetic that left the integers (``c ** -0.5``, ``c / 4``)."""

    def __new__(
        cls, value: float, sources: tuple[np.ndarray, ...] = (), axes: tuple[Axis, ...] = (), sink: Sink | None = None
    ) -> SizeFloat:
        obj = super().__new__(cls, value)
        obj.sources = sources
        obj.axes = axes
        obj.sink = sink
        return obj

    def __reduce__(self) -> tuple[type, tuple[float]]:
        return float, (float.__float__(self),)

    __hash__ = float.__hash__

    def __int__(self) -> int:
        self._report("converted by int()")
        return float.__int__(self)

    def __float__(self) -> float:
        self._report("converted by float()")
        return float.__float__(self)

    def __bool__(self) -> bool:
        self._report("used as a condition")
        return float.__bool__(self)

    def __floor__(self) -> SizeInt:
        return SizeInt(math.floor(float.__float__(self)), self.sources, self.axes, self.sink)

    def __ceil__(self) -> SizeInt:
        return SizeInt(math.ceil(float.__float__(self)), self.sources, self.axes, self.sink)

    def __trunc__(self) -> SizeInt:
        return SizeInt(math.trunc(float.__float__(self)), self.sources, self.axes, self.sink)

    def __round__(self, ndigits: int | None = None) -> Any:  # type: ignore[override]  # a size stays a size
        if ndigits is None:
            return SizeInt(round(float.__float__(self)), self.sources, self.axes, self.sink)
        return SizeFloat(round(float.__float__(self), ndigits), self.sources, self.axes, self.sink)


def _arith(base: type, name: str) -> Callable[..., object]:
    op = getattr(base, name)

    as_float = getattr(float, name)

    def method(self: _Counted, *others: object) -> object:
        out = op(self, *others)
        if out is NotImplemented and base is int and any(isinstance(o, float) for o in others):
            out = as_float(int.__float__(self), *others)  # type: ignore[arg-type]  # c * 0.5, c ** -0.5: not left to float's methods
        if out is NotImplemented or isinstance(out, bool):
            return out
        sources, axes, sink = self._merge(others)
        if isinstance(out, int):
            return SizeInt(out, sources, axes, sink)
        if isinstance(out, float):
            return SizeFloat(out, sources, axes, sink)
        return out

    method.__name__ = name
    return method


_COMPARE = {"__eq__": "==", "__ne__": "!=", "__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">="}


def _compare(base: type, name: str) -> Callable[..., object]:
    op = getattr(base, name)

    def method(self: _Counted, other: object) -> object:
        out = op(self, other)
        if out is NotImplemented or QUIET[0]:
            return out
        if name in ("__eq__", "__ne__") and isinstance(other, _Counted) and self.sink is not None:
            if op(self, other) is (name == "__eq__"):  # equal sizes: stay equal if tied together
                tie = getattr(self.sink, "tie", None)
                if tie is not None and is_size(self) and is_size(other):
                    tie(self, other)
                    return out
        self._report(f"compared by `{_COMPARE[name]}`")
        if isinstance(other, _Counted):
            other._report(f"compared by `{_COMPARE[name]}`")  # same frame depth: called from here
        return out

    method.__name__ = name
    return method


_ARITH = (
    "__add__",
    "__radd__",
    "__sub__",
    "__rsub__",
    "__mul__",
    "__rmul__",
    "__floordiv__",
    "__rfloordiv__",
    "__truediv__",
    "__rtruediv__",
    "__mod__",
    "__rmod__",
    "__pow__",
    "__rpow__",
    "__neg__",
    "__pos__",
    "__abs__",
    "__divmod__",
)

for _base, _cls in ((int, SizeInt), (float, SizeFloat)):
    for _op in _ARITH:
        setattr(_cls, _op, _arith(_base, _op))
    for _op in _COMPARE:
        setattr(_cls, _op, _compare(_base, _op))


SIZE_OPS = frozenset(
    """view reshape expand broadcast_to unflatten flatten split split_with_sizes chunk tensor_split narrow repeat tile
    repeat_interleave new_zeros new_ones new_empty zeros ones empty rand randn __getitem__ __setitem__ interpolate
    upsample upsample_nearest upsample_bilinear adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d
    adaptive_max_pool1d adaptive_max_pool2d adaptive_max_pool3d adaptive_max_pool1d_with_indices
    adaptive_max_pool2d_with_indices adaptive_max_pool3d_with_indices layer_norm group_norm pad permute transpose
    movedim moveaxis size unfold fold conv1d conv2d conv3d conv_transpose1d conv_transpose2d conv_transpose3d""".split()
)
"""Operations whose integer arguments are sizes, dims or indices: a size read from a tensor is at home there
(the shape rules check it). In any other operation it is a value."""

_FILL = {"full": 1, "new_full": 2}


def sizes_used(name: str, args: tuple, kwargs: dict) -> Iterator[Any]:
    """The counted sizes an operation takes as values: every one unless it is a size operation."""
    if name in _FILL:
        fill = args[_FILL[name]] if len(args) > _FILL[name] else kwargs.get("fill_value")
        if is_size(fill):
            yield fill
        return
    if name in SIZE_OPS:
        return
    for a in (*args, *kwargs.values()):
        if is_size(a):
            yield a
        elif isinstance(a, (tuple, list)):
            yield from (b for b in a if is_size(b))


def numbers_in(obj: Any) -> Iterator[Any]:
    """Every counted size inside ``obj`` (nested tuples, lists, dicts and dataclasses)."""
    if is_size(obj):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from numbers_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from numbers_in(item)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from numbers_in(getattr(obj, f.name))
