"""Which group and unit each channel component of a traced graph is, and which tensors touch each group.

Built once per :class:`~assl.Graph` when first asked, so that per-group questions (the norms, the
readers and the carried tensors of a group) cost the group's entries, not every entry of the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["UnitIndex"]


class UnitIndex:
    """Which group and unit each channel component is, and which entries and norms touch each group."""

    def __init__(
        self, unit_roots: Mapping[str, np.ndarray], entry_roots: list[np.ndarray], norm_roots: Mapping[str, np.ndarray]
    ) -> None:
        sizes = [r.max() for r in (*unit_roots.values(), *entry_roots, *norm_roots.values()) if r.size]
        n = int(max(sizes, default=0)) + 1
        self.group = np.full(n, -1, dtype=np.int64)
        self.unit = np.full(n, -1, dtype=np.int64)
        self.number = {name: i for i, name in enumerate(unit_roots)}
        for i, roots in enumerate(unit_roots.values()):
            self.group[roots] = i
            self.unit[roots] = np.arange(len(roots))
        self.entries_of: dict[int, list[int]] = {}
        for i, roots in enumerate(entry_roots):
            for g in self.groups_in(roots):
                self.entries_of.setdefault(g, []).append(i)
        self.norm_groups = {name: set(self.groups_in(roots)) for name, roots in norm_roots.items()}

    def groups_in(self, roots: np.ndarray) -> list[int]:
        found = np.unique(self.group[roots[roots >= 0]])
        return [int(g) for g in found if g >= 0]

    def units(self, g: int, roots: np.ndarray) -> np.ndarray:
        """The unit of group number ``g`` behind each root (``-1``: another group's, or none)."""
        safe = np.maximum(roots, 0)
        return np.where((roots >= 0) & (self.group[safe] == g), self.unit[safe], -1)
