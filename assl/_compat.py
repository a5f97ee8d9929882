"""Names of earlier releases, kept for one release with a ``DeprecationWarning``.

The modules moved into ``assl.pruning``, ``assl.budgets`` and ``assl.serialization`` (or became
internal) still import under their old names; ``assl.slim``, which slimmed in place under the
name that :meth:`assl.Pruner.slim` uses for a copy, is now :func:`assl.apply_plan`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Any

from torch import nn

from ._slim import apply_plan
from .graph import Graph, Plan

__all__ = ["MOVED_MODULES", "install", "slim"]

MOVED_MODULES = {
    "assl.alignment": "assl.pruning._alignment",
    "assl.budget": "assl.budgets.budget",
    "assl.config": "assl.pruning._resolve",
    "assl.io": "assl.serialization",
    "assl.latency": "assl.budgets.latency",
    "assl.latency_budget": "assl.budgets.latency_plan",
    "assl.liveness": "assl.pruning._liveness",
    "assl.patterns": "assl._patterns",
    "assl.penalty": "assl.pruning._penalty",
    "assl.pruner": "assl.pruning.pruner",
    "assl.readouts": "assl.pruning.pruner",
    "assl.reparam": "assl._reparam",
    "assl.report": "assl.pruning._report",
    "assl.scales": "assl.pruning._scales",
    "assl.schedule": "assl.pruning.schedule",
    "assl.selection": "assl.pruning._selection",
    "assl.state": "assl.pruning._state",
    "assl.width_solver": "assl.budgets._width_solver",
}
"""Old module name -> where its contents live now."""


def slim(model: nn.Module, graph: Graph, plan: Plan) -> nn.Module:
    """Deprecated: :func:`assl.apply_plan` (in place), or :func:`assl.slimmed_copy` for a new module."""
    warnings.warn(
        "assl.slim(model, graph, plan) is deprecated: it slims in place, which assl.apply_plan(model, graph, plan) "
        "now does under a name that says so; assl.slimmed_copy returns a slimmed copy, as Pruner.slim() does",
        DeprecationWarning,
        stacklevel=2,
    )
    return apply_plan(model, graph, plan)


class _MovedLoader(importlib.abc.Loader):
    """Loads an old module name as the module that now holds its contents."""

    def __init__(self, new: str) -> None:
        self.new = new
        self.spec: importlib.machinery.ModuleSpec | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(
            f"the module {spec.name} is deprecated: it moved to {self.new}; import the public names from assl",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is the new one, already imported; give it back its own spec."""
        module.__spec__ = self.spec


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old module names of :data:`MOVED_MODULES`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MovedLoader(new))


def install() -> None:
    """Make the old module names importable (once per process)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
