"""The pruners ``quality.py`` compares: ASSL's set-up, the one-shot baselines and Torch-Pruning's.

One-shot baselines remove, per residual group, as many channels as ASSL's Pruner would at the same
ratio (``l1``, ``l1_authors``, ``random``), or re-initialize that slimmed shape (``scratch``).
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable

import torch
from _sr_bench import Batches
from torch import nn

import assl

SKIP = ["*mean*", "*tail*"]


def assl_schedule(a: argparse.Namespace, *, align: bool = True) -> assl.Schedule:
    """ASSL's schedule: ``Schedule.for_steps(--prune_iters)``, or the numbers of the flags (``--schedule``)."""
    if a.schedule == "for_steps":
        return assl.Schedule.for_steps(
            a.prune_iters,
            align=align,
            align_weight=a.align_weight,
            align_loss=getattr(a, "align_loss", "consensus"),
            penalty_form=a.penalty_form,
        )
    return assl.Schedule(
        align_iters=a.align_iters if align else 0,
        align_weight=a.align_weight,
        reg_interval=a.reg_interval,
        reg_step=a.reg_step,
        reg_limit=a.reg_limit,
        stabilize_iters=a.stabilize_iters,
        penalty_form=a.penalty_form,
        align_loss=getattr(a, "align_loss", "consensus"),
    )


def _target(ratio: float | assl.Budget) -> dict[str, float | assl.Budget]:
    """The Pruner's keyword for a ratio (``ratio=``) or a budget (``budget=``)."""
    return {"budget": ratio} if isinstance(ratio, assl.Budget) else {"ratio": ratio}


def assl_pruner(
    model: nn.Module,
    a: argparse.Namespace,
    *,
    align: bool = True,
    ratio: float | assl.Budget | None = None,
    round_to: int | str = 1,
) -> tuple[assl.Pruner, list[dict]]:
    """The Pruner of the ``assl`` methods on ``model`` and Adam param groups (what the penalty acts on
    at ``--scale_lr``, which defaults to ``--lr``: then one learning rate for everything).

    ``ratio`` replaces ``--ratio`` (a float or an ``assl.Budget``); ``round_to`` is the Pruner's.
    """
    sched = assl_schedule(a, align=align)
    # pixel-like values: slim() reports the output change on these (an all-black image gives ~0 out)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 255
    pruner = assl.Pruner(
        model,
        x.to(next(model.parameters()).device),
        **_target(a.ratio if ratio is None else ratio),
        skip=SKIP,
        schedule=sched,
        round_to=round_to,
    )
    pen = {id(p) for p in pruner.penalized_parameters()}
    groups = [
        {"params": [p for p in model.parameters() if id(p) not in pen]},
        {"params": pruner.penalized_parameters(), "lr": a.scale_lr or a.lr},
    ]
    return pruner, groups


def _reference(dense: nn.Module, ratio: float, x0: torch.Tensor) -> assl.Pruner:
    """ASSL's Pruner on a copy of ``dense``: what it removes per group sets every baseline's budget."""
    return assl.Pruner(copy.deepcopy(dense), x0, ratio=ratio, skip=SKIP)


def _plan_by_scores(
    graph: assl.Graph, removed: dict[str, int], score: Callable[[assl.ChannelGroup], torch.Tensor]
) -> dict[str, list[int]]:
    """Per group, the ``removed[name]`` prunable units of lowest ``score`` (ties: lowest index)."""
    plan: dict[str, list[int]] = {}
    for g in graph.groups:
        k = removed.get(g.name, 0)
        if k:
            s = score(g).clone()
            s[torch.as_tensor(~g.prunable)] = math.inf
            plan[g.name] = sorted(torch.argsort(s, stable=True)[:k].tolist())
    return plan


def _l1_of(model: nn.Module, layer: str, group: assl.ChannelGroup) -> torch.Tensor:
    """The L1 norm of ``layer``'s filters per unit of ``group`` (averaged over a unit's channels)."""
    w = model.get_submodule(layer).weight.detach().abs().flatten(1).sum(1).cpu()
    units = torch.as_tensor(group.channels(layer))
    return torch.zeros(group.size).index_add(0, units, w) / torch.bincount(units, minlength=group.size)


def one_shot(method: str, model: nn.Module, dense: nn.Module, ratio: float, seed: int, x0: torch.Tensor) -> nn.Module:
    """``model`` slimmed by ``l1`` (group-aggregated), ``l1_authors`` (first layer's ranking) or ``random``."""
    graph = assl.trace(model, x0)
    removed = _reference(dense, ratio, x0).removed
    if method == "l1":
        score = lambda g: sum(_l1_of(model, n, g) / _l1_of(model, n, g).mean() for n in g.layers)  # noqa: E731
    elif method == "l1_authors":
        score = lambda g: _l1_of(model, g.layers[0], g)  # noqa: E731
    else:
        gen = torch.Generator().manual_seed(seed + 3000)
        score = lambda g: torch.rand(g.size, generator=gen)  # noqa: E731
    return assl.apply_plan(model, graph, _plan_by_scores(graph, removed, score))


def scratch(dense: nn.Module, ratio: float, x0: torch.Tensor) -> nn.Module:
    """The L1-slimmed shape of ``dense`` with its pruned convolutions re-initialized."""
    small = _reference(dense, ratio, x0).prune_now("l1")
    for m in small.modules():  # same slim shapes, fresh weights
        if isinstance(m, nn.Conv2d) and m.weight.requires_grad:
            m.reset_parameters()
    return small


def torch_pruning(method: str, model: nn.Module, a: argparse.Namespace, stream: Batches, x0: torch.Tensor) -> nn.Module:
    """Torch-Pruning's GroupNormPruner or GrowingRegPruner: regularize for --prune_iters, then prune.

    Its tracer loses the convs behind ``ReLU(inplace=True)``, so the copy it prunes uses
    out-of-place ReLUs (the same function); the mean shifts and the tail are left alone as for the
    other methods (it also mishandles PixelShuffle).
    """
    import torch_pruning as tp  # type: ignore[import-not-found]

    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    ignored = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and ("mean" in n or "tail" in n)]
    imp = tp.importance.GroupMagnitudeImportance(p=2)
    cls = tp.pruner.GroupNormPruner if method == "tp_groupnorm" else tp.pruner.GrowingRegPruner
    pruner = cls(model, x0, importance=imp, pruning_ratio=a.ratio, ignored_layers=ignored)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    for step in range(a.prune_iters):
        x, y = next(stream)
        loss = (model(x) - y).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        pruner.regularize(model)
        opt.step()
        if method == "tp_growingreg" and step % a.reg_interval == 0:
            pruner.update_reg()
    pruner.step()
    return model
