"""From the tracer's channel nodes to the :class:`~assl.Graph`: groups, units and cut tensors."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

from .._reparam import hook_dim, legacy_hook, underlying, value
from ..errors import warn
from ..graph import ChannelGroup, Entry, Graph
from .channels import Nodes

__all__ = ["build_graph", "log_graph", "pin_shared"]

logger = logging.getLogger("assl")


def _backing(m: nn.Module, name: str) -> list[torch.Tensor]:
    """The Parameters a tensor of ``m`` is computed from (itself when it is one)."""
    hook = legacy_hook(m, name)
    names = underlying(hook) if hook is not None else (name,)
    out: list[torch.Tensor] = []
    for n in names:
        if parametrize.is_parametrized(m, n):
            out.extend(cast(nn.ModuleDict, m.parametrizations)[n].parameters(recurse=False))
        elif m._parameters.get(n) is not None:
            out.append(cast(torch.Tensor, m._parameters[n]))
    return out


def pin_shared(model: nn.Module, entries: Iterable[Entry], nodes: Nodes) -> None:
    """A Parameter shared by two modules (weight tying) cannot be cut differently for each: pin it."""
    owners: dict[int, list[Entry]] = {}
    for e in entries:
        for p in _backing(model.get_submodule(e.module), e.tensor):
            owners.setdefault(id(p), []).append(e)
    for shared in owners.values():
        if len({e.module for e in shared}) > 1:
            names = ", ".join(sorted({f"{e.module}.{e.tensor}" for e in shared}))
            for e in shared:
                nodes.fix(e.labels, f"one Parameter shared by {names}")


def build_graph(
    model: nn.Module,
    nodes: Nodes,
    sources: dict[str, np.ndarray],
    entries: list[Entry],
    positions: dict[str, int] | None = None,
) -> Graph:
    """Turn the tracer's nodes into groups (connected producers) and units (components)."""
    table = nodes.root_table()
    fixed = np.asarray(nodes.fixed, dtype=bool)
    names = list(sources)
    layer_roots = [Nodes.roots(table, sources[n]) for n in names]
    # producers sharing a component belong to one group: union each producer with the first
    # producer that holds each of its components
    parent = list(range(len(names)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if names:
        all_roots = np.concatenate(layer_roots)
        owner = np.repeat(np.arange(len(names)), [len(r) for r in layer_roots])
        uniq, first = np.unique(all_roots, return_index=True)
        first_owner = owner[first[np.searchsorted(uniq, all_roots)]]
        for a, b in set(zip(owner[owner != first_owner].tolist(), first_owner[owner != first_owner].tolist())):
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in range(len(names)):
        members.setdefault(find(i), []).append(i)

    groups: list[ChannelGroup] = []
    unit_roots: dict[str, np.ndarray] = {}
    for idx in members.values():
        joined = np.concatenate([layer_roots[i] for i in idx])
        uniq, first = np.unique(joined, return_index=True)
        order = np.argsort(first, kind="stable")  # node ids grow in trace order: units follow it
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        units = rank[np.searchsorted(uniq, joined)]
        roots = uniq[order]
        bounds = np.cumsum([0] + [len(layer_roots[i]) for i in idx])
        units_of = {names[i]: units[bounds[k] : bounds[k + 1]] for k, i in enumerate(idx)}
        prunable = ~fixed[roots]
        reasons = {int(u): nodes.reason.get(int(roots[u]), "") for u in np.flatnonzero(~prunable)}
        layers = tuple(names[i] for i in idx)
        groups.append(ChannelGroup(layers[0], layers, len(roots), prunable, reasons, units_of))
        unit_roots[layers[0]] = roots

    entry_roots = [Nodes.roots(table, e.labels) for e in entries]
    # parameter shapes after folding parametrizations, to predict counts after slimming
    # a legacy hook's tensor stands for the Parameters it is rebuilt from: weight_v (and weight_g,
    # whose normalized dim follows it) for weight norm, weight_orig for spectral norm
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    followers: dict[tuple[str, str], list[tuple[str, int]]] = {}
    counted: set[int] = set()
    for name in dict.fromkeys(e.module for e in entries):
        m = model.get_submodule(name)
        names = list(m._parameters)
        if parametrize.is_parametrized(m):
            plists = cast(nn.ModuleDict, m.parametrizations)
            names += list(plists.keys())
            for p in plists.parameters():
                counted.add(id(p))
        hook = legacy_hook(m)
        if hook is not None:
            names = [n for n in names if n not in underlying(hook)] + [hook.name]
            counted.update(id(p) for p in _backing(m, hook.name))
            if isinstance(hook, WeightNorm):
                names.append(hook.name + "_g")
                if hook_dim(m, hook) >= 0:
                    followers[(name, hook.name)] = [(hook.name + "_g", hook_dim(m, hook))]
        for t_name in names:
            t = value(m, t_name) if parametrize.is_parametrized(m, t_name) else getattr(m, t_name)
            if t is not None and t_name not in m._buffers:
                shapes[(name, t_name)] = tuple(t.shape)
                counted.add(id(m._parameters.get(t_name)))
    fixed_params = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return Graph(groups, unit_roots, entries, entry_roots, shapes, fixed_params, positions or {}, followers)


def log_graph(model: nn.Module, graph: Graph) -> None:
    """Log what the trace found: layers that never ran, opaque ops and layers, pinned groups."""
    untraced = graph.untraced
    if untraced:
        names = ", ".join(untraced[:10]) + (" ..." if len(untraced) > 10 else "")
        warn(
            f"{len(untraced)} layer(s) never ran on the example inputs and are left untouched: {names}. If forward "
            "can reach them with other inputs, pass those inputs as extra_inputs."
        )
    if graph.opaque_ops:
        logger.info("ops not modeled (their input channels stay): %s", graph.opaque_ops)
    for name, reason in graph.opaque_layers.items():
        logger.info("layer %s is opaque, its channels stay: %s", name, reason)
    for g in graph.groups:
        if g.num_prunable < g.size:
            logger.info(
                "group %s (%s): %d of %d channels stay: %s",
                g.name,
                ", ".join(g.layers),
                g.size - g.num_prunable,
                g.size,
                next(iter(g.reasons.values())),
            )
    if not any(g.num_prunable for g in graph.groups):
        warn(f"{type(model).__name__} has no channel that can be removed exactly:\n{graph.summary()}")
    logger.info("traced %d producers in %d channel groups", len(graph.layers), len(graph.groups))
