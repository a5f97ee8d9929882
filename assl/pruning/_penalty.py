"""The growing penalty on the chosen channels: a shrink toward zero, or the paper's gradient form.

Both act on the entries the :class:`~assl.selection.Carrier` objects mark as chosen (scales,
normalization weights and their biases), at a strength the :class:`~assl.Schedule` grows:

* ``"shrink"``: the chosen entries take no gradient from the task and are multiplied by
  ``1 - penalty``. Adam and AdamW normalize a gradient away, whatever its size; a decay applied
  outside the optimizer does not depend on it, nor on the learning rate.
* ``"gradient"``: ``grad(x_c) += penalty * x_c``, the gradient of ``penalty/2 * x_c**2`` (Wang et
  al., "Neural Pruning via Growing Regularization", ICLR 2021), as in the paper.

With ``guard`` (``Schedule.guard_kept``), the kept units' normalization biases lose the part of
their gradient that would lower them (:func:`guard_kept`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

import torch
from torch.utils.hooks import RemovableHandle

from ..errors import ArgumentError
from ._selection import Carrier

__all__ = [
    "StepHooks",
    "add_penalty",
    "apply_penalty",
    "check_optimizer",
    "chosen_entries",
    "closure_of",
    "guard_kept",
    "penalty_value",
    "shrink",
    "step_hooks",
]


def apply_penalty(
    carriers: Sequence[Carrier],
    penalty: float,
    form: str,
    grad_scale: float | torch.Tensor | None = None,
    *,
    data: bool = True,
    grads: bool = True,
    guard: bool = False,
) -> None:
    """Apply ``penalty`` in ``form`` to the chosen entries of ``carriers``; before ``optimizer.step()``.

    The shrink acts on the entries themselves, so it drives frozen ones (``requires_grad=False``,
    a frozen BatchNorm) to zero too; the gradient form acts only through the optimizer, on entries
    that take a gradient.

    Args:
        grad_scale: The scale the gradients still carry (a fused optimizer under GradScaler): the
            gradient form is multiplied by it; the shrink does not depend on it.
        data: Apply the part that changes the entries (the shrink's ``1 - penalty``).
        grads: Apply the part that changes their gradients (the shrink's zeroing, the gradient
            form, the guard): after every evaluation of an optimizer's closure, which recomputes them.
        guard: Guard the kept units' biases in the normalization carriers (:func:`guard_kept`), with
            ``grads``.
    """
    if penalty <= 0:
        return
    with torch.no_grad():
        for p, idx in _chosen(carriers):
            if form == "shrink":
                shrink(p, idx, penalty, data=data, grads=grads)
            elif grads and p.requires_grad:
                add_penalty(p, idx, penalty if grad_scale is None else penalty * grad_scale)
        if guard and grads:
            for c in carriers:
                if c.kind == "norm":
                    guard_kept(c)


def guard_kept(carrier: Carrier) -> None:
    """Drop the part of the kept units' bias gradient that would lower them (entry by entry).

    A normalization layer after the readers makes only the ratio of kept to chosen channels matter
    to the task, so while the chosen fade the task gradient pushes the kept ones down after them
    (``g_kept . w_kept = -g_chosen . w_chosen``); lowering a bias before the activation is how that
    kills them. The weights are left alone: with a normalization after the readers their common
    scale changes nothing, and guarding them cost quality where nothing collapsed.
    """
    p, idx = carrier.bias, carrier.kept_bias_idx
    if p is None or p.grad is None or not idx.numel():
        return
    idx = idx.to(p.grad.device)
    g = p.grad.index_select(0, idx)
    p.grad.index_copy_(0, idx, g.clamp(max=0))  # a positive gradient would lower the bias: dropped


def penalty_value(carriers: Iterable[Carrier], penalty: float) -> torch.Tensor | None:
    """``penalty/2 * sum(x**2)`` over the chosen entries that take a gradient: the term whose gradient
    the gradient form adds (``None`` when there is none)."""
    terms = [
        p.detach().index_select(0, idx.to(p.device)).float().pow(2).sum()
        for p, idx in _chosen(carriers)
        if p.requires_grad
    ]
    return penalty / 2 * torch.stack([t.to(terms[0].device) for t in terms]).sum() if terms and penalty > 0 else None


def chosen_entries(carriers: Iterable[Carrier]) -> dict[int, torch.Tensor]:
    """The positions of the chosen entries of each parameter the carriers hold, by the parameter's id."""
    found: dict[int, list[torch.Tensor]] = {}
    for p, idx in _chosen(carriers):
        found.setdefault(id(p), []).append(idx)
    return {key: torch.cat(parts).unique() for key, parts in found.items()}


def _chosen(carriers: Iterable[Carrier]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Each carrier's scale and bias with the positions of its chosen entries (when there are any)."""
    for c in carriers:
        for p, idx in ((c.scale, c.scale_idx), (c.bias, c.bias_idx)):
            if p is not None and idx.numel():
                yield p, idx


def shrink(p: torch.Tensor, idx: torch.Tensor, penalty: float, *, data: bool = True, grads: bool = True) -> None:
    """``p[idx] *= 1 - penalty`` and ``grad[idx] = 0``: the entries fade out, the task cannot hold them."""
    idx = idx.to(p.device)
    if data:
        p.data.index_copy_(0, idx, p.data.index_select(0, idx) * (1 - penalty))
    if grads and p.grad is not None:
        p.grad.index_fill_(0, idx, 0)


def add_penalty(p: torch.Tensor, idx: torch.Tensor, factor: float | torch.Tensor) -> None:
    """``grad[idx] += factor * p[idx]``: the gradient of ``factor/2 * p^2`` on the chosen entries."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    idx = idx.to(p.device)
    p.grad.index_add_(0, idx, p.detach().index_select(0, idx) * factor)


def check_optimizer(optimizer: torch.optim.Optimizer, layers: Iterable[Carrier], advice: str) -> None:
    """Raise if ``optimizer`` does not update the scale of every one of ``layers`` that takes a gradient
    (a frozen normalization layer's gamma is left to the shrink).

    Raises:
        ValueError: Naming the layers whose scales the optimizer leaves alone, with ``advice``.
    """
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [layer.name for layer in layers if layer.scale.requires_grad and id(layer.scale) not in params]
    if missing:
        raise ArgumentError(
            f"the optimizer does not update the scales of {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}: {advice} (or add pruner.scale_parameters() as a param group)"
        )


def closure_of(args: Any, kwargs: Any) -> Any:
    """The closure of an ``optimizer.step`` call as its hooks see it (``args[0]`` is the optimizer)."""
    closure = kwargs.get("closure") if "closure" in kwargs else (args[1] if len(args) > 1 else None)
    return closure if callable(closure) else None


class StepHooks(Protocol):
    """What the optimizer's hooks call: the Pruner's step, split around a closure."""

    def __call__(self, grad_scale: float | torch.Tensor | None) -> None:
        """A step without a closure: the whole of :meth:`Pruner.step`, before the update."""

    def begin(self) -> None:
        """Before a step with a closure: the checks, the choice and the shrink of the entries."""

    def after_closure(self, loss: Any) -> Any:
        """After each evaluation of the closure: the penalty on the gradients it computed."""

    def end(self) -> None:
        """After a step with a closure: count it."""

    def after(self, optimizer: torch.optim.Optimizer) -> None:
        """After every step, with or without a closure, once the update is made."""


def step_hooks(optimizer: torch.optim.Optimizer, step: StepHooks) -> list[RemovableHandle]:
    """Call ``step`` around every ``optimizer.step()`` that will really update.

    Without a closure, ``step(grad_scale)`` runs before the update. Under ``GradScaler.step``,
    ordinary optimizers see unscaled gradients; fused ones still carry ``optimizer.grad_scale``
    (passed on so the penalty is scaled to match), and a fused step that GradScaler will skip for
    inf/NaN gradients is not counted.

    With a closure (``optimizer.step(closure)``: LBFGS, SAM-style optimizers), which zeroes and
    recomputes the gradients, possibly several times: ``begin()`` before the step, the closure
    replaced by one that calls ``after_closure(loss)`` after each evaluation, and ``end()`` after
    the update, so the penalty reaches the gradients the update uses and the step counts once.
    ``after(optimizer)`` runs after every update.
    """
    closures: list[bool] = []

    def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple[Any, Any] | None:
        found_inf = getattr(opt, "found_inf", None)
        if isinstance(found_inf, torch.Tensor) and found_inf.item() > 0:
            return None  # a fused step GradScaler will skip
        closure = closure_of(args, kwargs)
        if closure is None:
            step(getattr(opt, "grad_scale", None))
            return None
        step.begin()
        closures.append(True)

        def penalized() -> Any:
            return step.after_closure(closure())

        if "closure" in kwargs:
            return args, {**kwargs, "closure": penalized}
        return (args[0], penalized, *args[2:]), kwargs  # args[0] is the optimizer

    def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        step.after(opt)
        if closures:
            closures.clear()
            step.end()

    return [optimizer.register_step_pre_hook(pre), optimizer.register_step_post_hook(post)]
