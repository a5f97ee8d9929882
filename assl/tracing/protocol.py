"""What an operation or layer rule may ask of the tracer, and small helpers the rules share.

Rules receive the tracer as an argument typed by :class:`Tracer`, so they never import the
tracer's module and the tracer can import them: imports point one way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from .channels import Nodes, ParamRef, Value

__all__ = ["METADATA", "Opaque", "Rule", "Tracer", "arg", "first_out", "norm_dim"]


class Tracer(Protocol):
    """The tracer as the rules see it: labels of tensors, constraints on nodes, cut tensors."""

    approximate_norms: bool
    nodes: Nodes

    def get(self, t: Any) -> Value | None:
        """The labels of tensor ``t``, if it carries traced channels."""

    def put(self, t: torch.Tensor, v: Value, op: str) -> None:
        """Record ``v`` as the labels of ``t``, made by ``op``."""

    def fix(self, labels: np.ndarray, reason: str) -> None:
        """Mark the nodes of ``labels`` as impossible to remove, for ``reason``."""

    def union(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        """Tie the nodes of ``a`` and ``b`` element by element."""

    def consume(self, v: Value, layer: str) -> None:
        """Input channels of a layer that mixes channels must be exactly zero when removed."""

    def count_positions(self, layer: str, n: int) -> None:
        """Add ``n`` output positions to one call of ``layer`` (for its MACs)."""

    def source(self, layer: str, n: int) -> np.ndarray:
        """The nodes of the ``n`` output channels of producer ``layer`` (made on first use)."""

    def entry(self, module: str, tensor: str, dim: int, labels: np.ndarray, role: str) -> None:
        """Record that dim ``dim`` of ``module.tensor`` follows ``labels`` (``role``: zero/slice)."""

    def normalizes(self, norm: str, labels: np.ndarray) -> None:
        """Record that normalization layer ``norm`` renormalizes the channels of ``labels``."""

    def param_ref(self, t: torch.Tensor) -> ParamRef | None:
        """The per-channel parameter or buffer that ``t`` is (a view of), if any."""

    def propagate_param_ref(self, x: Any, out: Any) -> None:
        """``out`` is ``x`` reshaped: it refers to the same per-channel parameter."""


Rule = Callable[[Tracer, str, tuple, dict, Any], None]
"""A rule: ``(tracer, op name, args, kwargs, output)``; raises :class:`Opaque` when it cannot map."""


class Opaque(Exception):
    """Raised by a rule that cannot map its inputs: the op is then treated as opaque."""


def arg(args: tuple, kwargs: dict, i: int, name: str, default: Any = None) -> Any:
    """Argument ``i`` of a call, given positionally or as keyword ``name``."""
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


def first_out(out: Any) -> torch.Tensor | None:
    """The output tensor, or the first of a tuple of outputs (``max_pool`` with indices)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def norm_dim(d: int, ndim: int) -> int:
    """A dimension index made non-negative."""
    return d + ndim if d < 0 else d


# tensor methods and properties that read metadata, not values: they never pin channels
METADATA = frozenset(
    {
        "size",
        "shape",
        "dim",
        "ndim",
        "ndimension",
        "numel",
        "nelement",
        "dtype",
        "device",
        "is_cuda",
        "is_contiguous",
        "stride",
        "storage_offset",
        "requires_grad",
        "is_leaf",
        "grad",
        "grad_fn",
        "layout",
        "is_floating_point",
        "is_complex",
        "element_size",
        "__len__",
        "__repr__",
        "__format__",
        "__hash__",
        "get_device",
        "is_sparse",
        "is_quantized",
        "is_meta",
        "names",
        "_version",
        "data_ptr",
        "_base",
        "is_nested",
        "is_mps",
        "is_xpu",
        "itemsize",
        "nbytes",
        "__bool__",
        "__eq__",
        "__ne__",
    }
)
