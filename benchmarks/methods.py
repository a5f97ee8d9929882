"""The pruning methods compared at equal steps, on any :class:`~benchmarks.tasks.Task`.

* ``assl``: the Pruner's schedule (align, regularize, stabilize), ``slim()``, then fine-tuning;
* ``assl_noalign``: the same without the align phase;
* ``assl_learned``: ASSL with learned widths: ``Budget(params=P, widths="learned")`` at the
  parameters ``P`` that the ratio leaves (each group's count chosen by score after alignment);
  ``assl_learned_macs`` the same at the MACs ``M`` the ratio leaves (``Budget(macs=M, ...)``);
* ``l1``: one-shot, each group's units of lowest filter L1 norm (each layer's norms relative to
  their mean, summed over the group's layers), then fine-tuning;
* ``l1_authors``: one-shot, each group takes its first layer's L1 ranking (as the authors' code
  does for layers that must drop the same channels), then fine-tuning;
* ``random``: one-shot, random units per group, then fine-tuning;
* ``scratch``: the slim architecture of ``l1``, re-initialized, trained for the dense steps too;
* ``scratch_learned``: the same for the widths ``assl_learned`` allocates from the dense model's
  scores (as it does when there is no align phase; with one, ASSL allocates after alignment);
* ``tp_groupnorm`` / ``tp_growingreg``: Torch-Pruning's regularizing pruners (optional install),
  regularizing for ``prune_iters`` steps, pruning, then fine-tuning; a pruner that fails on the
  network is reported as failed, with its error;
* ``tp_global``: Torch-Pruning's one-shot global magnitude pruning (``MetaPruner(global_pruning=
  True)``, no group below 1/8 of its channels) at the parameters ``P`` the ratio leaves, then
  fine-tuning (optional install, reported as failed like the others).

One-shot methods remove as many units per group as ASSL's Pruner would at the same ratio. Every
method gets ``T = prune_iters + finetune_iters`` optimizer steps after the dense model. With
``--distill W > 0``, every one of those steps (ASSL's and TP's pruning, all fine-tuning, and
scratch's whole training) adds ``W`` times the mean squared distance to the trained dense model's
output (``assl.Teacher``), so distilled methods are compared with a distilled scratch baseline.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

import assl
from assl.budgets.budget import MIN_WIDTH

from . import pace, tp_adapter
from ._internals import l1_plan, max_rel_err
from .macs import count_macs
from .tasks import Task
from .training import LearningRate, cosine, train

METHODS = {
    "assl": "ASSL: align, regularize, stabilize, slim, fine-tune",
    "assl_noalign": "ASSL without the align phase",
    "assl_learned": "ASSL with learned widths at the ratio's parameter count",
    "assl_learned_macs": "ASSL with learned widths at the ratio's MACs",
    "l1": "one-shot L1, aligned per group (group-aggregated score)",
    "l1_authors": "one-shot L1, each group ranked by its first layer (the authors' baseline)",
    "random": "one-shot, random units per group",
    "scratch": "the slim architecture trained from scratch",
    "scratch_learned": "the learned widths' architecture (from the dense scores) trained from scratch",
    "tp_groupnorm": "Torch-Pruning's GroupNormPruner",
    "tp_growingreg": "Torch-Pruning's GrowingRegPruner",
    "tp_global": "Torch-Pruning's global magnitude pruning at the ratio's parameter count",
}
ONE_SHOT = ("l1", "l1_authors", "random", "scratch", "scratch_learned")
SCRATCH = ("scratch", "scratch_learned")
LEARNED = ("assl_learned", "assl_learned_macs")


class Observer(Protocol):
    """What a study watches in an ASSL run: built once the Pruner exists (see :func:`run_method`)."""

    def before_step(self) -> None:
        """Called between ``backward()`` and each optimizer step of the schedule."""

    def end(self) -> dict[str, Any]:
        """Called when the schedule is over, before ``slim()``; the entries join the run's row."""


