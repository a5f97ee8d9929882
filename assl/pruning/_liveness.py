"""How alive the chosen channels still are where their readers read them.

A small ``|g|`` says little when a normalization, a standardization or a per-channel shift follows,
and nothing about a bias. What matters is the signal the chosen channels still carry at the input
of every layer that reads them (the convolutions and Linear layers that consume the group's units,
after whatever per-channel code sits between the carrier and them), on the example inputs,
relative to the kept channels. ``0`` means the chosen channels are exactly zero there, so removing
them changes nothing; ``1`` means they are as loud as the channels that stay.

A group whose channels no penalty can silence (a per-channel buffer adds to them on the way to a
reader: a frozen BatchNorm's shift, a standardization by a stored mean) is found before training
(:func:`unsilenceable`): the Pruner keeps it whole and says why.

The same measure tells when the kept channels fell silent too (:func:`collapsed`): the network
collapsed while the chosen ones faded, and a liveness relative to dead kept channels means nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .._inputs import call_args
from .._reparam import parametrizations_in_eval
from .._slim import masked_copy
from ..graph import Graph
from ..layers import channel_dim
from ._selection import Selection, carrier_plan

__all__ = ["ALIVE", "COLLAPSED", "collapsed", "levels", "liveness", "unsilenceable"]

ALIVE = 1e-3
"""A group whose chosen channels carry more than this share of the kept channels' RMS is alive."""

COLLAPSED = 1e-3
"""A group whose kept channels carry less than this share of the RMS its channels had when pruning
began has collapsed: the kept channels fell silent with the chosen ones."""

SILENT = 1e-5
"""Below this share of the dense RMS, channels whose penalized parameters are all zero are silent."""


def _input_dim(m: nn.Module, x: torch.Tensor) -> int | None:
    """The dimension of a reader's input that holds the channels it reads."""
    if isinstance(m, nn.Linear):
        return x.ndim - 1
    kernel = getattr(m, "kernel_size", None)
    if isinstance(kernel, tuple):
        return x.ndim - len(kernel) - 1
    return None


def reader_energy(model: nn.Module, readers: Iterable[str], example_inputs: Any) -> dict[str, torch.Tensor]:
    """Mean squared value of every input channel of each reader layer, on the example inputs.

    The model runs once in eval mode (BatchNorm uses its running statistics, dropout is off),
    without gradients; training flags are restored afterwards.
    """
    energy: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, kwargs: Any) -> None:
            x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            d = _input_dim(module, x) if isinstance(x, torch.Tensor) else None
            if d is None or d < 0 or not isinstance(x, torch.Tensor):
                return
            e = x.detach().float().pow(2).transpose(0, d).flatten(1).mean(1)
            energy[name] = energy[name] + e if name in energy and energy[name].shape == e.shape else e

        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n), with_kwargs=True) for n in readers]
    _run(model, example_inputs, handles)
    return energy


def _run(model: nn.Module, example_inputs: Any, handles: list[Any]) -> None:
    flags = [m.training for m in model.modules()]
    args, kwargs = call_args(example_inputs)
    model.eval()
    try:
        with torch.no_grad(), parametrizations_in_eval(model):
            model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, t in zip(model.modules(), flags):
            m.training = t


