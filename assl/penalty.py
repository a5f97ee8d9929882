"""The growing L2 penalty on the chosen channels, added to their gradients.

At each step the chosen entries ``c`` of every scale ``g`` and bias ``b`` get
``grad(x_c) += reg * x_c``, the gradient of ``reg/2 * x_c**2`` (Wang et al., "Neural Pruning via
Growing Regularization", ICLR 2021). ``reg`` comes from the :class:`~assl.Schedule`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from .selection import Carrier

__all__ = ["add_penalty", "apply_penalty", "check_optimizer", "step_pre_hook"]


def apply_penalty(layers: Iterable[Carrier], factor: float | torch.Tensor) -> None:
    """Add ``factor * x`` to the gradient of the chosen scale entries and biases of ``layers``."""
    with torch.no_grad():
        for layer in layers:
            add_penalty(layer.scale, layer.scale_idx, factor)
            if layer.bias is not None:
                add_penalty(layer.bias, layer.bias_idx, factor)


def add_penalty(p: torch.Tensor, idx: torch.Tensor, factor: float | torch.Tensor) -> None:
    """``grad[idx] += factor * p[idx]``: the gradient of ``factor/2 * p^2`` on the chosen entries."""
    if idx.numel() == 0 or not p.requires_grad:
        return
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
        raise ValueError(
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