def size(task: Task, model: nn.Module) -> tuple[int, float]:
    """Parameters, and MACs of ``task.macs_input`` (checked against torch's flop counter) times ``task.macs_factor``."""
    return sum(p.numel() for p in model.parameters()), count_macs(model, task.macs_input) * task.macs_factor


def removed_counts(
    task: Task, model: nn.Module, ratio: float, *, learned: bool = False, min_width: float | None = None
) -> dict[str, int]:
    """Units per group that ASSL's Pruner removes from ``model`` at ``ratio`` (built on a copy);
    ``learned``: the learned widths at the ratio's parameter count, allocated from the dense scores."""
    target = {"budget": learned_budget(task, model, ratio, min_width=min_width)} if learned else {"ratio": ratio}
    schedule = assl.Schedule(align_iters=0)  # no align phase: the counts (and any allocation) come now
    return assl.Pruner(copy.deepcopy(model), task.example, **target, skip=task.skip, schedule=schedule).removed


def params_at(task: Task, model: nn.Module, ratio: float, kind: str = "params") -> int:
    """Parameters (``kind="macs"``: MACs per sample of the example inputs) of ``model`` with
    :func:`removed_counts` units gone from each group (counted as ``assl.count``)."""
    graph = assl.trace(model, task.example)
    plan = l1_plan(model, graph, removed_counts(task, model, ratio))
    return graph.count_macs(plan) if kind == "macs" else graph.count_params(plan)


def learned_budget(
    task: Task, model: nn.Module, ratio: float | assl.Budget, kind: str = "params", min_width: float | None = None
) -> assl.Budget:
    """``assl_learned``'s target: a parameter or MAC budget with learned widths; a ratio becomes the
    parameters (``kind="macs"``: the MACs) it leaves. ``min_width``: the floor of every group
    (None: the Budget's default)."""
    if isinstance(ratio, assl.Budget):
        floor = ratio.min_width if min_width is None else min_width
        return dataclasses.replace(ratio, widths="learned", min_width=floor)
    count = params_at(task, model, ratio, kind)
    floor = MIN_WIDTH if min_width is None else min_width
    if kind == "macs":
        return assl.Budget(macs=count, widths="learned", min_width=floor)
    return assl.Budget(params=count, widths="learned", min_width=floor)


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


def _weight(model: nn.Module, layer: str) -> torch.Tensor:
    """The weight of layer ``layer`` of ``model``."""
    weight = model.get_submodule(layer).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _l1_of(model: nn.Module, layer: str, group: assl.ChannelGroup) -> torch.Tensor:
    """The L1 norm of ``layer``'s filters per unit of ``group`` (averaged over a unit's channels)."""
    w = _weight(model, layer).detach().abs().flatten(1).sum(1).cpu()
    units = torch.as_tensor(group.channels(layer))
    return torch.zeros(group.size).index_add(0, units, w) / torch.bincount(units, minlength=group.size)


def one_shot(
    method: str, task: Task, model: nn.Module, ratio: float, seed: int, min_width: float | None = None
) -> nn.Module:
    """``model`` slimmed in place by ``l1`` (``scratch`` takes its shape), ``l1_authors`` or ``random``;
    ``scratch_learned`` takes the widths learned widths allocate from the dense scores."""
    graph = assl.trace(model, task.example)
    removed = removed_counts(task, model, ratio, learned=method == "scratch_learned", min_width=min_width)
    if method in ("l1", "scratch", "scratch_learned"):
        plan = l1_plan(model, graph, removed)
    elif method == "l1_authors":
        plan = _plan_by_scores(graph, removed, lambda g: _l1_of(model, g.layers[0], g))
    else:
        gen = torch.Generator().manual_seed(seed + 3000)
        plan = _plan_by_scores(graph, removed, lambda g: torch.rand(g.size, generator=gen))
    return assl.apply_plan(model, graph, plan)


