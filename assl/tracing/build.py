"""From the tracer's channel nodes to the :class:`~assl.Graph`: groups, units and cut tensors."""

from __future__ import annotations

from typing import cast

import numpy as np
from torch import nn
from torch.nn.utils import parametrize

from ..graph import ChannelGroup, Entry, Graph
from .channels import Nodes

__all__ = ["build_graph"]


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
    shapes: dict[tuple[str, str], tuple[int, ...]] = {}
    counted: set[int] = set()
    for name in dict.fromkeys(e.module for e in entries):
        m = model.get_submodule(name)
        names = list(m._parameters)
        if parametrize.is_parametrized(m):
            plists = cast(nn.ModuleDict, m.parametrizations)
            names += list(plists.keys())
            for p in plists.parameters():
                counted.add(id(p))
        for t_name in names:
            t = getattr(m, t_name)
            if t is not None and t_name not in m._buffers:
                shapes[(name, t_name)] = tuple(t.shape)
                counted.add(id(m._parameters.get(t_name)))
    fixed_params = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return Graph(groups, unit_roots, entries, entry_roots, shapes, fixed_params, positions or {})
