"""Weight-normalized scales: ``W = g * V / ||V||`` with one ``g`` per output channel.

The scale is a ``torch.nn.utils.parametrize`` parametrization that owns the new Parameter
``g``; the layer's weight Parameter stays the same object (as ``parametrizations.weight.original``),
so an optimizer built before the insertion keeps updating it. ``g`` starts at ``||W||`` of the
weight the layer holds at that moment, so inserting the scale does not change the output. Under a
legacy weight-norm or spectral-norm hook the scale goes on the tensor the hook rebuilds the weight
from (``reparam.scale_target``).
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Mapping
from typing import cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from .._reparam import scale_target
from ..errors import ArgumentTypeError, ASSLError, CheckpointError
from ..layers import output_dim

__all__ = [
    "WeightScale",
    "insert_scale",
    "load_dense",
    "remove_scale",
    "removed_on_error",
    "scale_of",
    "scaled_state_dict",
]

_EPS = 1e-12


class WeightScale(nn.Module):
    """The parametrization ``weight -> scale * weight / ||weight||`` along ``dim``.

    Attributes:
        scale: One scale per output channel (per slice along ``dim``), the importance ``g``.
    """

    def __init__(self, weight: torch.Tensor, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.scale = nn.Parameter(self._norm(weight.detach()).clone())

    def _norm(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.transpose(0, self.dim).flatten(1).norm(dim=1)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        shape = [1] * weight.ndim
        shape[self.dim] = -1
        factor = self.scale / self._norm(weight).clamp_min(_EPS)
        return weight * factor.view(shape)


def insert_scale(module: nn.Module) -> WeightScale:
    """Register a :class:`WeightScale` on ``module.weight`` (or what a legacy hook builds it from)."""
    name = scale_target(module, output_dim(module))
    weight = getattr(module, name, None)
    if not isinstance(weight, torch.Tensor):
        raise ArgumentTypeError(f"{type(module).__name__} has no tensor `{name}` to scale")
    ws = WeightScale(weight, output_dim(module))
    parametrize.register_parametrization(module, name, ws)
    return ws


def load_dense(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state``, a dense state dict, into ``model`` whose layers carry :class:`WeightScale`.

    Everything is checked before the first tensor is copied (a mapping of names to tensors, the
    same keys as the model's, each tensor of the model's shape, finite floating values), and a
    load that fails anyway puts every tensor back: on any error the model is as it was.

    Raises:
        CheckpointError: What is wrong, with the key.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"load_dense_state_dict takes a state dict (a mapping), got {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"state[{key!r}] is a {type(value).__name__}: a state dict maps names (str) to tensors"
            )
    converted = scaled_state_dict(model, state)
    mine = model.state_dict()
    missing, unexpected = sorted(mine.keys() - converted.keys()), sorted(converted.keys() - mine.keys())
    if missing or unexpected:
        missing = sorted({_dense_key(k) for k in missing})
        parts = [f"missing {_few(missing)}" if missing else "", f"unexpected {_few(unexpected)}" if unexpected else ""]
        raise CheckpointError(
            f"the state dict does not fit the model: {'; '.join(p for p in parts if p)}. Load the dense weights of "
            "this architecture (model.state_dict() of the model without scales); the model is left as it was"
        )
    for key, value in converted.items():
        if value.shape != mine[key].shape:
            source = key if key in state else _dense_key(key)
            raise CheckpointError(
                f"state[{source!r}] has shape {tuple(value.shape)}, the model's is {tuple(mine[key].shape)}; "
                "the model is left as it was"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            source = key if key in state else _dense_key(key)
            raise CheckpointError(f"state[{source!r}] contains NaN or inf; the model is left as it was")
    before = {k: v.detach().clone() for k, v in mine.items()}
    try:
        model.load_state_dict(converted)
    except Exception as e:
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(before[k])
        raise CheckpointError(f"loading the state dict failed ({type(e).__name__}: {e}); the model is as it was") from e


def _few(keys: list[str]) -> str:
    return ", ".join(map(repr, keys[:5])) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def _dense_key(key: str) -> str:
    """The dense key of a parametrized one: ``a.parametrizations.weight.original`` (or ``.0.scale``) -> ``a.weight``."""
    head, sep, tail = key.partition("parametrizations.")
    return head + tail.split(".")[0] if sep else key


def scaled_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``, a dense state dict, rewritten for ``model`` whose layers carry :class:`WeightScale`.

    Each scaled tensor (``weight``, or ``weight_g``/``weight_v``/``weight_orig`` under a legacy
    hook) becomes its ``parametrizations.<tensor>.original`` and its scale is set to the
    per-channel norm of that tensor, so the model then computes exactly what the dense weights
    compute. Keys already in the parametrized form are kept as they are.
    """
    out = collections.OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:  # the layers' state versions (BatchNorm's num_batches_tracked)
        out._metadata = metadata  # type: ignore[attr-defined]
    for name, module in model.named_modules():
        found = _scaled(module)
        if found is None:
            continue
        t_name, index, ws = found
        prefix = f"{name}." if name else ""
        dense = out.get(f"{prefix}{t_name}")
        original = f"{prefix}parametrizations.{t_name}.original"
        if dense is None or original in out:
            continue
        out[original] = out.pop(f"{prefix}{t_name}")
        out[f"{prefix}parametrizations.{t_name}.{index}.scale"] = ws._norm(dense.detach()).to(ws.scale.dtype)
    return out


def _scaled(module: nn.Module) -> tuple[str, int, WeightScale] | None:
    """The tensor a :class:`WeightScale` of ``module`` scales, its place in the list, and the scale."""
    if not parametrize.is_parametrized(module):
        return None
    for name, plist in _lists(module).items():
        for i, p in enumerate(plist):
            if isinstance(p, WeightScale):
                return name, i, p
    return None


def scale_of(module: nn.Module) -> WeightScale | None:
    """The :class:`WeightScale` registered on a tensor of ``module``, if any."""
    found = _scaled(module)
    return found[2] if found is not None else None


def _lists(module: nn.Module) -> dict[str, nn.ModuleList]:
    plists = cast(nn.ModuleDict, module.parametrizations)
    return {name: cast(nn.ModuleList, plists[name]) for name in plists}


def remove_scale(module: nn.Module) -> bool:
    """Remove the :class:`WeightScale` of ``module`` (other parametrizations stay); whether one was there.

    The tensor it scaled gets back its original Parameter object, unchanged.
    """
    found = _scaled(module)
    if found is None:
        return False
    name, index, _ = found
    plist = _lists(module)[name]
    if len(plist) == 1:
        parametrize.remove_parametrizations(module, name, leave_parametrized=False)
    else:
        del plist[index]
    return True


@contextlib.contextmanager
def removed_on_error(model: nn.Module) -> Iterator[None]:
    """Remove every :class:`WeightScale` of ``model`` again if the block fails.

    The model is then as it was before the block inserted them. The checks' errors (an
    :class:`~assl.ASSLError`, or a ``ValueError``/``TypeError`` before the first scale went in)
    propagate as they are; any other is raised as an ``ASSLError`` saying the scales were removed.
    """
    try:
        yield
    except Exception as e:
        removed = sum(remove_scale(m) for m in model.modules())
        if isinstance(e, ASSLError) or (not removed and isinstance(e, (ValueError, TypeError))):
            raise
        raise ASSLError(f"inserting the scales failed ({type(e).__name__}: {e}); the model is left as it was") from e