def reinit(model: nn.Module) -> nn.Module:
    """Fresh weights (and norm statistics) for every layer that has ``reset_parameters`` and trains
    (fixed layers, such as LEDSR's mean shifts, stay), then the model's own ``init_weights()``."""
    for m in model.modules():
        trains = all(p.requires_grad for p in m.parameters(recurse=False))
        reset = getattr(m, "reset_parameters", None)
        if m is not model and callable(reset) and trains:
            reset()
    init = getattr(model, "init_weights", None)
    if callable(init):
        init()
    return model


def param_groups(model: nn.Module, pruner: assl.Pruner, scale_lr: float | None) -> list[dict] | None:
    """Adam's param groups: the parameters the penalty acts on at ``scale_lr``, when given."""
    if scale_lr is None:
        return None
    pen = {id(p) for p in pruner.penalized_parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) not in pen]},
        {"params": pruner.penalized_parameters(), "lr": scale_lr},
    ]


def after_dense(a: argparse.Namespace, teacher: assl.Teacher | None) -> dict[str, Any]:
    """What :func:`train` takes for every step after the dense model: the teacher and its term's
    weight and kind, the optimizer, the gradient clipping."""
    return {
        "teacher": teacher,
        "distill": a.distill,
        "distill_kind": a.distill_kind,
        "optimizer": a.optimizer,
        "clip": a.clip,
    }


def learning_rates(a: argparse.Namespace, total: int) -> tuple[LearningRate, Callable[[int], LearningRate]]:
    """The pruning phase's learning rate, and ``used -> `` the fine-tuning's after ``used`` steps.

    The rate is ``--method_lr`` (by default ``--lr``). ``constant``: that rate throughout;
    ``finetune``: pruning at that rate, then a cosine to zero over
    the rest of ``T`` (for scratch, over all of its steps from ``-dense_iters``); ``whole``: one
    cosine over ``T`` (scratch: over all of its steps).
    """
    lr = a.method_lr if a.method_lr is not None else a.lr
    if a.lr_schedule == "constant":
        return lr, lambda used: lr
    if a.lr_schedule == "whole":
        whole = cosine(lr, 0, total)
        return whole, lambda used: whole if used >= 0 else cosine(lr, used, total - used)
    return (lambda k: lr), lambda used: cosine(lr, used, total - used)


def _recorder(task: Task, model: nn.Module, curve: list, every: int) -> Callable[[int], None] | None:
    """An ``after_step`` that puts ``(step, score)`` into ``curve`` every ``every`` steps (None: never)."""
    if not every:
        return None

    def record(k: int) -> None:
        if k % every == 0:
            curve.append((k, task.score(model)[task.metric]))

    return record


def _torch_pruning(
    method: str,
    task: Task,
    model: nn.Module,
    ratio: float,
    a: argparse.Namespace,
    stream: Any,
    lr: LearningRate,
    teacher: assl.Teacher | None = None,
) -> tuple[nn.Module, int, list]:
    """Regularize ``model`` with Torch-Pruning's pruner for ``prune_iters`` steps, then prune it in place."""
    curve: list = []
    pruner = tp_adapter.regularizing_pruner(method, model, task.example, ratio, task.output_layers(model), a.tp_reg)
    record = _recorder(task, model, curve, a.eval_every)

    def after(k: int) -> None:
        if method == "tp_growingreg" and (k - 1) % a.reg_interval == 0:
            pruner.update_reg()
        if record is not None:
            record(k)

    regularize = lambda: pruner.regularize(model)  # noqa: E731
    used = train(
        model,
        stream,
        a.prune_iters,
        task.loss,
        lr,
        before_step=regularize,
        after_step=after,
        **after_dense(a, teacher),
    )
    pruner.step()
    return model, used, curve


def refreshed_score(task: Task, model: nn.Module, seed: int, batches: int = 20) -> float | None:
    """The score of a copy of ``model`` whose BatchNorm running statistics are measured anew on ``batches``
    training batches (``torch.optim.swa_utils.update_bn``); None when it has no BatchNorm. A fast-moving
    gain leaves the running statistics behind, and eval mode then scores worse than the weights are."""
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return None
    fresh = copy.deepcopy(model)
    torch.optim.swa_utils.update_bn(itertools.islice(task.batches(seed + 3000), batches), fresh)
    return task.score(fresh)[task.metric]


