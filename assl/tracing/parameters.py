"""What the tracer knows of the model's parameters and of the sizes that count them.

Which tensors are parameters or computed from parameters alone (:class:`~.derived.Derived`), which
parameter dimensions cannot be cut (mixed by a reduction, or gone through an operation the tracer
does not follow), which sizes the forward code used as numbers or compared, and which parameter
dimensions a size read from traced channels ties to them. Most of it is known only at the end of
the run: :meth:`ParameterTracking.finish` pins the channels those dimensions were bound to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.weak import WeakIdKeyDictionary

from ..graph import Entry
from ..layers import BATCHNORM, CONV, DECONV, INSTANCENORM
from .derived import Axis, Binding, Derived, Leaf, axis_name, bind, leaf
from .sizes import Sink, SizeInt

__all__ = ["ParameterTracking", "parametrization_hooks", "size_attributes", "wrap_sizes"]


class ParameterTracking:
    """The tracer's bookkeeping of parameters and sizes (a base class of the tracer)."""

    entries: dict[tuple[str, str, int], Entry]
    _depth: int
    _stack: list[bool]
    fix: Callable[[np.ndarray, str], None]
    """The tracer's: mark nodes as impossible to remove (see :class:`~assl.tracing.protocol.Tracer`)."""
    union: Callable[[np.ndarray, np.ndarray, str], None]
    """The tracer's: tie two sets of nodes element by element."""

    def track_parameters(self, model: nn.Module) -> None:
        """Start with every parameter and buffer of ``model`` as a leaf, named by its first owner."""
        self.leaves: Any = WeakIdKeyDictionary()  # parameter or buffer -> (module, tensor name)
        self.derivations: Any = WeakIdKeyDictionary()  # tensor computed from parameters alone -> Derived
        self.mixed: dict[Axis, str] = {}  # parameter dims that cannot be cut -> why
        self.poisoned: dict[Leaf, str] = {}  # parameters that went through an op not followed -> why
        self.axis_ties: list[tuple[Axis, np.ndarray]] = []  # parameter dims sized by traced channels
        self.size_ties: list[tuple[Any, Any]] = []  # equal sizes compared: they must stay equal
        self.sink = _Sink(self)
        for mod_name, mod in model.named_modules():
            for t_name, t in (*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)):
                if t not in self.leaves:
                    self.leaves[t] = (mod_name, t_name)

    def derived(self, t: Any) -> Derived | None:
        if not isinstance(t, torch.Tensor):
            return None
        d = self.derivations.get(t)
        if d is None:
            name = self.leaves.get(t)
            if name is not None:
                d = self.derivations[t] = leaf(name[0], name[1], t)
        return d

    def set_derived(self, t: torch.Tensor, d: Derived) -> None:
        self.derivations[t] = d

    def bind(self, t: torch.Tensor, dim: int, *, zeroed: bool = True, values: bool = True) -> Binding | None:
        d = self.derived(t)
        if d is None or dim >= d.ndim:
            return None
        return bind(d, dim, t.shape[dim], self.cannot_cut, zeroed=zeroed, values=values)

    def mix(self, axis: Axis, why: str) -> None:
        self.mixed.setdefault(axis, why)

    def poison(self, leaves: frozenset[Leaf], why: str) -> None:
        for name in leaves:
            self.poisoned.setdefault(name, why)

    def tie_axis(self, axis: Axis, labels: np.ndarray) -> None:
        self.axis_ties.append((axis, labels))

    def cannot_cut(self, axis: Axis) -> str | None:
        """Why the entries along a parameter dimension cannot be cut, or None."""
        why = self.mixed.get(axis)
        if why is not None:
            return f"{axis_name(axis)} is {why}"
        return self.poisoned.get(axis[:2])

    def number_used(self, size: Any, reason: str) -> None:
        """A size that counts traced channels or parameter entries was used as a number: pin them."""
        for labels in size.sources:
            self.fix(labels, reason)
        for axis in size.axes:
            self.mix(axis, f"counted by a size used as a number: {reason}")

    def finish(self) -> None:
        """Apply what is known only at the end: parameter dims that cannot be cut, sizes tied."""
        for key, e in self.entries.items():
            why = self.cannot_cut(key)
            if why:
                self.fix(e.labels, why)
        for axis, labels in self.axis_ties:
            tied = self.entries.get(axis)
            if tied is None:
                continue
            if len(tied.labels) == len(labels):
                self.union(tied.labels, labels, f"{axis_name(axis)} is sized by a channel that cannot be removed")
            else:
                self.fix(labels, f"sizes {axis_name(axis)}, which has another length")
        for a, b in self.size_ties:
            arrays = [*a.sources, *(self.entries[x].labels for x in a.axes if x in self.entries)]
            arrays += [*b.sources, *(self.entries[x].labels for x in b.axes if x in self.entries)]
            for other in arrays[1:]:
                if len(other) == len(arrays[0]):
                    self.union(arrays[0], other, "compared equal to a channel count that cannot change")
                else:
                    self.fix(other, "compared to a count of other channels")

    def make_parametrized_hook(self, module: str, tensor: str) -> Any:
        """After a parametrization of a traced-through layer computes ``tensor``: it is that parameter."""

        def hook(plist: nn.Module, args: tuple, output: Any) -> None:
            self._depth -= 1
            self._stack.pop()
            if self._depth == 0 and isinstance(output, torch.Tensor):
                self.derivations[output] = leaf(module, tensor, output)

        return hook


