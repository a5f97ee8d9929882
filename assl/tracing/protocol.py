"""What an operation or layer rule may ask of the tracer, and small helpers the rules share.

Rules receive the tracer as an argument typed by :class:`Tracer`, so they never import the
tracer's module and the tracer can import them: imports point one way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .channels import Nodes, Value
from .derived import Axis, Binding, Derived, Leaf

__all__ = ["METADATA", "Opaque", "Rule", "Tracer", "arg", "first_out", "norm_dim"]


class Tracer(Protocol):
    """The tracer as the rules see it: labels of tensors, constraints on nodes, cut tensors."""

    approximate_norms: bool
    nodes: Nodes
    sink: Any
    """Where sizes read from traced tensors report a use as a number (see ``sizes``)."""

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

    def derived(self, t: Any) -> Derived | None:
        """What tensor ``t`` is computed from, if it is a parameter or buffer or computed from them alone."""

    def set_derived(self, t: torch.Tensor, d: Derived) -> None:
        """Record that ``t`` is computed from parameters and buffers as ``d`` says."""

    def bind(self, t: torch.Tensor, dim: int, *, zeroed: bool = True, values: bool = True) -> Binding | None:
        """The parameter dimensions along dim ``dim`` of ``t``, to be cut with the channels there.

        ``None`` when ``t`` is not computed from parameters. With ``zeroed=False`` the masked
        model keeps their values (a divisor, a PReLU slope): they are only cut. With
        ``values=False`` only whether they can be cut is checked (a consumer's input channels).
        """

    def mix(self, axis: Axis, why: str) -> None:
        """Record that the channels along ``axis`` are mixed (``why`` completes "... is")."""

    def poison(self, leaves: frozenset[Leaf], why: str) -> None:
        """Record that parameters went through an operation the tracer does not follow."""

    def cannot_cut(self, axis: Axis) -> str | None:
        """Why the entries along a parameter dimension cannot be cut, or None."""

    def tie_axis(self, axis: Axis, labels: np.ndarray) -> None:
        """Record that the entries along ``axis`` must follow channels ``labels``."""

    def module(self, name: str) -> nn.Module:
        """The submodule called ``name``."""

    def note_read(self, t: torch.Tensor, norm: str | None) -> None:
        """A producer's output ``t`` is read by normalization layer ``norm``, or by anything else."""

    def produced(self, t: torch.Tensor, name: str) -> None:
        """``t`` is the output of producer ``name``, which ran."""

    def opaque_layer(self, name: str, why: str) -> None:
        """Record that the tracer cannot see what layer ``name`` computes."""


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