def assl_schedule(
    a: argparse.Namespace, *, align: bool = True, align_loss: str = "consensus", align_weight: float | None = None
) -> assl.Schedule:
    """ASSL's schedule: ``Schedule.for_steps(--prune_iters)``, or the numbers of the flags (``--schedule flags``)."""
    weight = a.align_weight if align_weight is None else align_weight
    if a.schedule == "for_steps":
        return assl.Schedule.for_steps(
            a.prune_iters,
            align=align,
            align_weight=weight,
            align_loss=align_loss,
            penalty_form=a.penalty_form,
            guard_kept=a.guard_kept,
            min_scale_lr=a.min_scale_lr,
        )
    return assl.Schedule(
        align_iters=a.align_iters if align else 0,
        align_weight=weight,
        reg_interval=a.reg_interval,
        reg_step=a.reg_step,
        reg_limit=a.reg_limit,
        stabilize_iters=a.stabilize_iters,
        penalty_form=a.penalty_form,
        align_loss=align_loss,
        guard_kept=a.guard_kept,
        min_scale_lr=a.min_scale_lr,
    )


def _plain_ratio(method: str, ratio: float | assl.Budget) -> float:
    """``ratio`` as a number: only ASSL takes a budget."""
    if isinstance(ratio, assl.Budget):
        raise TypeError(f"{method} takes a ratio, not a budget ({ratio}); only the ASSL methods take budgets")
    return float(ratio)


def _failed(method: str, ratio: float | assl.Budget, seed: int, e: Exception, t0: float) -> dict[str, Any]:
    """The row of a method that failed on this network (its error's first line), said on stdout too."""
    error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
    print(
        f"# {method} failed at ratio {ratio if isinstance(ratio, assl.Budget) else f'{ratio:g}'}: {error}", flush=True
    )
    return {"method": method, "ratio": ratio, "seed": seed, "error": error, "wall_s": time.time() - t0}