class _Sink:
    """Where sizes report a use as a number (:meth:`ParameterTracking.number_used`) or an equality."""

    def __init__(self, tracer: ParameterTracking) -> None:
        self.tracer = tracer

    def __call__(self, size: Any, reason: str) -> None:
        if not self.tracer._depth:  # not torch's own code inside a layer observed whole
            self.tracer.number_used(size, reason)

    def tie(self, a: Any, b: Any) -> None:
        if not self.tracer._depth:
            self.tracer.size_ties.append((a, b))


def wrap_sizes(name: str, m: nn.Module, tracer: ParameterTracking) -> dict[str, Any]:
    """Make the size attributes of layer ``m`` count its weight's dims; return the originals."""
    originals = {}
    for attr, value in size_attributes(name, m, tracer.sink).items():
        originals[attr] = m.__dict__[attr]
        m.__dict__[attr] = value
    return originals


def parametrization_hooks(name: str, m: nn.Module, tracer: Any) -> list[Any]:
    """A parametrized tensor of a traced-through layer is that tensor, not the code that computes it."""
    if not parametrize.is_parametrized(m):
        return []
    handles = []
    plists = cast(nn.ModuleDict, m.parametrizations)
    for tensor, plist in plists.items():
        handles.append(plist.register_forward_pre_hook(tracer.pre_hook, with_kwargs=True))
        handles.append(plist.register_forward_hook(tracer.make_parametrized_hook(name, tensor)))
    return handles


def size_attributes(name: str, m: nn.Module, sink: Sink) -> dict[str, Any]:
    """The size attributes of layer ``m`` as :class:`SizeInt` counting the weight dims they follow.

    Slimming updates exactly these attributes (``layers.resize``), so a forward that reads them
    follows a slimmed layer.
    """
    out: dict[str, Any] = {}

    def size(attr: str, tensor: str, dim: int) -> None:
        value = m.__dict__.get(attr)
        if isinstance(value, int) and not isinstance(value, bool):
            out[attr] = SizeInt(value, (), ((name, tensor, dim),), sink)

    if isinstance(m, (*CONV, *DECONV)):
        w_out, w_in = (1, 0) if isinstance(m, DECONV) else (0, 1)
        if m.groups == 1:
            size("out_channels", "weight", w_out)
            size("in_channels", "weight", w_in)
        elif m.groups == m.in_channels:
            size("groups", "weight", 0)
    elif isinstance(m, nn.Linear):
        size("out_features", "weight", 0)
        size("in_features", "weight", 1)
    elif isinstance(m, (*BATCHNORM, *INSTANCENORM)):
        size("num_features", "weight" if isinstance(m.weight, torch.Tensor) else "running_mean", 0)
    elif isinstance(m, nn.GroupNorm) and isinstance(m.weight, torch.Tensor):
        size("num_channels", "weight", 0)
        out["num_groups"] = SizeInt(m.num_groups)  # counts groups, not entries: a marker that it is read
    elif isinstance(m, nn.PReLU) and m.num_parameters > 1:
        size("num_parameters", "weight", 0)
    elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) == 1 and isinstance(m.weight, torch.Tensor):
        n = m.normalized_shape[0]
        out["normalized_shape"] = (SizeInt(n, (), ((name, "weight", 0),), sink),)
    return out
