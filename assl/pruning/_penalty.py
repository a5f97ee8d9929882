"""The growing penalty on the chosen channels: a shrink toward zero, or the paper's gradient form.

Both act on the entries the :class:`~assl.selection.Carrier` objects mark as chosen (scales,
normalization weights and their biases), at a strength the :class:`~assl.Schedule` grows:

* ``"shrink"``: the chosen entries take no gradient from the task and are multiplied by
  ``1 - penalty``. Adam and AdamW normalize a gradient away, whatever its size; a decay applied
  outside the optimizer does not depend on it, nor on the learning rate.
* ``"gradient"``: ``grad(x_c) += penalty * x_c``, the gradient of ``penalty/2 * x_c**2`` (Wang et
  al., "Neural Pruning via Growing Regularization", ICLR 2021), as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from ..errors import ArgumentError
from ._selection import Carrier

__all__ = ["add_penalty", "apply_penalty", "check_optimizer", "shrink", "step_pre_hook"]


def apply_penalty(
    carriers: Iterable[Carrier], penalty: float, form: str, grad_scale: float | torch.Tensor | None = None
) -> None:
    """Apply ``penalty`` in ``form`` to the chosen entries of ``carriers``; before ``optimizer.step()``.

    Args:
        grad_scale: The scale the gradients still carry (a fused optimizer under GradScaler): the
            gradient form is multiplied by it; the shrink does not depend on it.
    """
    if penalty <= 0:
        return
    with torch.no_grad():
        for c in carriers:
            for p, idx in ((c.scale, c.scale_idx), (c.bias, c.bias_idx)):
                if p is None or idx.numel() == 0 or not p.requires_grad:
                    continue
                if form == "shrink":
                    shrink(p, idx, penalty)
                else:
                    add_penalty(p, idx, penalty if grad_scale is None else penalty * grad_scale)


def shrink(p: torch.Tensor, idx: torch.Tensor, penalty: float) -> None:
    """``p[idx] *= 1 - penalty`` and ``grad[idx] = 0``: the entries fade out, the task cannot hold them."""
    idx = idx.to(p.device)
    p.data.index_copy_(0, idx, p.data.index_select(0, idx) * (1 - penalty))
    if p.grad is not None:
        p.grad.index_fill_(0, idx, 0)


def add_penalty(p: torch.Tensor, idx: torch.Tensor, factor: float | torch.Tensor) -> None:
    """``grad[idx] += factor * p[idx]``: the gradient of ``factor/2 * p^2`` on the chosen entries."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    idx = idx.to(p.device)
    p.grad.index_add_(0, idx, p.detach().index_select(0, idx) * factor)


def check_optimizer(optimizer: torch.optim.Optimizer, layers: Iterable[Carrier], advice: str) -> None:
    """Raise if ``optimizer`` does not update the scale of every one of ``layers``.

    Raises:
        ValueError: Naming the layers whose scales the optimizer leaves alone, with ``advice``.
    """
    params = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [layer.name for layer in layers if id(layer.scale) not in params]
    if missing:
        raise ArgumentError(
            f"the optimizer does not update the scales of {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''}: {advice} (or add pruner.scale_parameters() as a param group)"
        )


def step_pre_hook(
    optimizer: torch.optim.Optimizer, step: Callable[[float | torch.Tensor | None], None]
) -> RemovableHandle:
    """Call ``step(grad_scale)`` before every ``optimizer.step()`` that will really update.

    Under ``GradScaler.step``, ordinary optimizers see unscaled gradients; fused ones still carry
    ``optimizer.grad_scale`` (passed on so the penalty is scaled to match), and a fused step that
    GradScaler will skip for inf/NaN gradients is not counted.
    """

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        found_inf = getattr(opt, "found_inf", None)
        if isinstance(found_inf, torch.Tensor) and found_inf.item() > 0:
            return  # a fused step GradScaler will skip
        step(getattr(opt, "grad_scale", None))

    return optimizer.register_step_pre_hook(hook)
