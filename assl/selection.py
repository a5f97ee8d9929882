"""Choosing channels: the scaled producers, their importance scores, and the units each group loses.

Each group that loses units has one :class:`ScaledLayer` per producer: the per-filter scale ``g``
inserted on its weight, and the unit each scale entry and each output channel stands for. A
group's score of a unit sums each layer's ``|g|`` (or weight L1 norm) relative to that layer's
mean, so every layer of the group has one vote; the lowest-scoring units that leave every layer
an output channel are chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import nn

from .errors import ASSLError
from .graph import ChannelGroup, Graph
from .layers import output_dim
from .scales import WeightScale, insert_scale

__all__ = ["ScaledLayer", "Selection"]

logger = logging.getLogger("assl")

Scorer = Callable[[str], torch.Tensor]
"""Group name -> one score per unit (lower goes first)."""


class ScaledLayer:
    """A scaled producer: its scale, bias, and the units of its scale entries and channels."""

    def __init__(self, name: str, module: nn.Module, ws: WeightScale, group: ChannelGroup) -> None:
        self.name = name
        self.module = module
        self.ws = ws
        bias = getattr(module, "bias", None)
        self.bias: nn.Parameter | None = bias if isinstance(bias, nn.Parameter) else None
        units = group.channels(name)
        n = ws.scale.numel()
        # a grouped ConvTranspose scales out/groups columns; its groups are tied channel by channel
        self.scale_units = torch.as_tensor(units[:n], dtype=torch.long, device=ws.scale.device)
        self.channel_units = torch.as_tensor(units, dtype=torch.long, device=ws.scale.device)
        self.counts = torch.bincount(self.scale_units, minlength=group.size).clamp_min(1).to(ws.scale.dtype)
        self.size = group.size
        self.scale_idx = torch.zeros(0, dtype=torch.long)
        self.bias_idx = torch.zeros(0, dtype=torch.long)

    def per_unit(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of per-scale-entry ``values`` over the entries of each unit (differentiable)."""
        total = torch.zeros(self.size, dtype=values.dtype, device=values.device)
        return total.index_add(0, self.scale_units.to(values.device), values) / self.counts.to(values.device)

    def unit_scores(self) -> torch.Tensor:
        """``|g|`` averaged over the channels of each unit (differentiable)."""
        return self.per_unit(self.ws.scale.abs())

    def l1_scores(self) -> torch.Tensor:
        """The L1 norm of each filter, averaged over the channels of each unit."""
        weight: torch.Tensor = self.module.weight  # type: ignore[assignment]
        return self.per_unit(weight.detach().transpose(0, output_dim(self.module)).flatten(1).abs().sum(1))

    def choose(self, units: torch.Tensor) -> None:
        """Mark ``units`` as chosen: the penalty then acts on their scale entries and biases."""
        chosen = torch.zeros(self.size, dtype=torch.bool, device=self.scale_units.device)
        chosen[units.to(chosen.device)] = True
        self.scale_idx = chosen[self.scale_units].nonzero().flatten()
        self.bias_idx = chosen[self.channel_units].nonzero().flatten()

    def check_finite(self) -> None:
        """Raise, naming the layer, if its scale is NaN or inf."""
        if not bool(torch.isfinite(self.ws.scale).all()):
            raise ASSLError(
                f"the scales of `{self.name}` contain NaN or inf: training diverged (lower the learning "
                f"rate or the penalty); the model is left as it is"
            )


class Selection:
    """Which units each group loses: scores, the chosen units, and the layers that carry them.

    Args:
        graph: The traced graph.
        removed: Units each group loses (groups losing none are absent from ``layers``).
        layers: Group name -> its scaled producers, in ``graph.group(name).layers`` order.
    """

    def __init__(self, graph: Graph, removed: Mapping[str, int], layers: Mapping[str, list[ScaledLayer]]) -> None:
        self.graph = graph
        self.removed = removed
        self.layers = dict(layers)
        self.chosen: dict[str, list[int]] = {}

    @classmethod
    def insert_scales(cls, model: nn.Module, graph: Graph, removed: Mapping[str, int]) -> Selection:
        """Insert a scale on every producer of each group that loses units; check everything first.

        Raises:
            ASSLError: The weight of such a producer holds NaN or inf (the scale would start there);
                the model is left as it is.
        """
        modules = {n: model.get_submodule(n) for g in graph.groups if removed[g.name] for n in g.layers}
        for n, m in modules.items():
            weight = m.weight
            if isinstance(weight, torch.Tensor) and not bool(torch.isfinite(weight).all()):
                raise ASSLError(f"the weight of `{n}` contains NaN or inf; the model is left as it is")
        layers = {
            g.name: [ScaledLayer(n, modules[n], insert_scale(modules[n]), g) for n in g.layers]
            for g in graph.groups
            if removed[g.name]
        }
        return cls(graph, removed, layers)

    def all_layers(self) -> Iterator[ScaledLayer]:
        """Every scaled producer, group by group."""
        for layers in self.layers.values():
            yield from layers

    def unit_table(self, name: str) -> torch.Tensor:
        """``|g|`` per unit of group ``name``, one row per layer (differentiable)."""
        return torch.stack([layer.unit_scores() for layer in self.layers[name]])

    def scale_scores(self, name: str) -> torch.Tensor:
        """Group score per unit: each layer's ``|g|`` per unit relative to its mean, summed."""
        self.check_finite(self.layers[name])
        with torch.no_grad():
            return _relative_sum(self.unit_table(name))

    def l1_scores(self, name: str) -> torch.Tensor:
        """Group score per unit from the filters' L1 norms, each layer relative to its mean."""
        with torch.no_grad():
            return _relative_sum(torch.stack([layer.l1_scores() for layer in self.layers[name]]))

    def choose(self, name: str, scores: torch.Tensor) -> None:
        """Choose the lowest-scoring units of group ``name`` that leave every layer a channel."""
        g = self.graph.group(name)
        order = torch.argsort(scores.detach().cpu(), stable=True).tolist()
        chosen = g.pick(order, self.removed[name])
        if len(chosen) < self.removed[name]:
            logger.warning(
                "group %s: only %d of %d units can go without emptying a layer", name, len(chosen), self.removed[name]
            )
        self.set(name, chosen)

    def set(self, name: str, units: Iterable[int]) -> None:
        """Make ``units`` the chosen units of group ``name``."""
        self.chosen[name] = [int(u) for u in units]
        index = torch.as_tensor(self.chosen[name], dtype=torch.long)
        for layer in self.layers[name]:
            layer.choose(index)

    def choose_all(self, scorer: Scorer) -> None:
        """Choose the units of every group that has none chosen yet, by ``scorer``."""
        for name in self.layers:
            if name not in self.chosen:
                self.choose(name, scorer(name))

    def complete(self) -> bool:
        """Whether every group has its units chosen."""
        return len(self.chosen) == len(self.layers)

    def check_finite(self, layers: Iterable[ScaledLayer] | None = None) -> None:
        """Raise, naming the layer, if a scale (of ``layers``, default all) is NaN or inf."""
        for layer in layers if layers is not None else self.all_layers():
            layer.check_finite()

    def describe(self) -> str:
        """``group: units chosen`` for each group chosen so far."""
        return ", ".join(f"{k}: {len(v)}" for k, v in self.chosen.items())


def _relative_sum(rows: torch.Tensor) -> torch.Tensor:
    """Sum of the rows of a ``(layers, units)`` table, each divided by its mean."""
    total = torch.zeros_like(rows[0])
    for row in rows:
        total = total + row / row.mean().clamp_min(1e-12)
    return total
