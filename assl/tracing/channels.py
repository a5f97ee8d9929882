"""Channel labels: the bookkeeping shared by the tracer's op and layer rules.

Every output channel of a traced layer gets an integer *node*. A traced tensor carries, for the
one dimension that holds channels, the node of each channel (``-1``: a channel that can never be
removed, e.g. an input channel of the model) and whether the channel is exactly zero in the
masked model once its node is removed. Operations that tie channels together (a residual add, a
channel-wise multiply) union their nodes; the connected components are the units of pruning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sizes import SizeInt

__all__ = ["FIXED", "Nodes", "SizeInt", "Value", "fixed_value"]

FIXED = -1


@dataclass
class Value:
    """What the tracer knows about one tensor.

    Attributes:
        dim: The dimension that holds channels (non-negative).
        labels: One node per channel along ``dim`` (``FIXED`` for channels that cannot go).
        zero: Per channel: exactly zero in the masked model when its node is removed.
    """

    dim: int
    labels: np.ndarray
    zero: np.ndarray

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def moved(self, dim: int) -> Value:
        return Value(dim, self.labels, self.zero)


def fixed_value(dim: int, size: int) -> Value:
    """A tensor whose channels come from outside the graph (model inputs, constants)."""
    return Value(dim, np.full(size, FIXED, dtype=np.int64), np.zeros(size, dtype=bool))


class Nodes:
    """Union-find over channel nodes, with a 'cannot be removed' flag and its reason per root."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: list[bool] = []
        self.reason: dict[int, str] = {}

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.fixed.extend([False] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:
            parent[a], a = root, parent[a]
        return root

    def fix(self, labels: np.ndarray, reason: str) -> None:
        for a in labels.tolist():
            if a == FIXED:
                continue
            r = self.find(a)
            if not self.fixed[r]:
                self.fixed[r] = True
                self.reason[r] = reason

    def union(self, a: int, b: int, reason: str) -> None:
        if a == FIXED and b == FIXED:
            return
        if a == FIXED or b == FIXED:
            self.fix(np.array([b if a == FIXED else a]), reason)
            return
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        if self.fixed[rb] and not self.fixed[ra]:
            self.fixed[ra] = True
            self.reason[ra] = self.reason[rb]

    def union_arrays(self, a: np.ndarray, b: np.ndarray, reason: str) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y, reason)

    def root_table(self) -> np.ndarray:
        """The root of every node, computed at once by pointer jumping."""
        table = np.asarray(self.parent, dtype=np.int64)
        while True:
            nxt = table[table]
            if np.array_equal(nxt, table):
                return table
            table = nxt

    @staticmethod
    def roots(table: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Roots of ``labels`` from a :meth:`root_table` (``FIXED`` stays ``FIXED``)."""
        return np.where(labels == FIXED, FIXED, table[np.maximum(labels, 0)])

    def tie_blocks(self, labels: np.ndarray, blocks: int, reason: str) -> None:
        """Union channel ``i`` of every one of ``blocks`` equal blocks (group structure kept)."""
        rows = labels.reshape(blocks, -1)
        for j in range(1, blocks):
            self.union_arrays(rows[0], rows[j], reason)
