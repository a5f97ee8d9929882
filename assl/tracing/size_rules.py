"""Operations that read sizes from traced tensors or make tensors from such sizes.

``x.size(1)``, ``x.shape``, ``x.numel()`` and ``len(x)`` of a traced tensor return
:class:`~.sizes.SizeInt` at the channels' position (so that reshapes can tell sizes read from the
tensor from sizes written in the code). ``torch.zeros(b, c, h, w)`` with ``c`` read from traced
channels makes a tensor of those channels, and ``torch.zeros_like(x)`` one of ``x``'s: adding it
to them is exact. Random values drawn per channel are not: slimming changes which values each
channel draws, so those channels stay.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .channels import Value
from .protocol import Rule, Tracer
from .protocol import arg as _arg
from .protocol import norm_dim as _norm_dim
from .sizes import SizeInt

__all__ = ["FACTORY_RULES", "sized"]

_SIZES = frozenset({"size", "shape", "numel", "__len__"})


def sized(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> Any:
    """What ``size``/``shape``/``numel``/``len`` return, a traced size as a :class:`SizeInt`.

    The size of a traced tensor's channel dimension counts its channel labels; the sizes of a
    parameter (or a tensor computed from parameters alone) count the parameter dims along them.
    """
    if name not in _SIZES or not args or not isinstance(args[0], torch.Tensor):
        return out
    x = args[0]
    v = tr.get(x)
    d = tr.derived(x) if v is None else None
    if v is None and (d is None or not any(d.axes)):
        return out

    def counted(i: int, n: int) -> int:
        if v is not None:
            return SizeInt(n, (v.labels,), (), tr.sink) if i == v.dim else n
        assert d is not None
        return SizeInt(n, (), tuple(sorted(d.axes[i])), tr.sink) if i < d.ndim and d.axes[i] else n

    if isinstance(out, torch.Size):
        return torch.Size([counted(i, n) for i, n in enumerate(out)])
    if not isinstance(out, int) or isinstance(out, bool):
        return out
    if name == "numel":
        if v is not None:
            return SizeInt(out, (v.labels,), (), tr.sink)
        assert d is not None
        return SizeInt(out, (), tuple(sorted(a for axes in d.axes for a in axes)), tr.sink)
    if name == "__len__":
        return counted(0, out)
    i = _arg(args, kwargs, 1, "dim")
    if name == "size" and isinstance(i, int):
        return counted(_norm_dim(i, x.ndim), out)
    return out


_RANDOM = (
    "random values drawn per channel by `{name}`: slimming changes which values each channel draws, so the "
    "channels stay"
)
_FILLS = {"zeros": 0, "new_zeros": 0, "zeros_like": 0, "ones": 1, "new_ones": 1, "ones_like": 1}


def _factory(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``torch.zeros(b, c, h, w)`` with ``c`` read from traced channels: a tensor of those channels."""
    if not isinstance(out, torch.Tensor):
        return
    start = 1 if name.startswith("new_") else 0
    rest = list(args[start:])
    fill: Any = None
    if name in ("full", "new_full"):
        fill = _arg(args, kwargs, start + 1, "fill_value")
        rest = rest[:1]
    if len(rest) == 1 and isinstance(rest[0], (tuple, list)):
        rest = list(rest[0])
    elif not rest:
        rest = list(kwargs.get("size", ()))
    counted = [(j, n) for j, n in enumerate(rest) if isinstance(n, SizeInt) and n.sources]
    if not counted or len(rest) != out.ndim:
        return
    j, n = counted[0]
    labels = next((s for s in n.sources if len(s) == out.shape[j]), None)
    others = [s for _, m in counted[1:] for s in m.sources]
    if labels is None or name in ("rand", "randn", "randint", "rand_like", "randn_like"):
        for s in [*n.sources, *others]:
            tr.fix(s, _RANDOM.format(name=name) if labels is not None else f"sizes a new tensor made by `{name}`")
        return
    for s in others:
        tr.fix(s, f"sizes a second dimension of a new tensor made by `{name}`")
    fill = _FILLS.get(name, fill)
    zero = fill is not None and not isinstance(fill, bool) and isinstance(fill, (int, float)) and fill == 0
    tr.put(out, Value(j, labels.copy(), np.full(len(labels), zero)), name)


def _like(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``torch.zeros_like(x)`` of a traced ``x``: a tensor of the same channels."""
    v = tr.get(args[0])
    if v is None or not isinstance(out, torch.Tensor) or out.shape != args[0].shape:
        return
    if name in ("rand_like", "randn_like", "randint_like"):
        tr.fix(v.labels, _RANDOM.format(name=name))
        return
    fill = _FILLS.get(name, _arg(args, kwargs, 1, "fill_value") if name == "full_like" else None)
    zero = isinstance(fill, (int, float)) and not isinstance(fill, bool) and fill == 0
    tr.put(out, Value(v.dim, v.labels, np.full(v.size, zero)), name)


FACTORY_RULES: dict[str, Rule] = {}
FACTORY_RULES.update({n: _factory for n in ("zeros", "ones", "empty", "full", "rand", "randn")})
FACTORY_RULES.update({n: _factory for n in ("new_zeros", "new_ones", "new_empty", "new_full")})
FACTORY_RULES.update(
    {n: _like for n in ("zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like")}
)
