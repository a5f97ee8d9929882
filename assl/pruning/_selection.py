"""Choosing channels: the scaled producers, their importance scores, and the units each group loses.

Each group that loses units has :class:`Carrier` objects: per-channel scales that say how loud
each unit is and that the penalty drives to zero, the weight-normalization scale ``g`` inserted on
a producer or the weight of a normalization layer; and the other per-channel Parameters between
them and the layers that read the channels (a hand-written shift or affine, a layer scale, a
depthwise convolution's filters and bias), which the penalty drives to zero too but which do not
score. A group's score of a unit sums each carrier's
``|scale|`` (or each producer's weight L1 norm) relative to that carrier's mean, so every carrier
of the group has one vote; the lowest-scoring units that leave every layer an output channel are
chosen.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import NamedTuple, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .._scoring import l1_scores, relative_sum
from ..errors import ArgumentError, ASSLError, warn
from ..graph import ChannelGroup, Graph
from ..layers import has_affine
from ._alignment import agreement, alignment_loss, consensus_loss
from ._scales import insert_scale

__all__ = ["Carrier", "CarrierPlan", "Scorer", "Selection", "carrier_plan", "claim", "owner_of", "release"]

Scorer = Callable[[str], torch.Tensor]
"""Group name -> one score per unit (lower goes first)."""

_OWNERS: weakref.WeakKeyDictionary[nn.Module, weakref.ref[object]] = weakref.WeakKeyDictionary()


def claim(modules: Iterable[nn.Module], owner: object) -> None:
    """Mark ``modules`` (a Pruner's carriers) as ``owner``'s while it lives.

    An inserted scale marks its layer in the model itself; a normalization layer that carries a
    group's channels in its own gamma and beta changes in nothing, so this is how a second Pruner
    on a BatchNorm network learns that the first one is there.
    """
    for m in modules:
        _OWNERS[m] = weakref.ref(owner)


def owner_of(module: nn.Module) -> object | None:
    """The living Pruner whose channels ``module`` carries, if any."""
    ref = _OWNERS.get(module)
    return ref() if ref is not None else None


def release(owner: object) -> None:
    """Forget ``owner``'s claims (its scales were removed again)."""
    for m, ref in list(_OWNERS.items()):
        if ref() is owner:
            del _OWNERS[m]


class Carrier:
    """One tensor of per-channel scales of a group: what says how loud each unit is, and what the
    penalty drives to zero.

    A producer whose output is read as it is carries its units in the weight-normalization scale
    ``g`` the Pruner inserts, with its bias. A producer read only by a normalization layer (conv ->
    BatchNorm) would have ``g`` undone by the normalization's statistics: there the channel's scale
    is the normalization's weight (gamma), with its bias (beta). Normalization layers further down a
    group's channels (after a residual add, or several reading one concat) carry them too: each
    turns a zero input into its beta, so their gamma and beta are driven to zero as well.

    Attributes:
        name: The module that holds the scale.
        kind: ``"g"`` (an inserted weight-normalization scale), ``"norm"`` (gamma and beta) or
            ``"param"`` (another per-channel Parameter on the way to the readers: penalized, not scored).
        scale: The Parameter whose entries ``scale_pos`` carry units ``scale_units``.
        bias: The bias that goes with it (``None`` if the module has none).
        channel_units: The unit of each output channel of the module (``-1``: not this group's).
    """

    def __init__(
        self,
        name: str,
        module: nn.Module,
        kind: str,
        scale: nn.Parameter,
        scale_units: np.ndarray,
        channel_units: np.ndarray,
        size: int,
    ) -> None:
        self.name = name
        self.module = module
        self.kind = kind
        self.scale = scale
        self.size = size
        device = scale.device
        bias = getattr(module, "bias", None)
        self.bias: nn.Parameter | None = bias if isinstance(bias, nn.Parameter) else None
        mine = scale_units >= 0
        self.scale_pos = torch.as_tensor(np.flatnonzero(mine), dtype=torch.long, device=device)
        self.scale_units = torch.as_tensor(scale_units[mine], dtype=torch.long, device=device)
        self.channel_units = torch.as_tensor(channel_units, dtype=torch.long, device=device)
        mine_b = channel_units >= 0
        self.bias_pos = torch.as_tensor(np.flatnonzero(mine_b), dtype=torch.long, device=device)
        self.bias_units = torch.as_tensor(channel_units[mine_b], dtype=torch.long, device=device)
        self.counts = torch.bincount(self.scale_units, minlength=size).clamp_min(1).to(scale.dtype)
        self.scale_idx = torch.zeros(0, dtype=torch.long)
        self.bias_idx = torch.zeros(0, dtype=torch.long)
        self.kept_bias_idx = torch.zeros(0, dtype=torch.long)

    @classmethod
    def weight_scale(cls, name: str, module: nn.Module, group: ChannelGroup) -> Carrier:
        """Insert a :class:`WeightScale` on producer ``module`` and carry its units in ``g``."""
        ws = insert_scale(module)
        units = group.channels(name)
        # a grouped ConvTranspose scales out/groups columns; its groups are tied channel by channel
        return cls(name, module, "g", ws.scale, units[: ws.scale.numel()], units, group.size)

    @classmethod
    def norm(cls, name: str, module: nn.Module, units: np.ndarray, size: int) -> Carrier:
        """Carry the units ``units`` (one per channel, ``-1``: not this group's) in gamma and beta."""
        return cls(name, module, "norm", module.weight, units, units, size)  # type: ignore[arg-type]

    @classmethod
    def param(cls, model: nn.Module, module: str, tensor: str, units: np.ndarray, size: int) -> Carrier:
        """Carry a per-channel Parameter on the way to the readers (a hand-written shift or affine, a layer
        scale, a depthwise conv's filters and bias): penalized with the group, not scored."""
        m = model.get_submodule(module)
        p = m._parameters[tensor]
        assert isinstance(p, nn.Parameter)  # carrier_plan only chooses Parameters
        c = cls(f"{module}.{tensor}" if module else tensor, m, "param", p, units, units, size)
        c.bias = None
        return c

    def per_unit(self, values: torch.Tensor) -> torch.Tensor:
        """Mean of per-entry ``values`` over the entries of each unit (differentiable)."""
        total = torch.zeros(self.size, dtype=values.dtype, device=values.device)
        units = self.scale_units.to(values.device)
        return total.index_add(0, units, values) / self.counts.to(device=values.device, dtype=values.dtype)

    def unit_scores(self) -> torch.Tensor:
        """``|scale|`` averaged over the entries of each unit (differentiable)."""
        return self.per_unit(self.scale.index_select(0, self.scale_pos.to(self.scale.device)).abs())

    def choose(self, units: torch.Tensor) -> None:
        """Mark ``units`` as chosen: the penalty then acts on their scale entries and biases (and
        ``guard_kept`` on the others')."""
        chosen = torch.zeros(self.size, dtype=torch.bool, device=self.scale_units.device)
        chosen[units.to(chosen.device)] = True
        self.scale_idx = self.scale_pos[chosen[self.scale_units]]
        self.bias_idx = self.bias_pos[chosen[self.bias_units]]
        self.kept_bias_idx = self.bias_pos[~chosen[self.bias_units]]

    def check_finite(self) -> None:
        """Raise, naming the layer, if its scale is NaN or inf."""
        if not bool(torch.isfinite(self.scale).all()):
            raise ASSLError(
                f"the scales of `{self.name}` contain NaN or inf: training diverged (lower the learning "
                f"rate or the penalty); the model is left as it is"
            )


def _parametrized(module: nn.Module) -> str:
    """What parametrizes the gamma or beta of a normalization layer (``""``: nothing)."""
    if not parametrize.is_parametrized(module):
        return ""
    plists = cast(nn.ModuleDict, module.parametrizations)
    found = [
        f"{t} by {', '.join(type(p).__name__ for p in cast(nn.ModuleList, plists[t]))}"
        for t in ("weight", "bias")
        if t in plists
    ]
    return "; ".join(found)


class Selection:
    """Which units each group loses: scores, the chosen units, and the carriers of each group.

    Args:
        model: The model the graph was traced from (its producers' weights give the L1 scores).
        graph: The traced graph.
        removed: Units each group loses (groups losing none are absent from ``carriers``).
        carriers: Group name -> its :class:`Carrier` objects (producers first, then norms).
    """

    def __init__(
        self, model: nn.Module, graph: Graph, removed: Mapping[str, int], carriers: Mapping[str, list[Carrier]]
    ) -> None:
        self.model = model
        self.graph = graph
        self.removed = removed
        self.layers = dict(carriers)
        self.chosen: dict[str, list[int]] = {}

    @classmethod
    def build(cls, model: nn.Module, graph: Graph, removed: Mapping[str, int], *, frozen: bool = True) -> Selection:
        """Find each pruned group's carriers and insert the scales they need; check everything first.

        Args:
            frozen: Whether normalization layers whose gamma or beta is frozen (``requires_grad=False``)
                may carry channels: the shrink acts on the entries themselves and drives them to
                zero anyway; the gradient form, acting only through gradients, would leave them.

        Raises:
            ASSLError: The weight of a producer to be scaled holds NaN or inf (the scale would
                start there); the model is left as it is.
            ValueError: A normalization layer without affine parameters, or with a parametrized
                gamma or beta, renormalizes channels that could be removed: no penalty can drive
                them to zero there; or (``frozen=False``) one whose gamma or beta is frozen.
        """
        plans: dict[str, CarrierPlan] = {}
        unscalable: list[str] = []
        reparametrized: list[str] = []
        frozen_norms: list[str] = []
        for g in graph.groups:
            if not removed[g.name]:
                continue
            plans[g.name] = plan = carrier_plan(model, graph, g)
            for n in plan.norms:
                m = model.get_submodule(n)
                wrapped = _parametrized(m)
                if wrapped:
                    reparametrized.append(f"`{n}` (group {g.name}: {wrapped})")
                elif n in plan.plain:
                    unscalable.append(f"`{n}` (group {g.name})")
                elif not frozen and not (m.weight.requires_grad and m.bias.requires_grad):
                    frozen_norms.append(f"`{n}` (group {g.name})")
        if reparametrized:
            raise ArgumentError(
                f"{', '.join(reparametrized)}: the gamma or beta of these normalization layers is parametrized, so the "
                f"penalty, which drives a chosen channel's gamma and beta to zero through their Parameters, cannot "
                f"reach what the layer computes from them. Remove the parametrization, or skip the group's layers "
                f"(skip=[...])"
            )
        if unscalable:
            raise ArgumentError(
                f"{', '.join(unscalable)} normalize(s) channels that could be removed without affine parameters, so "
                f"no penalty can drive those channels to zero: give the normalization affine=True, or skip the "
                f"group's layers (skip=[...])"
            )
        if frozen_norms:
            raise ArgumentError(
                f"{', '.join(frozen_norms)} carry channels that could be removed in a gamma or beta that is frozen "
                f"(requires_grad=False), and penalty_form='gradient' acts only through gradients, so those channels "
                f"would never be driven to zero: use penalty_form='shrink' (it shrinks the entries themselves, "
                f"frozen ones too), unfreeze them, or skip the group's layers (skip=[...])"
            )
        modules = {n: model.get_submodule(n) for plan in plans.values() for n in plan.scaled}
        for n, m in modules.items():
            weight = m.weight
            if isinstance(weight, torch.Tensor) and not bool(torch.isfinite(weight).all()):
                raise ASSLError(f"the weight of `{n}` contains NaN or inf; the model is left as it is")
        carriers: dict[str, list[Carrier]] = {}
        for name, plan in plans.items():  # the only change to the model, after every check
            g = graph.group(name)
            carriers[name] = (
                [Carrier.weight_scale(n, modules[n], g) for n in plan.scaled]
                + [Carrier.norm(n, model.get_submodule(n), units, g.size) for n, units in plan.norms.items()]
                + [Carrier.param(model, module, tensor, units, g.size) for module, tensor, units in plan.params]
            )
        return cls(model, graph, removed, carriers)

    def all_layers(self) -> Iterator[Carrier]:
        """Every carrier, group by group."""
        for layers in self.layers.values():
            yield from layers

    def penalized_parameters(self) -> list[nn.Parameter]:
        """Every carrier's scale and bias, each Parameter once."""
        carriers = list(self.all_layers())
        params = [c.scale for c in carriers] + [c.bias for c in carriers if c.bias is not None]
        return list({id(p): p for p in params}.values())

    def unit_scales(self, name: str) -> torch.Tensor:
        """A detached copy of :meth:`unit_table`.

        Raises:
            ValueError: Group ``name`` loses no channels (it has no carriers).
        """
        if name not in self.layers:
            raise ArgumentError(f"group {name!r} has no scales; groups that lose channels: {sorted(self.layers)}")
        with torch.no_grad():
            return self.unit_table(name).clone()

    def unit_table(self, name: str) -> torch.Tensor:
        """``|scale|`` per unit of group ``name``, one row per scale or norm carrier (differentiable)."""
        return torch.stack([layer.unit_scores() for layer in self.layers[name] if layer.kind != "param"])

    def alignment_loss(self, groups: Iterable[str], form: str) -> torch.Tensor:
        """The alignment loss of ``groups`` (see :mod:`assl.alignment`), differentiable.

        ``"authors"``: the paper's term summed over groups; ``"consensus"``: the mean over groups
        of a term bounded by 0.25, so the total stays bounded for any number of groups.
        """
        if form == "authors":
            return torch.stack([alignment_loss(self.unit_table(g), self.removed[g]) for g in groups]).sum()
        return torch.stack([consensus_loss(self.unit_table(g), self.removed[g]) for g in groups]).mean()

    def agreement(self, groups: Iterable[str]) -> dict[str, float]:
        """Per group, ``_alignment.agreement`` of its carriers' current scales."""
        with torch.no_grad():
            return {g: agreement(self.unit_table(g), self.removed[g]) for g in groups}

    def scale_scores(self, name: str) -> torch.Tensor:
        """Group score per unit: each carrier's ``|scale|`` per unit relative to its mean, summed."""
        self.check_finite(self.layers[name])
        with torch.no_grad():
            return relative_sum(self.unit_table(name))

    def l1_scores(self, name: str) -> torch.Tensor:
        """Group score per unit from the producers' filter L1 norms, each relative to its mean."""
        return l1_scores(self.model, self.graph, name)

    def choose(self, name: str, scores: torch.Tensor) -> None:
        """Choose the lowest-scoring units of group ``name`` that leave every layer a channel."""
        g = self.graph.group(name)
        order = torch.argsort(scores.detach().cpu(), stable=True).tolist()
        chosen = g.pick(order, self.removed[name])
        if len(chosen) < self.removed[name]:
            warn(f"group {name}: only {len(chosen)} of {self.removed[name]} units can go without emptying a layer")
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

    def check_finite(self, layers: Iterable[Carrier] | None = None) -> None:
        """Raise, naming the layer, if a scale (of ``layers``, default all) is NaN or inf.

        One reduction and one read of its result (one device synchronization) when all are finite.
        """
        carriers = list(layers if layers is not None else self.all_layers())
        if not carriers:
            return
        device = carriers[0].scale.device
        finite = torch.stack([torch.isfinite(c.scale.detach()).all().to(device) for c in carriers]).all()
        if not bool(finite):
            for c in carriers:
                c.check_finite()

    def describe(self) -> str:
        """``group: units chosen`` for each group chosen so far."""
        return ", ".join(f"{k}: {len(v)}" for k, v in self.chosen.items())


class CarrierPlan(NamedTuple):
    """Where a group's channels are scaled and penalized, decided from the graph before any change.

    Attributes:
        scaled: Producers that get a weight-normalization scale ``g``.
        norms: Affine normalization layers that carry the units (layer -> unit per channel).
        params: Other per-channel Parameters the masked model zeroes on the way to the readers
            (``module, tensor, unit per entry``): penalized with the group.
        unreached: Tensors the masked model zeroes that no penalty reaches (buffers, frozen
            Parameters, dims other than the first): ``module, tensor, dim, unit per entry``.
        plain: Normalization layers without affine parameters on the units (refused).
    """

    scaled: list[str]
    norms: dict[str, np.ndarray]
    params: list[tuple[str, str, np.ndarray]]
    unreached: list[tuple[str, str, int, np.ndarray]]
    plain: list[str]


def carrier_plan(model: nn.Module, graph: Graph, g: ChannelGroup) -> CarrierPlan:
    """The carriers of group ``g``: scales, norms and the per-channel Parameters on the way."""
    norms = {n: np.where(g.prunable[u] & (u >= 0), u, -1) for n, u in graph.norms_of(g.name).items()}
    norms = {n: u for n, u in norms.items() if (u >= 0).any()}
    plain = [n for n in norms if not has_affine(model.get_submodule(n))]
    affine = set(norms) - set(plain)
    scaled = [p for p in g.layers if not (p in graph.normalized and set(graph.normalized[p]) <= affine)]
    # what the scales and norms already silence: the producers' rows, the norms' affine parameters
    # and their running mean (multiplied by a weight driven to zero)
    covered = {(m, t) for m in g.layers for t in ("weight", "bias")}
    covered |= {(n, t) for n in affine for t in ("weight", "bias", "running_mean")}
    params: list[tuple[str, str, np.ndarray]] = []
    unreached: list[tuple[str, str, int, np.ndarray]] = []
    for module, tensor, dim, units in graph.carried(g.name):
        units = np.where((units >= 0) & g.prunable[np.maximum(units, 0)], units, -1)
        if (module, tensor) in covered or not (units >= 0).any():
            continue
        p = model.get_submodule(module)._parameters.get(tensor)
        if isinstance(p, nn.Parameter) and p.requires_grad and dim == 0 and p.ndim >= 1:
            params.append((module, tensor, units))
        else:
            unreached.append((module, tensor, dim, units))
    return CarrierPlan(scaled, norms, params, unreached, plain)