def _per_unit(graph: Graph, group: str, energy: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy summed over the readers' input channels of each unit of ``group``, and how many."""
    size = graph.group(group).size
    total = torch.zeros(size, dtype=torch.float64)
    count = torch.zeros(size, dtype=torch.float64)
    for reader, units in graph.readers(group).items():
        e = energy.get(reader)
        if e is None or e.numel() % len(units):
            continue
        per_channel = torch.as_tensor(np.resize(units, e.numel()))  # grouped convs repeat the pattern
        mine = per_channel >= 0
        total.index_add_(0, per_channel[mine], e.cpu().double()[mine])
        count.index_add_(0, per_channel[mine], torch.ones(int(mine.sum()), dtype=torch.float64))
    return total, count


def liveness(model: nn.Module, selection: Selection, example_inputs: Any) -> dict[str, float]:
    """Per group with chosen units: RMS of the chosen channels over RMS of the kept ones where read.

    Measured at the input of every layer that reads the group's channels; a group without such a
    reader is measured at its carriers' outputs.
    """
    chosen = {g: units for g, units in selection.chosen.items() if units}
    read = levels(model, selection.graph, chosen, example_inputs)
    out: dict[str, float] = {}
    fallback = []
    for group, units in chosen.items():
        ratio = _ratio(read[group], units) if group in read else None
        if ratio is None:
            fallback.append(group)
        else:
            out[group] = ratio
    if fallback:
        out.update(_at_carriers(model, selection, fallback, example_inputs))
    return out


def levels(model: nn.Module, graph: Graph, groups: Iterable[str], example_inputs: Any) -> dict[str, torch.Tensor]:
    """Per group, the mean energy (squared value) of each unit where the group's readers read it, on
    the example inputs (NaN for a unit no reader reads); groups without a reader are left out."""
    groups = list(groups)
    energy = reader_energy(model, {r for g in groups for r in graph.readers(g)}, example_inputs)
    out = {}
    for group in groups:
        total, count = _per_unit(graph, group, energy)
        if (count > 0).any():
            out[group] = _means(total, count)
    return out


def collapsed(
    model: nn.Module, selection: Selection, example_inputs: Any, start: Mapping[str, torch.Tensor]
) -> dict[str, float]:
    """The groups whose kept channels fell silent: their RMS where read, relative to theirs in
    ``start`` (:func:`levels` when pruning began), when below :data:`COLLAPSED`. Units that were
    already silent then do not count."""
    now = levels(
        model, selection.graph, [g for g, chosen in selection.chosen.items() if chosen and g in start], example_inputs
    )
    out = {}
    for group, energy in now.items():
        kept = torch.ones(energy.numel(), dtype=torch.bool)
        kept[selection.chosen[group]] = False
        before = start[group]
        kept &= ~before.isnan() & ~energy.isnan() & (before > 0)
        if kept.any():
            ratio = math.sqrt(max(float(energy[kept].sum() / before[kept].sum()), 0.0))
            if ratio < COLLAPSED:
                out[group] = ratio
    return out


def _means(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Per unit, its summed energy over the times it was seen (NaN where never)."""
    return torch.where(count > 0, total / count.clamp_min(1), torch.nan)


def _ratio(per_unit: torch.Tensor, chosen: list[int]) -> float | None:
    """RMS of the ``chosen`` units over the RMS of the others, among those seen (None: a side unseen)."""
    mask = torch.zeros(per_unit.numel(), dtype=torch.bool)
    mask[chosen] = True
    seen = ~per_unit.isnan()
    kept, gone = per_unit[~mask & seen], per_unit[mask & seen]
    if not gone.numel() or not kept.numel():
        return None
    return math.sqrt(max(float(gone.mean() / kept.mean().clamp_min(1e-30)), 0.0))


def _at_carriers(model: nn.Module, selection: Selection, groups: list[str], example_inputs: Any) -> dict[str, float]:
    """Liveness at the carriers' outputs (the producer's output, or the normalization layer's)."""
    energy: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, out: Any) -> None:
            if not isinstance(out, torch.Tensor) or out.ndim == 0:
                return
            d = channel_dim(module, out)
            e = out.detach().float().pow(2).transpose(0, d).flatten(1).mean(1)
            energy[name] = energy[name] + e if name in energy else e

        return record

    wanted = {c.name: c.module for g in groups for c in selection.layers[g] if c.kind != "param"}
    _run(model, example_inputs, [m.register_forward_hook(hook(n)) for n, m in wanted.items()])
    out: dict[str, float] = {}
    for group in groups:
        size = selection.graph.group(group).size
        total = torch.zeros(size, dtype=torch.float64)
        count = torch.zeros(size, dtype=torch.float64)
        for c in selection.layers[group]:
            e = energy.get(c.name)
            if c.kind == "param" or e is None or e.numel() != c.channel_units.numel():
                continue
            mine = c.channel_units >= 0
            units = c.channel_units[mine].cpu()
            total.index_add_(0, units, e.cpu().double()[mine.cpu()])
            count.index_add_(0, units, torch.ones_like(units, dtype=torch.float64))
        ratio = _ratio(_means(total, count), selection.chosen[group])
        if ratio is not None:
            out[group] = ratio
    return out


def unsilenceable(model: nn.Module, graph: Graph, removed: Mapping[str, int], example_inputs: Any) -> dict[str, str]:
    """The groups whose channels no penalty can drive to zero where they are read, and why.

    The penalty drives a group's scales, norm parameters and per-channel Parameters toward zero.
    Tensors it cannot reach (buffers, frozen Parameters) stay: the model with everything else of
    the group zeroed is run on the example inputs, and a group whose units are still alive at
    their readers is named with the tensors that keep them alive.
    """
    suspects = {}
    for g in graph.groups:
        if removed.get(g.name):
            unreached = carrier_plan(model, graph, g).unreached
            if unreached:
                suspects[g.name] = unreached
    if not suspects:
        return {}
    groups = {name: graph.group(name) for name in suspects}
    plan = {name: g.pick(range(g.size), g.num_prunable) for name, g in groups.items()}
    quiet = masked_copy(model, graph, plan)
    with torch.no_grad():
        for unreached in suspects.values():
            for module, tensor, _, _ in unreached:  # what no penalty reaches keeps its values
                getattr(quiet.get_submodule(module), tensor).copy_(getattr(model.get_submodule(module), tensor))
    readers = {r for name in suspects for r in graph.readers(name)}
    dense, silenced = (reader_energy(m, readers, example_inputs) for m in (model, quiet))
    out = {}
    for name, unreached in suspects.items():
        before, count = _per_unit(graph, name, dense)
        after, _ = _per_unit(graph, name, silenced)
        units = torch.as_tensor(plan[name])
        units = units[count[units] > 0]
        level = float(after[units].sum() / before[units].sum().clamp_min(1e-30)) if units.numel() else 0.0
        if math.sqrt(max(level, 0.0)) > SILENT:
            tensors = dict.fromkeys((m, t) for m, t, _, _ in unreached)
            names = ", ".join(f"`{m}.{t}`" if m else f"`{t}`" for m, t in tensors)
            where = ", ".join(f"`{r}`" for r in graph.readers(name))
            out[name] = (
                f"{names} (no penalty reaches it: a buffer or a frozen Parameter) keep(s) its channels alive where "
                f"{where} read(s) them"
            )
    return out
