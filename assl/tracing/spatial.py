"""How per-channel operations on trailing dimensions and reductions move channel labels.

Pooling, padding, interpolation, rolls and flips, pixel (un)shuffle and reductions such as
``mean`` or ``sum``: each rule reads the labels of its tensor input from the tracer and records
the labels of its output, or raises :class:`Opaque` when it cannot map them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .channels import Value
from .elementwise import _binary
from .protocol import Opaque, Rule, Tracer
from .protocol import arg as _arg
from .protocol import first_out as _first_out
from .protocol import norm_dim as _norm_dim


def _max_min(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    if isinstance(_arg(args, kwargs, 1, "other"), torch.Tensor):
        _binary(tr, name, args, kwargs, out)
    else:
        _reduce(tr, name, args, kwargs, out)


# --- per-channel ops on trailing dims ------------------------------------------------------


def _spatial(n_trailing: Callable[[tuple, dict, torch.Tensor], int], keeps_zero: bool = True) -> Rule:
    def rule(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
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


def _pool(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    n = _suffix_dims(name)
    _spatial(lambda a, k, x: n)(tr, name, args, kwargs, out)


def _pad(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    pad = _arg(args, kwargs, 1, "pad")
    mode = _arg(args, kwargs, 2, "mode", "constant")
    value = _arg(args, kwargs, 3, "value", None)
    keeps = mode != "constant" or not value
    _spatial(lambda a, k, x: len(pad) // 2, keeps)(tr, name, args, kwargs, out)


def _interpolate(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    _spatial(lambda a, k, x: x.ndim - 2)(tr, name, args, kwargs, out)


def _roll_flip(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    v = tr.get(x)
    if v is None:
        return
    dims = _arg(args, kwargs, 2 if name == "roll" else 1, "dims")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if not dims or any(_norm_dim(d, x.ndim) == v.dim for d in dims):
        raise Opaque
    tr.put(out, v, name)


def _shuffle(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
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


def _reduce(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
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


SPATIAL_RULES: dict[str, Rule] = {}
SPATIAL_RULES.update({n: _max_min for n in ("max", "min")})
SPATIAL_RULES.update(
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
SPATIAL_RULES.update({n: _interpolate for n in ("interpolate", "upsample", "upsample_nearest", "upsample_bilinear")})
SPATIAL_RULES["pad"] = _pad
SPATIAL_RULES.update({n: _roll_flip for n in ("roll", "flip")})
SPATIAL_RULES.update({n: _shuffle for n in ("pixel_shuffle", "pixel_unshuffle")})
SPATIAL_RULES.update({n: _reduce for n in _REDUCE_KEEPS_ZERO - {"max", "min"} | {"logsumexp"}})