def run_method(
    task: Task,
    method: str,
    dense: nn.Module,
    ratio: float | assl.Budget,
    a: argparse.Namespace,
    seed: int,
    *,
    schedule: assl.Schedule | None = None,
    round_to: int | str = 1,
    observe: Callable[[assl.Pruner, nn.Module], Observer] | None = None,
) -> tuple[dict[str, Any], nn.Module | None]:
    """Prune a copy of ``dense`` with ``method``, fine-tune it to the common step count, score it.

    Returns the row and the pruned model (None when the method failed). The row holds the score
    right after slimming (``score_slim``; NaN for scratch) and after fine-tuning (``score``, and
    every metric in ``metrics``), params, MACs, the steps after the dense model, the wall time and
    ``curve``: ``(step, score)`` pairs, steps counted from the dense model (scratch's first
    ``dense_iters`` are negative). For ASSL also the score at the end of the schedule with the chosen
    channels still in place (``score_before_slim``), the liveness of the chosen channels before
    slimming (per group and the largest), the units removed per group and how much slimming
    changed the output on the example inputs. ``distill`` is ``--distill``, the weight of the
    term towards the dense model in every step after it (0: none).

    ASSL only: ``ratio`` may be an ``assl.Budget``; ``schedule`` replaces the flags' schedule;
    ``round_to`` is the Pruner's; ``observe(pruner, model)``, called once the Pruner is built, returns
    an :class:`Observer`. None of them draws random numbers, so the runs stay paired with the
    other methods'.
    """
    torch.manual_seed(seed + 1000)
    teacher = assl.Teacher(dense) if a.distill > 0 else None  # draws no random numbers: runs stay paired
    model = copy.deepcopy(dense)
    stream = task.batches(seed + 2000)
    total = a.prune_iters + a.finetune_iters
    prune_lr, finetune_lr = learning_rates(a, total)
    curve: list = []
    extra: dict[str, Any] = {}
    t0 = time.time()
    used = 0
    if method in ("assl", "assl_noalign", "assl_learned", "assl_learned_macs"):
        schedule = schedule or assl_schedule(a, align=method != "assl_noalign")
        if method in LEARNED:
            kind = "macs" if method == "assl_learned_macs" else "params"
            target: dict[str, Any] = {"budget": learned_budget(task, model, ratio, kind, a.min_width)}
        else:
            target = {"budget": ratio} if isinstance(ratio, assl.Budget) else {"ratio": ratio}
        try:
            pruner = assl.Pruner(model, task.example, **target, skip=task.skip, schedule=schedule, round_to=round_to)
        except assl.ArgumentError as e:  # learned widths whose floor cannot meet the count: a result, go on
            if method not in LEARNED:
                raise
            return _failed(method, ratio, seed, e, t0), None
        last = [math.nan]  # the task loss of the latest step, for a recovery pace

        def recorded(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            value = task.loss(output, target)
            last[0] = float(value)
            return value

        if observe is None and a.pace_tol > 0:
            observe = lambda p, m: pace.RecoveryPace(p, lambda: last[0], a.pace_tol, a.pace_slow)  # noqa: E731
        if observe is None and a.grad_guard > 0:
            observe = lambda p, m: pace.GradGuard(p, m, a.grad_guard)  # noqa: E731
        probe = observe(pruner, model) if observe is not None else None
        used = train(
            model,
            stream,
            a.prune_iters,
            recorded if a.pace_tol > 0 else task.loss,
            prune_lr,
            param_groups=param_groups(model, pruner, a.scale_lr),
            pruner=pruner,
            before_step=probe.before_step if probe is not None else None,
            after_step=_recorder(task, model, curve, a.eval_every),
            **after_dense(a, teacher),
        )
        alive = pruner.liveness()
        extra = {
            "liveness": max(alive.values(), default=0.0),
            "liveness_groups": alive,
            "aligned": list(pruner.aligned),
        }
        extra["removed"] = dict(pruner.removed)
        if probe is not None:
            extra.update(probe.end())
        extra["score_before_slim"] = task.score(model)[task.metric]
        refreshed = refreshed_score(task, model, seed)
        if refreshed is not None:
            extra["score_before_slim_refreshed"] = refreshed
        small = pruner.slim()
        extra["slim_change"] = max_rel_err(model, small, task.example)
    elif method in tp_adapter.METHODS:
        try:
            if method == tp_adapter.GLOBAL:
                target_params = params_at(task, model, _plain_ratio(method, ratio))
                small = tp_adapter.global_prune_to(
                    model, task.example, target_params, task.output_layers, 1 - MIN_WIDTH
                )
            else:
                small, used, curve = _torch_pruning(
                    method, task, model, _plain_ratio(method, ratio), a, stream, prune_lr, teacher
                )
            small(task.example)
        except Exception as e:  # a pruner that fails on this network is a result too: report it, go on
            return _failed(method, ratio, seed, e, t0), None
    elif method in ONE_SHOT:
        small = one_shot(method, task, model, _plain_ratio(method, ratio), seed, a.min_width)
    else:
        raise ValueError(f"unknown method {method!r}; the methods are {', '.join(METHODS)}")
    if method in SCRATCH:
        small, score_slim = reinit(small), math.nan
        used = -a.dense_iters  # trained for the dense steps as well, on one schedule
    else:
        score_slim = task.score(small)[task.metric]
        curve.append((used, score_slim))
    record = _recorder(task, small, curve, a.eval_every)
    train(
        small,
        stream,
        total - used,
        task.loss,
        finetune_lr(used),
        first=used,
        after_step=record,
        **after_dense(a, teacher),
    )
    final = task.score(small)
    curve.append((total, final[task.metric]))
    params, macs = size(task, small)
    row: dict[str, Any] = {"method": method, "ratio": ratio if isinstance(ratio, float) else None, "seed": seed}
    row.update(score_slim=score_slim, score=final[task.metric], metrics=final, params=params, macs=macs)
    row.update(steps=total, wall_s=time.time() - t0, curve=curve, **extra)
    return row, small
