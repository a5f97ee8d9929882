"""The traced graph: channel groups, the tensors that follow them, and plans over them.

A *group* is a set of producer layers (convolutions, Linear) whose output channels are tied:
removing a *unit* of the group removes the tied channels of all of them, and the matching input
channels of every consumer and per-channel parameter after them. A *plan* maps group names (or
any producer layer in the group) to the unit indices to remove.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from ._unit_index import UnitIndex
from .errors import ArgumentTypeError, PlanError

__all__ = ["ChannelGroup", "Entry", "Graph", "Plan"]

Plan = Mapping[str, Iterable[int]]
"""Group name (or a producer layer of the group) -> unit indices to remove."""


@dataclass
class Entry:
    """One dimension of one tensor of one module whose indices follow channel nodes.

    ``role`` is ``"zero"`` when the masked model zeroes the removed indices (producers' rows,
    biases, per-channel affine parameters) and ``"slice"`` when they are only cut out
    (consumers' input channels, running variances).
    """

    module: str
    tensor: str
    dim: int
    labels: np.ndarray
    role: str


@dataclass(frozen=True)
class ChannelGroup:
    """Output channels of one or more producer layers that must be removed together.

    Attributes:
        name: The group's name: its first producer layer in forward order.
        layers: The producer layers whose output channels make the group.
        size: Number of units. Unit ``u`` is channel ``u`` of the first layer, or the block of
            channels a PixelShuffle merges, or channel ``u`` of every group of a grouped conv.
        prunable: Per unit, whether it can be removed.
        reasons: Why each unremovable unit must stay (unit -> reason).
    """

    name: str
    layers: tuple[str, ...]
    size: int
    prunable: np.ndarray
    reasons: Mapping[int, str]
    units_of: Mapping[str, np.ndarray] = field(repr=False)

    @property
    def num_prunable(self) -> int:
        """Number of units that can be removed."""
        return int(self.prunable.sum())

    def channels(self, layer: str) -> np.ndarray:
        """The unit of each output channel of ``layer`` (an array as long as its channels)."""
        return self.units_of[layer]

    def pick(self, order: Iterable[int], k: int) -> list[int]:
        """The first ``k`` prunable units of ``order`` that leave every layer a channel, sorted.

        A concat feeding a residual add puts different layers' channels in one group: removing
        all of one layer's units would leave it without outputs, so such units are passed over.
        """
        left: dict[str, int] = {}
        users: dict[int, list[str]] = {u: [] for u in range(self.size)}
        for layer, units in self.units_of.items():
            mine = np.unique(units)
            left[layer] = len(mine)
            for u in mine.tolist():
                users[u].append(layer)
        chosen: list[int] = []
        for u in order:
            if len(chosen) == k:
                break
            if self.prunable[u] and all(left[layer] > 1 for layer in users[u]):
                chosen.append(int(u))
                for layer in users[u]:
                    left[layer] -= 1
        return sorted(chosen)


class Graph:
    """Producers, consumers and channel groups of a traced model. Made by :func:`assl.trace`."""

    def __init__(
        self,
        groups: list[ChannelGroup],
        unit_roots: dict[str, np.ndarray],
        entries: list[Entry],
        entry_roots: list[np.ndarray],
        shapes: dict[tuple[str, str], tuple[int, ...]],
        fixed_params: int,
        positions: dict[str, int],
        followers: dict[tuple[str, str], list[tuple[str, int]]] | None = None,
    ) -> None:
        self.groups: tuple[ChannelGroup, ...] = tuple(groups)
        self.layers: tuple[str, ...] = tuple(layer for g in groups for layer in g.layers)
        self.untraced: tuple[str, ...] = ()
        self.opaque_ops: dict[str, int] = {}
        self.opaque_layers: dict[str, str] = {}
        """Known layers traced as opaque (their channels stay) -> why."""
        self.module_names: tuple[str, ...] = ()
        """Every named submodule of the traced model, in ``named_modules`` order."""
        self._by_name = {g.name: g for g in groups}
        self._group_of = {layer: g for g in groups for layer in g.layers}
        self._unit_roots = unit_roots
        self._entries = entries
        self._entry_roots = entry_roots
        self._shapes = shapes
        self._fixed_params = fixed_params
        self._positions = positions
        self._followers = followers or {}
        self._norm_roots: dict[str, np.ndarray] = {}
        self.normalized: dict[str, tuple[str, ...]] = {}
        self.samples: int = 1
        """Samples in the example inputs (the first dimension of their first tensor): MACs are per sample."""
        self._unit_index: UnitIndex | None = None

    def set_norms(self, norm_roots: Mapping[str, np.ndarray], normalized: Mapping[str, tuple[str, ...]]) -> None:
        """Record the normalization layers: the channel components each renormalizes, and
        ``normalized``: producer -> the normalization layers that alone read its raw output."""
        self._norm_roots = dict(norm_roots)
        self.normalized = dict(normalized)
        self._unit_index = None

    def norms_of(self, group: str) -> dict[str, np.ndarray]:
        """Normalization layers that renormalize units of ``group``, in trace order.

        Returns:
            Layer name -> the unit of each of its channels (``-1`` for channels of other groups
            or channels that cannot go).
        """
        index = self._index()
        g = index.number[self.group(group).name]
        out = {}
        for name, roots in self._norm_roots.items():
            if g in index.norm_groups[name]:
                out[name] = index.units(g, roots)
        return out

    def readers(self, group: str) -> dict[str, np.ndarray]:
        """The layers that read the units of ``group``: convolutions and Linear layers consuming them.

        Returns:
            Layer name -> the unit of each index along its weight's input dimension (``-1`` for
            channels of other groups); input channel ``c`` of a grouped convolution is index
            ``c % len(units)``.
        """
        index = self._index()
        g = index.number[self.group(group).name]
        out: dict[str, np.ndarray] = {}
        for i in index.entries_of.get(g, ()):
            e = self._entries[i]
            if e.tensor == "weight" and e.role == "slice" and e.module in self._positions:
                out[e.module] = index.units(g, self._entry_roots[i])
        return out

    def carried(self, group: str) -> list[tuple[str, str, int, np.ndarray]]:
        """Tensors the masked model zeroes along the units of ``group`` (producers' rows, norm and
        per-channel parameters on the way to the readers): ``(module, tensor, dim, unit per index)``."""
        index = self._index()
        g = index.number[self.group(group).name]
        out = []
        for i in index.entries_of.get(g, ()):
            e = self._entries[i]
            if e.role == "zero":
                out.append((e.module, e.tensor, e.dim, index.units(g, self._entry_roots[i])))
        return out

    def _index(self) -> UnitIndex:
        if self._unit_index is None:
            self._unit_index = UnitIndex(self._unit_roots, self._entry_roots, self._norm_roots)
        return self._unit_index

    # --- groups ------------------------------------------------------------------------------

    def group(self, name: str) -> ChannelGroup:
        """The group named ``name``, or the group that producer layer ``name`` belongs to.

        Raises:
            PlanError: No group or producer layer has that name.
        """
        g = self._by_name.get(name) or self._group_of.get(name)
        if g is None:
            close = difflib.get_close_matches(name, list(self._group_of), n=3)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise PlanError(
                f"no traced producer layer or group is named {name!r}.{hint} Producers are the "
                f"Conv/ConvTranspose/Linear layers that ran during trace(); see graph.summary()."
            )
        return g

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module with a tensor that slimming can cut, in trace order."""
        return tuple(dict.fromkeys(e.module for e in self._entries))

    # --- plans -------------------------------------------------------------------------------

    def validate(self, plan: Plan) -> dict[str, np.ndarray]:
        """Check a plan and return it keyed by group name with sorted unit arrays.

        Raises:
            PlanError: Unknown layer, a unit out of range or listed twice, a unit that cannot be
                removed, all units of a group, or two keys naming the same group.
            TypeError: The plan is not a mapping of names to integer sequences.
        """
        if not isinstance(plan, Mapping):
            raise ArgumentTypeError(f"a plan is a mapping of group name -> unit indices, got {type(plan).__name__}")
        out: dict[str, np.ndarray] = {}
        key_of: dict[str, str] = {}
        for key, units in plan.items():
            if not isinstance(key, str):
                raise ArgumentTypeError(f"plan keys are layer or group names (str), got {key!r}")
            g = self.group(key)
            if g.name in key_of:
                raise PlanError(f"plan keys {key_of[g.name]!r} and {key!r} name the same group {g.name!r}")
            key_of[g.name] = key
            try:
                idx = np.asarray(list(units), dtype=np.int64)
            except (TypeError, ValueError) as e:
                raise ArgumentTypeError(f"plan[{key!r}] must be a sequence of ints") from e
            if idx.size == 0:
                continue
            if idx.min() < 0 or idx.max() >= g.size:
                bad = idx[(idx < 0) | (idx >= g.size)][0]
                raise PlanError(
                    f"plan[{key!r}] names channel {bad}, but group {g.name!r} has {g.size} (0..{g.size - 1})"
                )
            if len(np.unique(idx)) != len(idx):
                raise PlanError(f"plan[{key!r}] lists a channel twice")
            stuck = [int(u) for u in idx if not g.prunable[u]]
            if stuck:
                raise PlanError(
                    f"plan[{key!r}] removes channel {stuck[0]} of group {g.name!r}, which must stay: "
                    f"{g.reasons.get(stuck[0], 'it cannot be removed')}"
                )
            if len(idx) >= g.size:
                raise PlanError(
                    f"plan[{key!r}] removes all {g.size} channels of group {g.name!r} "
                    f"({', '.join(g.layers)}); keep at least one"
                )
            for layer, units in g.units_of.items():
                if np.isin(units, idx).all():
                    raise PlanError(
                        f"plan[{key!r}] removes every output channel of `{layer}` (group {g.name!r}); "
                        f"keep at least one of its channels {sorted(set(units.tolist()))}"
                    )
            out[g.name] = np.sort(idx)
        return out

    def removed_roots(self, plan: Plan) -> np.ndarray:
        """The internal channel components a (validated) plan removes."""
        parts = [self._unit_roots[name][idx] for name, idx in self.validate(plan).items()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def cuts(self, plan: Plan) -> list[tuple[Entry, np.ndarray]]:
        """Each cut tensor dimension with the boolean keep mask the plan gives it."""
        removed = self.removed_roots(plan)
        return [(e, ~np.isin(r, removed)) for e, r in zip(self._entries, self._entry_roots)]

    def _shapes_after(self, plan: Plan | None) -> dict[tuple[str, str], list[int]]:
        return self._shapes_without(self.removed_roots(plan) if plan else None)

    def _shapes_without(self, removed: np.ndarray | None) -> dict[tuple[str, str], list[int]]:
        shapes = {k: list(s) for k, s in self._shapes.items()}
        if removed is not None and removed.size:
            gone = np.zeros(int(max(removed.max(), *(r.max() for r in self._entry_roots if r.size))) + 2, dtype=bool)
            gone[removed] = True  # a lookup table: np.isin per entry costs more than the whole count
            for e, roots in zip(self._entries, self._entry_roots):
                kept = int(len(roots) - gone[roots].sum())  # FIXED (-1) reads the last slot, never set
                key = (e.module, e.tensor)
                if key in shapes:
                    shapes[key][e.dim] = kept
                for other, dim in self._followers.get(key, []):  # weight_g of a legacy weight norm
                    if dim == e.dim and (e.module, other) in shapes:
                        shapes[(e.module, other)][dim] = kept
        return shapes

    def count_params_removing(self, units: Mapping[str, Iterable[int]]) -> int:
        """Parameters left after removing ``units`` (group -> unit indices), even units that must stay.

        What a plan would leave were nothing pinned; :meth:`count_params` counts a valid plan.
        """
        roots = {name: self._unit_roots[self.group(name).name] for name in units}
        parts = [roots[name][np.asarray(list(u), dtype=np.int64)] for name, u in units.items()]
        removed = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self._fixed_params + sum(math.prod(s) for s in self._shapes_without(removed).values())

    def count_params(self, plan: Plan | None = None) -> int:
        """Parameters of the model after slimming with ``plan`` (of the dense model if None).

        Weight parametrizations of traced layers are counted as the plain weight they fold into.
        """
        return self._fixed_params + sum(math.prod(s) for s in self._shapes_after(plan).values())

    def count_macs(self, plan: Plan | None = None) -> int:
        """Multiply-accumulates per sample of the convolutions and Linear layers on the example inputs.

        After slimming with ``plan`` (dense if None): each call of a layer costs its output
        positions (input positions for a transposed convolution) times the size of its weight;
        the sum over the example inputs is divided by their batch size (:attr:`samples`).
        Biases, activations, norms and other operations are not counted; ``extra_inputs`` are not
        either.
        """
        shapes = self._shapes_after(plan)
        total = sum(n * math.prod(shapes[(layer, "weight")]) for layer, n in self._positions.items())
        return (total + self.samples // 2) // self.samples

    def unit_costs(self, kind: str = "params") -> dict[str, np.ndarray]:
        """Per group, what removing each unit alone saves: parameters, or MACs per sample.

        Units can cost different amounts (a concat of a 7x7 and a 1x1 conv added to a third).
        """
        sizes = [r.max() for r in self._entry_roots if r.size] + [r.max() for r in self._unit_roots.values() if r.size]
        saved = np.zeros(int(max(sizes, default=0)) + 1)
        for e, roots in zip(self._entries, self._entry_roots):
            shape = self._shapes.get((e.module, e.tensor))
            if shape is None or (kind == "macs" and e.tensor != "weight"):
                continue
            calls = self._positions.get(e.module, 0) / self.samples if kind == "macs" else 1
            per = math.prod(shape) / shape[e.dim] * calls
            np.add.at(saved, roots[roots >= 0], per)
        return {name: saved[roots] for name, roots in self._unit_roots.items()}

    def weight_shares(self) -> dict[str, tuple[tuple[int, ...], int, dict[int, dict[str, float]]]]:
        """Per layer with MACs whose weight slimming cuts: its dense weight shape, the calls' output
        positions, and per cut dimension the channels each group's unit holds there.

        A dimension of size ``D`` with shares ``{g: s}`` keeps ``D - sum(s * removed[g])`` entries.
        """
        out: dict[str, tuple[tuple[int, ...], int, dict[int, dict[str, float]]]] = {}
        for e, roots in zip(self._entries, self._entry_roots):
            shape = self._shapes.get((e.module, e.tensor))
            if e.tensor != "weight" or shape is None or e.module not in self._positions:
                continue
            shares = out.setdefault(e.module, (shape, self._positions[e.module], {}))[2].setdefault(e.dim, {})
            for name, units in self._unit_roots.items():
                hits = int(np.isin(roots, units).sum())
                if hits:
                    shares[name] = shares.get(name, 0.0) + hits / len(units)
        return out

    def groups_through(self, module: str) -> tuple[str, ...]:
        """The groups whose units have a tensor of ``module`` cut (its weight rows, its norm
        parameters, a depthwise conv's filters), in trace order; empty for a module slimming
        never touches.
        """
        roots = [r for e, r in zip(self._entries, self._entry_roots) if e.module == module]
        if not roots:
            return ()
        mine = np.concatenate(roots)
        return tuple(name for name, units in self._unit_roots.items() if np.isin(units, mine).any())

    def summary(self) -> str:
        """A table of the groups: name, producers, units, removable units and why others stay.

        Layers traced as opaque (their channels stay) follow the table, each with its reason.
        """
        rows = [("group", "layers", "channels", "prunable", "why some stay")]
        for g in self.groups:
            why = next(iter(g.reasons.values()), "")
            rows.append((g.name, str(len(g.layers)), str(g.size), str(g.num_prunable), why))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        if self.opaque_layers:
            lines.append("opaque layers (their channels stay):")
            lines += [f"  {name}: {reason}" for name, reason in self.opaque_layers.items()]
        return "\n".join(line.rstrip() for line in lines)

    def __repr__(self) -> str:
        return f"Graph({len(self.groups)} groups, {len(self.layers)} producers)"
