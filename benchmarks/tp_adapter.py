"""Torch-Pruning, the optional baseline: its dependency graph and its regularizing pruners, in one place.

Torch-Pruning is not a dependency of ``assl``; the benchmarks use it when it is installed
(``pip install torch-pruning``). Its tracer loses the layers behind ``ReLU(inplace=True)``, so
every model handed to it here gets out-of-place ReLUs first (the same function).
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
from typing import Any

import torch
from torch import nn

PRUNERS = {"tp_groupnorm": "GroupNormPruner", "tp_growingreg": "GrowingRegPruner"}
"""The benchmarks' method names for Torch-Pruning's regularizing pruners."""
GLOBAL = "tp_global"
"""The benchmarks' method name for Torch-Pruning's one-shot global magnitude pruning."""
METHODS = (*PRUNERS, GLOBAL)
"""Every method that needs Torch-Pruning installed."""


def installed() -> bool:
    """Whether ``torch_pruning`` can be imported."""
    return importlib.util.find_spec("torch_pruning") is not None


def version() -> str | None:
    """The installed distribution's version (its ``__version__`` may lag behind), or None."""
    try:
        return importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        return None


def _tp() -> Any:
    import torch_pruning as tp

    return tp


def out_of_place_relus(model: nn.Module) -> nn.Module:
    """``model`` with every ReLU made out-of-place (Torch-Pruning's tracer loses what an in-place one feeds)."""
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model


def prune_half(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Build Torch-Pruning's dependency graph of ``model`` and prune half of every group's channels, in place.

    The last conv or Linear (the output) is left alone. What ``trace_slim`` times against
    ``assl.trace`` plus ``assl.slim``; the ReLUs are left as they are, as a user would.
    """
    tp = _tp()
    last = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    for group in graph.get_all_groups(ignored_layers=[last]):
        root = group[0].dep.target.module
        n = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        if n > 1:
            group.prune(idxs=list(range(n // 2)))
    return model


def regularizing_pruner(
    method: str,
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    ignored: list[nn.Module],
    reg: float | None = None,
) -> Any:
    """Torch-Pruning's ``GroupNormPruner`` (``tp_groupnorm``) or ``GrowingRegPruner`` (``tp_growingreg``) on ``model``.

    Group L2 magnitude importance, ``ratio`` of every group's channels, ``ignored`` layers left
    alone, ``reg`` the pruner's regularization strength (None: its own default). Call its
    ``regularize(model)`` between ``backward()`` and the optimizer step, ``update_reg()`` now and
    then for ``tp_growingreg``, and ``step()`` to prune.
    """
    tp = _tp()
    out_of_place_relus(model)
    cls = getattr(tp.pruner, PRUNERS[method])
    kwargs = {} if reg is None else {"reg": reg}
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    return cls(model, example, importance=importance, pruning_ratio=ratio, ignored_layers=ignored, **kwargs)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def global_prune(
    model: nn.Module, example: torch.Tensor, ratio: float, ignored: list[nn.Module], max_ratio: float
) -> nn.Module:
    """``model`` pruned in place by Torch-Pruning's ``MetaPruner(global_pruning=True)``, one shot.

    Group L2 magnitude importance ranked over all groups at once; ``ratio`` of all channels go,
    no group loses more than ``max_ratio`` of its own, ``ignored`` layers are left alone.
    """
    tp = _tp()
    out_of_place_relus(model)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=importance,
        global_pruning=True,
        pruning_ratio=ratio,
        max_pruning_ratio=max_ratio,
        ignored_layers=ignored,
    )
    pruner.step()
    return model


def global_prune_to(
    model: nn.Module, example: torch.Tensor, params: int, ignored: Any, max_ratio: float, rounds: int = 12
) -> nn.Module:
    """The largest model :func:`global_prune` leaves within ``params`` parameters (bisection on its ratio).

    ``ignored(copy)`` gives the layers to leave alone in a copy of ``model``; returns a pruned copy.
    """

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(model)
        return global_prune(m, example, ratio, ignored(m), max_ratio)

    lo, hi = 0.0, max_ratio
    best = pruned(hi)
    if _params(best) > params:
        raise ValueError(f"Torch-Pruning's global pruning cannot reach {params:,} parameters ({_params(best):,} left)")
    for _ in range(rounds):
        mid = (lo + hi) / 2
        m = pruned(mid)
        if _params(m) <= params:
            hi, best = mid, m
        else:
            lo = mid
    return best
