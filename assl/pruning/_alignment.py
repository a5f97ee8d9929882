"""The sparsity-structure alignment loss: it makes a same-pruned group's layers agree on which
units to keep, before the group chooses them.

For each layer ``i`` of a group (a row of unit scores ``s_i``, ``k`` units to prune) a soft
keep-mask ``m_i`` is near 1 above the layer's threshold (its ``(k+1)``-th smallest score) and
near 0 below it. Two forms, chosen by ``Schedule.align_loss``:

* ``"consensus"`` (default): ``m_i = sigmoid((s_i - t_i) / tau_i)`` with the threshold ``t_i`` and
  the temperature ``tau_i`` (the spread of the layer's scores, at least 2% of their mean:
  :func:`temperature`) detached, and the loss
  ``mean over units and layers of (m_i - mean_j m_j)**2``: the variance of the masks across the
  layers. It equals ``(tr(M Mᵀ)/n - mean(M Mᵀ)) / units`` for the stacked masks ``M`` (n rows),
  is 0 when every layer keeps the same units, never exceeds 0.25 whatever the width and depth,
  and its gradient pulls each layer's mask toward the group's mean mask: the pushes on one unit
  cancel across layers, so the scores do not grow. Measured on 6 layers x 32 units starting at
  0.59-0.65 agreement, 150 Adam steps at lr 1e-2 on this loss alone end at agreement 1.0 with the
  scores' mean unchanged (within 2%) and a mean drift of 26-31% of it (``tests/test_pruner.py``).
* ``"authors"`` (the paper's code): ``m_i = sigmoid(s_i - t_i)`` with the threshold not detached
  and the loss ``-mean(M Mᵀ)``. Its gradient raises every score except each layer's threshold
  unit, which it pushes down about n times harder; another unit then becomes the threshold, so
  each layer's kept set churns on its own. On the same synthetic case the agreement does not
  rise (0.58-0.65 -> 0.58-0.63) and the scores grow by 1.7x; its value scales with the number of
  units. Kept to reproduce the paper's runs.
"""

from __future__ import annotations

import itertools

import torch

from ..errors import ArgumentError

__all__ = [
    "ALIGN_LOSSES",
    "TAU_FLOOR",
    "agreement",
    "alignment_loss",
    "consensus_loss",
    "consensus_masks",
    "soft_masks",
    "temperature",
]

ALIGN_LOSSES = ("consensus", "authors")
TAU_FLOOR = 0.02
"""The consensus loss's temperature is at least this share of the mean score of the row."""


def _check_k(scores: torch.Tensor, k: int) -> None:
    units = scores.shape[-1]
    if not 0 <= k < units:
        raise ArgumentError(f"k must be in [0, {units}), got {k}")


def soft_masks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The authors' soft keep-masks ``sigmoid(s - t)`` of shape ``(layers, units)``.

    Raises:
        ValueError: ``k`` is not in ``[0, units)``.
    """
    _check_k(scores, k)
    threshold = torch.kthvalue(scores, k + 1, dim=-1, keepdim=True).values
    return torch.sigmoid(scores - threshold)


def alignment_loss(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The authors' ``-mean(M @ M.T)`` over the soft masks of ``scores`` (``(layers, units)``).

    Example:
        >>> alignment_loss(torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]]), k=1)
    """
    m = soft_masks(scores, k)
    return -(m @ m.T).mean()


def consensus_masks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Soft keep-masks ``sigmoid((s - t) / tau)``, threshold and temperature detached, per row.

    Raises:
        ValueError: ``k`` is not in ``[0, units)``.
    """
    _check_k(scores, k)
    detached = scores.detach()
    threshold = torch.kthvalue(detached, k + 1, dim=-1, keepdim=True).values
    return torch.sigmoid((scores - threshold) / temperature(detached))


def temperature(scores: torch.Tensor) -> torch.Tensor:
    """Per row: the spread (std) of the scores, at least :data:`TAU_FLOOR` of their mean size.

    The floor bounds the gradient as well as the value: ``|dL/ds| <= 1 / (2 n units tau)``, so a
    row whose scores tie (an orthogonal initialization gives every filter the same norm, a spread
    of 1e-7) is not pushed by 1/1e-7 apart.
    """
    spread = scores.std(dim=-1, keepdim=True).nan_to_num(0.0)
    floor = TAU_FLOOR * scores.abs().mean(dim=-1, keepdim=True)
    return torch.maximum(spread, floor).clamp_min(1e-12)


def consensus_loss(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The variance of the layers' soft masks, averaged over units: 0 when aligned, at most 0.25.

    Example:
        >>> consensus_loss(torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), k=1)
        tensor(0.)
    """
    m = consensus_masks(scores, k)
    return (m - m.mean(0, keepdim=True)).pow(2).mean()


def agreement(scores: torch.Tensor, k: int) -> float:
    """How much the layers agree on which units to keep: the mean over pairs of layers of the
    share of one's kept units (its ``units - k`` highest scores) that the other keeps too.

    1.0 when every layer keeps the same units; ``1 - k / units`` is what random kept sets give.
    A single layer agrees with itself (1.0).
    """
    units = scores.shape[-1]
    _check_k(scores, k)
    order = torch.argsort(scores.detach().cpu(), dim=-1, descending=True, stable=True)
    keep = [set(row[: units - k].tolist()) for row in order]
    pairs = list(itertools.combinations(keep, 2))
    if not pairs:
        return 1.0
    return sum(len(a & b) for a, b in pairs) / (len(pairs) * (units - k))
