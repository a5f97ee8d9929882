"""The sparsity-structure alignment loss: the soft-mask Gram term of ASSL.

For each layer ``i`` of a same-pruned group, with unit scores ``s_i`` (``|g|`` per unit) and
``k`` units to prune, the soft mask is ``m_i = sigmoid(s_i - t_i)`` where ``t_i`` is the
``(k+1)``-th smallest score, the smallest that survives (not detached, as in the paper's code).
With ``M`` the stacked masks (one row per layer), the loss is ``-mean(M @ M.T)``: it is lowest
when the layers keep the same units.
"""

from __future__ import annotations

import torch

__all__ = ["alignment_loss", "soft_masks"]


def soft_masks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Soft keep-masks of shape ``(layers, units)`` from unit scores of the same shape.

    Raises:
        ValueError: ``k`` is not in ``[0, units)``.
    """
    units = scores.shape[-1]
    if not 0 <= k < units:
        raise ValueError(f"k must be in [0, {units}), got {k}")
    threshold = torch.kthvalue(scores, k + 1, dim=-1, keepdim=True).values
    return torch.sigmoid(scores - threshold)


def alignment_loss(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``-mean(M @ M.T)`` over the soft masks of ``scores`` (``(layers, units)``).

    Example:
        >>> alignment_loss(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), k=1)
    """
    m = soft_masks(scores, k)
    return -(m @ m.T).mean()
