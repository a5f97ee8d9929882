"""Importance scores that need no training: each producer's filter L1 norm, per unit of a group.

Shared by the Pruner (its one-shot baseline, ``prune_now()``) and the latency budget (which plans
widths with L1 scores before any training has taught the scales). A group's score of a unit sums
each layer's value relative to that layer's mean, so every layer of the group has one vote.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .graph import Graph
from .layers import output_dim

__all__ = ["l1_plan", "l1_scores", "relative_sum"]


def relative_sum(rows: torch.Tensor) -> torch.Tensor:
    """Sum of the rows of a ``(layers, units)`` table, each divided by its mean."""
    total = torch.zeros_like(rows[0])
    for row in rows:
        total = total + row / row.mean().clamp_min(1e-12)
    return total


def l1_scores(model: nn.Module, graph: Graph, name: str) -> torch.Tensor:
    """Score per unit of group ``name``: each producer's filter L1 norm relative to its mean, summed.

    In float32 whatever the weights' dtype: a half or bfloat16 sum would round close filters to ties,
    and NumPy has no bfloat16.
    """
    g = graph.group(name)
    rows = []
    with torch.no_grad():
        for layer in g.layers:
            m = model.get_submodule(layer)
            weight: torch.Tensor = m.weight  # type: ignore[assignment]
            w = weight.detach().float().transpose(0, output_dim(m)).flatten(1).abs().sum(1)
            units = torch.as_tensor(g.channels(layer)[: w.numel()], dtype=torch.long, device=w.device)
            counts = torch.bincount(units, minlength=g.size).clamp_min(1).to(w.dtype)
            rows.append(torch.zeros(g.size, dtype=w.dtype, device=w.device).index_add(0, units, w) / counts)
        return relative_sum(torch.stack(rows))


def l1_plan(model: nn.Module, graph: Graph, removed: Mapping[str, int]) -> dict[str, list[int]]:
    """Per group, the ``removed[name]`` units of lowest :func:`l1_scores` that leave every layer a channel."""
    plan = {}
    for name, k in removed.items():
        if k:
            order = torch.argsort(l1_scores(model, graph, name).cpu(), stable=True).tolist()
            plan[name] = graph.group(name).pick(order, k)
    return plan
