"""The training loop every quality benchmark uses: Adam, an optional ASSL Pruner, hooks, learning-rate schedules."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, Union

import torch
from torch import nn

import assl

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]
"""(input, target) training batches, forever."""
LearningRate = Union[float, Callable[[int], float]]
"""A constant learning rate, or the learning rate of each (globally numbered) step."""


def cosine(lr: float, start: int, length: int) -> Callable[[int], float]:
    """The learning rate of step ``k``: a cosine from ``lr`` at ``start`` to 0 at ``start + length``."""
    return lambda k: 0.5 * lr * (1 + math.cos(math.pi * min(max(k - start, 0), length) / max(length, 1)))


OPTIMIZERS: dict[str, Callable[[Any, float], torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr, weight_decay=0.01),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}
"""The optimizers the steps after the dense model can take (``--optimizer``); the dense model trains with Adam."""


def train(
    model: nn.Module,
    stream: Batches,
    steps: int,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    lr: LearningRate,
    *,
    first: int = 0,
    param_groups: list[dict] | None = None,
    pruner: assl.Pruner | None = None,
    before_step: Callable[[], None] | None = None,
    after_step: Callable[[int], None] | None = None,
    teacher: assl.Teacher | None = None,
    distill: float = 0.0,
    optimizer: str = "adam",
    distill_kind: str = "mse",
    clip: float = 0.0,
) -> int:
    """Up to ``steps`` optimizer steps on ``loss`` (fewer when ``pruner`` is done); returns the steps taken.

    ``optimizer``: one of :data:`OPTIMIZERS` (Adam, AdamW with weight decay 0.01, SGD with
    momentum 0.9), each at the learning rate ``lr`` gives.

    Steps are numbered from ``first`` on. A constant ``lr`` leaves each of ``param_groups`` at its
    own learning rate (a group without one gets ``lr``); a schedule ``lr(k)`` sets every group to
    it before step ``k``, times the ratio of the group's own rate to ``lr(first)``. With ``pruner``,
    its alignment term joins the loss and its penalty hook the optimizer, for the steps of this call.
    ``before_step()`` runs between ``backward()`` and the optimizer step, ``after_step(k)`` after
    step ``k`` (the ``k``-th from ``first``, 1-based).
    With ``teacher`` and a positive ``distill``, ``teacher.loss(output, input, weight=distill)``
    (the mean squared distance to the teacher's output) joins the loss. A positive ``clip`` clips
    the gradients' norm to it before each optimizer step (the attached pruner's penalty runs
    inside that step, after the clipping).
    """
    model.train()
    schedule: Callable[[int], float] | None
    schedule, start = (None, float(lr)) if isinstance(lr, (int, float)) else (lr, lr(first))
    opt = OPTIMIZERS[optimizer](param_groups or model.parameters(), start)
    ratios = [group["lr"] / start if start > 0 else 1.0 for group in opt.param_groups]
    if pruner is not None:
        pruner.attach(opt)
    done = 0
    try:
        while done < steps and not (pruner is not None and pruner.done):
            if schedule is not None:
                for group, ratio in zip(opt.param_groups, ratios):
                    group["lr"] = schedule(first + done) * ratio
            x, y = next(stream)
            out = model(x)
            value = loss(out, y)
            if teacher is not None and distill > 0:
                value = value + teacher.loss(out, x, weight=distill, kind=distill_kind)
            if pruner is not None:
                value = value + pruner.alignment_loss()
            opt.zero_grad(set_to_none=True)
            value.backward()
            if before_step is not None:
                before_step()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            done += 1
            if after_step is not None:
                after_step(first + done)
    finally:
        if pruner is not None:
            pruner.detach()
    return done


def l1_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean absolute error (the SR benchmarks' loss)."""
    return (output - target).abs().mean()
