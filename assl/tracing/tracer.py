"""Tracing: run the model once on real inputs and find which channels are coupled.

The model runs eagerly, so Python control flow, in-place ops and any inputs and outputs behave as
in training. Known layers are observed through forward hooks; everything between them through a
``TorchFunctionMode``: the user's hooks, and the forward of a known layer whose class replaces its
torch class's (``reparam.own_forward``). Parameters, tensors computed from them alone
(``parameters``) and sizes read from traced tensors (``sizes``) are followed too. Layers whose
weight comes from code the tracer cannot follow are opaque (``reparam.opaque_reason``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.modules import module as _module
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from .._inputs import batch_size, check_on_device, input_sets
from .._inputs import tensors as _tensors
from .._reparam import exact_dim, opaque_reason, own_forward, spectral_reason
from ..errors import ArgumentTypeError, TraceError, warn
from ..graph import Entry, Graph
from ..layers import CHANNEL_NORMS, LAYER_TYPES, PRODUCER_TYPES
from .build import build_graph, log_graph, pin_shared
from .channels import Nodes, Value
from .elementwise import ELEMENTWISE_RULES
from .functional import FUNCTIONAL_RULES
from .layer_rules import opaque_layer, record
from .param_rules import derive
from .parameters import ParameterTracking, parametrization_hooks, wrap_sizes
from .preserve import Preserved
from .protocol import METADATA, Opaque, Rule
from .shape_rules import SHAPE_RULES
from .size_rules import FACTORY_RULES, sized
from .sizes import QUIET, numbers_in, sizes_used, user_line
from .spatial import SPATIAL_RULES

__all__ = ["trace"]

logger = logging.getLogger("assl")

RULES: dict[str, Rule] = {**ELEMENTWISE_RULES, **SPATIAL_RULES, **SHAPE_RULES}


class _Tracer(ParameterTracking, TorchFunctionMode):
    """Records channel labels of every tensor the forward pass makes."""

    def __init__(
        self, model: nn.Module, approximate_norms: bool, layers: Sequence[tuple[str, nn.Module]], through: set[str]
    ) -> None:
        super().__init__()
        self.approximate_norms = approximate_norms
        self.nodes = Nodes()
        self.values: Any = WeakIdKeyDictionary()
        self.has_views: Any = WeakIdKeyDictionary()
        self.sources: dict[str, np.ndarray] = {}
        self.entries: dict[tuple[str, str, int], Entry] = {}
        self.called: set[str] = set()
        self.positions: dict[str, int] = {}
        self.opaque: dict[str, int] = {}
        self.opaque_layers = {n: r for n, r in ((n, opaque_reason(m)) for n, m in layers) if r is not None}
        self.through = through  # known layers whose own forward is traced operation by operation
        dims = ((n, exact_dim(m, "weight")) for n, m in layers)
        self.exact_dims = {(n, "weight"): d for n, d in dims if d is not None}
        self.norms: dict[str, np.ndarray] = {}  # normalization layer -> labels of its channels
        self.made: Any = WeakIdKeyDictionary()  # output tensor of a producer -> the producer
        self.norm_reads: dict[str, set[str]] = {}  # producer -> norm layers reading its raw output
        self.raw_reads: set[str] = set()  # producers whose raw output something else reads
        self._modules = dict(model.named_modules())
        self._depth = 0
        self._stack: list[bool] = []
        self.track_parameters(model)

    # --- the interface the op and layer rules use --------------------------------------------

    def get(self, t: Any) -> Value | None:
        return self.values.get(t) if isinstance(t, torch.Tensor) else None

    def put(self, t: torch.Tensor, v: Value, op: str) -> None:
        old = self.values.get(t)
        if old is not None and self._aliased(t) and not _same(old, v):
            self.fix(old.labels, f"changed in place by `{op}` while another tensor shares its memory")
            self.fix(v.labels, f"changed in place by `{op}` while another tensor shares its memory")
        self.values[t] = v

    def fix(self, labels: np.ndarray, reason: str) -> None:
        self.nodes.fix(labels, reason)

    def union(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        self.nodes.union_arrays(a, b, reason)

    def consume(self, v: Value, layer: str) -> None:
        """Input channels of a layer that mixes channels must be exactly zero when removed."""
        self.fix(v.labels[~v.zero], f"reaches `{layer}` with a value that is not zero once removed")

    def count_positions(self, layer: str, n: int) -> None:
        """Output positions of one call of a layer: its MACs are this times its weight's size."""
        self.positions[layer] = self.positions.get(layer, 0) + n

    def source(self, layer: str, n: int) -> np.ndarray:
        if layer not in self.sources:
            self.sources[layer] = self.nodes.new(n)
        return self.sources[layer]

    def entry(self, module: str, tensor: str, dim: int, labels: np.ndarray, role: str) -> None:
        key = (module, tensor, dim)
        exact = self.exact_dims.get((module, tensor))
        if exact is not None and dim != exact:
            self.fix(labels, spectral_reason(module, dim))
        old = self.entries.get(key)
        if old is None:
            self.entries[key] = Entry(module, tensor, dim, labels.copy(), role)
        elif old.labels.shape != labels.shape or old.role != role:
            reason = (
                f"`{module}.{tensor}` is used in two ways (sizes {len(old.labels)}/{len(labels)}, {old.role}/{role})"
            )
            self.fix(old.labels, reason)
            self.fix(labels, reason)
        else:
            self.union(old.labels, labels, f"`{module}.{tensor}` is shared with a channel that cannot go")

    def normalizes(self, norm: str, labels: np.ndarray) -> None:
        old = self.norms.get(norm)
        if old is not None and old.shape == labels.shape:
            self.union(old, labels, f"`{norm}` is called on two tensors")
        else:
            self.norms[norm] = labels.copy()

    def module(self, name: str) -> nn.Module:
        return self._modules[name]

    def note_read(self, t: torch.Tensor, norm: str | None) -> None:
        """A producer's raw output is read by normalization layer ``norm``, or by anything else."""
        producer = self.made.get(t)
        if producer is None:
            return
        if norm is None:
            self.raw_reads.add(producer)
        else:
            self.norm_reads.setdefault(producer, set()).add(norm)

    def produced(self, t: torch.Tensor, name: str) -> None:
        self.called.add(name)
        self.made[t] = name

    def opaque_layer(self, name: str, why: str) -> None:
        self.opaque_layers.setdefault(name, why)

    # --- hooks and the function mode ---------------------------------------------------------

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._stack.append(self._depth == 0)
        self._depth += 1

    def make_post_hook(self, name: str) -> Any:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            self._depth -= 1
            if not self._stack.pop():
                return
            self.called.add(name)
            reason = self.opaque_layers.get(name)
            if reason is not None:
                inputs = list(_tensors((args, kwargs)))
                for t in inputs:
                    self.note_read(t, None)
                opaque_layer(self, name, module, inputs, output, reason)
                return
            x = args[0] if args else next(iter(_tensors(kwargs)), None)
            if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
                return
            self.note_read(x, name if isinstance(module, CHANNEL_NORMS) else None)
            self._depth += 1
            try:
                record(self, name, module, x, output)
            finally:
                self._depth -= 1
            if isinstance(module, PRODUCER_TYPES):
                self.made[output] = name

        return hook

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        QUIET[0] += 1
        try:
            out = func(*args, **kwargs)
            if self._depth:
                return out
            name = getattr(func, "__name__", "")
            if name == "__get__":
                name = getattr(getattr(func, "__self__", None), "__name__", name)
            for size in sizes_used(name, args, kwargs):  # h * h.shape[1]: a channel count as a value
                self.number_used(size, f"a channel count is used as a value by `{name}` at {user_line()}")
            out = sized(self, name, args, kwargs, out)  # x.size(1) of a traced tensor: a SizeInt
            self._record(name, func, args, kwargs, out)
            return out
        finally:
            QUIET[0] -= 1

    def _record(self, name: str, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        outs = list(_tensors(out))
        inputs = list(_tensors((args, kwargs)))
        factory = FACTORY_RULES.get(name)
        if factory is not None:
            factory(self, name, args, kwargs, out)
            return
        functional = FUNCTIONAL_RULES.get(name)
        if name not in METADATA and functional is None:  # reading a producer's shape does not read its values
            for t in inputs:
                self.note_read(t, None)
        routed = inputs[:1] if name in _CASTS else inputs  # x.type_as(y) reads only y's dtype
        traced = any(t in self.values for t in routed)
        derived = not traced and any(t in self.derivations or t in self.leaves for t in routed)
        if not outs:
            if name not in METADATA:  # data leaves torch (numpy, tolist, item): we lose track of it
                self._opaque(name, inputs, f"`{name}` takes the values out of torch")
            return
        if not traced and not derived:
            return
        try:
            if kwargs.get("out") is not None:
                raise Opaque
            if functional is not None:
                functional(self, name, func, args, kwargs, out)
            elif derived:
                derive(self, name, func, args, kwargs, out)
                return
            else:
                rule = RULES.get(name)
                if rule is None:
                    raise Opaque
                rule(self, name, args, kwargs, out)
        except Opaque:
            self._opaque(name, inputs, f"`{name}` is not modeled by the tracer")
        except Exception as e:  # a rule that fails must never produce a wrong graph
            warn(f"tracing `{name}` failed ({type(e).__name__}: {e}); treating it as opaque (its channels stay)")
            self._opaque(name, inputs, f"`{name}` could not be traced ({type(e).__name__})")
        traced_inputs = [t for t in inputs if t in self.values]
        for o in outs:  # views, detach() and .data share memory: in-place changes must see it
            if o._base is not None:
                self.has_views[o._base] = True
            for t in traced_inputs:
                if t is not o and _same_storage(t, o):
                    self.has_views[t] = True
                    self.has_views[o] = True

    def _opaque(self, name: str, inputs: list[torch.Tensor], reason: str) -> None:
        hit = False
        for t in inputs:
            v = self.values.get(t)
            if v is not None:
                self.fix(v.labels, reason)
                hit = True
            elif t in self.derivations or t in self.leaves:
                d = self.derived(t)
                if d is not None and d.leaves:
                    self.poison(d.leaves, f"{', '.join(f'`{m}.{n}`' for m, n in sorted(d.leaves))} reach(es) {reason}")
        if hit:
            self.opaque[name] = self.opaque.get(name, 0) + 1

    def _aliased(self, t: torch.Tensor) -> bool:
        return t._base is not None or t in self.has_views


_CASTS = frozenset({"type_as", "to", "expand_as", "view_as", "reshape_as"})
"""Operations whose second tensor gives only a dtype, a device or a shape: the first decides the rule."""


def _same_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr() != 0
    except (RuntimeError, NotImplementedError):  # tensors without storage
        return False


def _same(a: Value, b: Value) -> bool:
    return a.dim == b.dim and np.array_equal(a.labels, b.labels) and np.array_equal(a.zero, b.zero)


def trace(
    model: nn.Module,
    example_inputs: Any,
    *,
    extra_inputs: Sequence[Any] = (),
    approximate_norms: bool = False,
) -> Graph:
    """Find the channel groups of ``model`` by running it on ``example_inputs``.

    The model runs once per input set, eagerly and without gradients. It is left as it was
    found: same training flag, every parameter and buffer bit for bit (BatchNorm running
    statistics, spectral norm's power-iteration vectors), no gradients, same global random state.
    A layer with a forward of its own is traced through it; layers the tracer cannot follow are
    opaque: their channels stay, listed in ``graph.opaque_layers`` and ``graph.summary()``.

    Args:
        model: Any ``nn.Module``.
        example_inputs: Exactly what the model is called with: a tensor is one positional
            argument (keep the batch dimension), a tuple or list gives positional arguments, a
            dict keyword arguments.
        extra_inputs: A list of more input sets, each given as ``example_inputs`` is, traced too,
            for forward code whose path depends on the input (a shape-dependent branch): the
            constraints of all runs are combined.
        approximate_norms: Allow pruning channels that GroupNorm or LayerNorm normalize together.
            The slimmed model is then NOT equal to the masked one (the statistics change);
            fine-tune afterwards.

    Returns:
        The :class:`~assl.Graph` of producers, consumers and channel groups.

    Raises:
        TypeError: ``model`` is not a module, the inputs are of an unsupported type, or
            ``extra_inputs`` is not a list of input sets.
        ValueError: The model or the inputs hold tensors on the meta device.
        TraceError: The model rejects the inputs, has no Conv/ConvTranspose/Linear layer, or a
            global forward hook is registered.

    Example:
        >>> graph = assl.trace(model, torch.randn(1, 3, 48, 48))
        >>> print(graph.summary())
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"trace() needs an nn.Module as the model, got {type(model).__name__}")
    if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        raise ArgumentTypeError("trace the wrapped model itself (model.module), not its DataParallel wrapper")
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)]
    if not any(isinstance(m, PRODUCER_TYPES) for _, m in layers):
        raise TraceError(
            f"{type(model).__name__} has no prunable layer: trace() prunes the output channels of "
            f"Conv1d/2d/3d, ConvTranspose1d/2d/3d and Linear layers and found none"
        )
    calls = input_sets(example_inputs, extra_inputs)
    check_on_device(model)
    if _module._global_forward_hooks:
        raise TraceError(
            "a global forward hook (torch.nn.modules.module.register_module_forward_hook) changes what every "
            "layer returns before the tracer sees it; remove it while tracing and slimming"
        )
    through = {n for n, m in layers if own_forward(m) is not None and opaque_reason(m) is None}
    tracer = _Tracer(model, approximate_norms, layers, through)
    preserved = Preserved(model)  # every parameter and buffer goes back as it was, whatever happens
    devices = sorted({t.device.index or 0 for t in (*model.parameters(), *model.buffers()) if t.is_cuda})
    handles = []
    sizes: list[tuple[nn.Module, dict[str, Any]]] = []
    positions: dict[str, int] = {}  # of the example inputs alone: what MACs are counted on
    try:
        for name, m in layers:
            # out_channels, num_features, ...: the forward code reading them follows slimming
            sizes.append((m, wrap_sizes(name, m, tracer)))
            if name in through:  # its own forward: traced operation by operation
                handles += parametrization_hooks(name, m, tracer)
                continue
            # the user's pre-hooks run before ours and their forward hooks after ours: their
            # operations are traced as code between layers
            handles.append(m.register_forward_pre_hook(tracer.pre_hook, with_kwargs=True))
            handles.append(m.register_forward_hook(tracer.make_post_hook(name), with_kwargs=True, prepend=True))
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            for i, (args, kwargs) in enumerate(calls):
                try:
                    with tracer:
                        out = model(*args, **kwargs)
                except Exception as e:
                    which = "example_inputs" if i == 0 else f"extra_inputs[{i - 1}]"
                    raise TraceError(
                        f"{type(model).__name__} raised {type(e).__name__} on {which}: {e}. Inputs are "
                        f"used exactly as given: a tensor is one positional argument (batch dimension "
                        f"included), a tuple/list positional arguments, a dict keyword arguments."
                    ) from e
                if i == 0:
                    positions = dict(tracer.positions)
                for t in _tensors(out):
                    v = tracer.get(t)
                    if v is not None:
                        tracer.fix(v.labels, "reaches the model's output")
                for size in numbers_in(out):
                    tracer.number_used(size, "a channel count reaches the model's output")
        for h in handles:
            h.remove()
        handles = []
        tracer.finish()
        pin_shared(model, tracer.entries.values(), tracer.nodes)
        graph = build_graph(model, tracer.nodes, tracer.sources, list(tracer.entries.values()), positions)
        graph.set_norms(
            {n: Nodes.roots(tracer.nodes.root_table(), labels) for n, labels in tracer.norms.items()},
            {p: tuple(sorted(norms)) for p, norms in tracer.norm_reads.items() if p not in tracer.raw_reads},
        )
    finally:
        for h in handles:
            h.remove()
        for sized_module, attrs in sizes:
            sized_module.__dict__.update(attrs)
        preserved.restore()
    graph.untraced = tuple(n for n, m in layers if n not in tracer.called and isinstance(m, PRODUCER_TYPES))
    graph.opaque_ops = dict(tracer.opaque)
    graph.opaque_layers = dict(tracer.opaque_layers)
    graph.module_names = tuple(n for n, _ in model.named_modules() if n)
    graph.samples = batch_size(calls[0])
    log_graph(model, graph)
    return graph
