"""Layers whose weight is not a plain tensor, and layers whose computation the tracer cannot see.

*Legacy reparametrizations.* ``torch.nn.utils.weight_norm`` and ``torch.nn.utils.spectral_norm``
(the forms that came before ``torch.nn.utils.parametrizations``) keep ``weight`` as a plain
attribute that a forward pre-hook rebuilds before every call: ``w = g * v / ||v||`` from
``weight_g`` and ``weight_v``, or ``w = W / sigma`` from ``weight_orig`` and the power-iteration
vectors ``weight_u`` and ``weight_v``. Slimming keeps the hook working: it cuts the tensors the
hook reads so that the weight it rebuilds is the cut weight.

* Weight norm: every cut is exact. A cut along the normalized dimension cuts ``g`` and ``v``; a
  cut along another dimension cuts ``v`` and rescales ``g`` by the norm ``v`` lost.
* Spectral norm: rows along its ``dim`` (the output channels) can go, in train and eval mode
  alike: a zero row adds nothing to ``u^T W v`` nor to a power-iteration step. Any other cut
  changes the largest singular value, so the tracer pins those channels.

*Layers with a forward of their own.* A known layer whose class replaces the forward of its torch
class is not observed whole: the tracer follows the operations of its forward (:func:`own_forward`).

*Opaque layers.* A known layer whose weight is computed by something other than a parametrization
or the hooks above, or that has such a hook and a forward of its own, is opaque: the tracer pins
its channels and says why (:func:`opaque_reason`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from typing import Union, cast

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

from .errors import ASSLError
from .layers import LAYER_TYPES, PRODUCER_TYPES

__all__ = [
    "LegacyHook",
    "copy_model",
    "cut",
    "exact_dim",
    "hook_dim",
    "legacy_hook",
    "legacy_hooks",
    "opaque_reason",
    "own_forward",
    "parametrizations_in_eval",
    "refresh",
    "scale_target",
    "spectral_reason",
    "underlying",
    "value",
]

LegacyHook = Union[WeightNorm, SpectralNorm]
"""The forward pre-hook of a legacy ``weight_norm`` or ``spectral_norm``."""

_OWN_METHODS = ("forward", "_conv_forward")
"""Methods through which a layer computes its output: a subclass that replaces one is traced through."""


def legacy_hook(m: nn.Module, name: str = "weight") -> LegacyHook | None:
    """The legacy weight-norm or spectral-norm hook that rebuilds ``m.<name>``, if any."""
    for hook in m._forward_pre_hooks.values():
        if isinstance(hook, (WeightNorm, SpectralNorm)) and hook.name == name:
            return hook
    return None


def legacy_hooks(m: nn.Module) -> list[LegacyHook]:
    """Every legacy weight-norm or spectral-norm hook of ``m``."""
    return [h for h in m._forward_pre_hooks.values() if isinstance(h, (WeightNorm, SpectralNorm))]


def _kind(hook: LegacyHook) -> str:
    return "weight_norm" if isinstance(hook, WeightNorm) else "spectral_norm"


def hook_dim(m: nn.Module, hook: LegacyHook) -> int:
    """The dimension the hook normalizes, made non-negative; -1 for a weight norm over everything."""
    if isinstance(hook, WeightNorm) and hook.dim == -1:
        return -1
    ndim = value(m, underlying(hook)[-1]).ndim
    return hook.dim % ndim


def underlying(hook: LegacyHook) -> tuple[str, ...]:
    """The Parameters the hook rebuilds its tensor from."""
    if isinstance(hook, WeightNorm):
        return hook.name + "_g", hook.name + "_v"
    return (hook.name + "_orig",)


def exact_dim(m: nn.Module, tensor: str) -> int | None:
    """The only dimension of ``m.<tensor>`` that can be cut exactly, or None when any can."""
    hook = legacy_hook(m, tensor)
    return hook_dim(m, hook) if isinstance(hook, SpectralNorm) else None


def spectral_reason(module: str, dim: int) -> str:
    """Why channels along a dimension other than a spectral norm's ``dim`` stay."""
    return (
        f"`{module}` has spectral_norm: removing its channels along dim {dim} changes the largest singular "
        f"value of its weight, so they stay"
    )


def scale_target(m: nn.Module, out_dim: int) -> str:
    """The tensor of a producer that a per-output-channel scale multiplies.

    ``weight`` itself, or for a legacy hook the tensor it rebuilds the weight from: ``weight_g``
    when weight norm normalizes the output channels (the scale then replaces ``|g|``),
    ``weight_v`` when it normalizes another dimension, ``weight_orig`` under spectral norm.
    """
    hook = legacy_hook(m)
    if isinstance(hook, WeightNorm):
        return hook.name + ("_g" if hook_dim(m, hook) == out_dim else "_v")
    if isinstance(hook, SpectralNorm):
        return hook.name + "_orig"
    return "weight"


@contextlib.contextmanager
def parametrizations_in_eval(model: nn.Module) -> Iterator[None]:
    """Inside the block, every parametrization of ``model`` computes as in eval mode.

    Reading a spectral-norm parametrization then does not advance its ``_u``/``_v`` buffers.
    Parametrizations registered inside the block keep their own mode.
    """
    plists = [cast(nn.Module, m.parametrizations) for m in model.modules() if parametrize.is_parametrized(m)]
    found = [p for plist in plists for p in plist.modules()]
    modes = [p.training for p in found]
    for p in found:
        p.training = False
    try:
        yield
    finally:
        for p, mode in zip(found, modes):
            p.training = mode


def value(m: nn.Module, name: str) -> torch.Tensor:
    """``m.<name>`` detached, a parametrized tensor evaluated without a power-iteration step."""
    with parametrizations_in_eval(m), torch.no_grad():
        return getattr(m, name).detach()


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)``, also when a legacy weight norm holds a weight with a graph.

    The weight a legacy hook rebuilds in forward is not a leaf tensor, which ``deepcopy`` refuses;
    the copy gets it detached (the hook rebuilds it at the next call anyway).
    """
    held = []
    for m in model.modules():
        for hook in legacy_hooks(m):
            t = m.__dict__.get(hook.name)
            if isinstance(t, torch.Tensor) and not t.is_leaf:
                held.append((m, hook.name, t))
                m.__dict__[hook.name] = t.detach()
    try:
        return copy.deepcopy(model)
    finally:
        for m, name, t in held:
            m.__dict__[name] = t


def refresh(m: nn.Module) -> None:
    """Rebuild every tensor a legacy hook of ``m`` computes, without a power-iteration step."""
    for hook in legacy_hooks(m):
        with torch.no_grad():
            if isinstance(hook, WeightNorm):
                w = hook.compute_weight(m)
            else:
                w = hook.compute_weight(m, do_power_iteration=False)
        setattr(m, hook.name, w)


def cut(
    m: nn.Module, hook: LegacyHook, cuts: Sequence[tuple[int, np.ndarray]], *, zero: bool
) -> dict[str, torch.Tensor]:
    """New values of the tensors ``hook`` reads, so that it rebuilds its tensor cut (or zeroed).

    Args:
        m: The module that carries ``hook``.
        hook: Its legacy weight-norm or spectral-norm hook.
        cuts: ``(dim, keep)`` pairs: along ``dim`` of the rebuilt tensor, the indices to keep.
        zero: Zero the other indices instead of removing them (the masked reference).

    Returns:
        Tensor name -> new value (for ``weight_g``/``weight_v``, or ``weight_orig``/``weight_u``).

    Raises:
        ASSLError: A cut a spectral norm cannot follow exactly (the tracer pins those channels).
    """
    if isinstance(hook, WeightNorm):
        return _cut_weight_norm(m, hook, cuts, zero)
    return _cut_spectral_norm(m, hook, cuts, zero)


def _index(keep: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(keep)).to(device)


def _cut_weight_norm(
    m: nn.Module, hook: WeightNorm, cuts: Sequence[tuple[int, np.ndarray]], zero: bool
) -> dict[str, torch.Tensor]:
    g, v = value(m, hook.name + "_g"), value(m, hook.name + "_v")
    d = hook_dim(m, hook)  # -1: one norm over the whole tensor
    old = torch.norm_except_dim(v, 2, d)  # the norm each slice of v had: the shape of g
    for dim, keep in cuts:
        if zero:
            v = v.index_fill(dim, _index(~keep, v.device), 0)
            continue
        idx = _index(keep, v.device)
        v = v.index_select(dim, idx)
        if dim == d:
            g, old = g.index_select(dim, idx), old.index_select(dim, idx)
    now = torch.norm_except_dim(v, 2, d)
    # the hook rebuilds g * v / ||v||: with g rescaled by the norm v kept, that is the cut weight
    g = torch.where(now == old, g, g * now / old)
    empty = now == 0  # a slice cut or zeroed whole: g = 0, and v = 1 so that 0 / 0 never happens
    if bool(empty.any()):
        g = torch.where(empty, torch.zeros_like(g), g)
        v = torch.where(empty, torch.ones_like(v), v)
    return {hook.name + "_g": g, hook.name + "_v": v}


def _cut_spectral_norm(
    m: nn.Module, hook: SpectralNorm, cuts: Sequence[tuple[int, np.ndarray]], zero: bool
) -> dict[str, torch.Tensor]:
    w = value(m, hook.name + "_orig")
    u = getattr(m, hook.name + "_u").detach()
    for dim, keep in cuts:
        if dim != hook_dim(m, hook):
            raise ASSLError(spectral_reason(_name(m), dim) + "; trace the model again")
        if zero:
            w = w.index_fill(dim, _index(~keep, w.device), 0)
        else:
            idx = _index(keep, w.device)
            w, u = w.index_select(dim, idx), u.index_select(0, idx)
    out = {hook.name + "_orig": w}
    if not zero:
        out[hook.name + "_u"] = u
    return out


def _name(m: nn.Module) -> str:
    return type(m).__name__


def _torch_base(m: nn.Module) -> type | None:
    return next((c for c in type(m).__mro__ if c in LAYER_TYPES), None)


def own_forward(m: nn.Module) -> str | None:
    """How a known layer computes its output with code of its own, or None when its torch class's does.

    Its class replaces ``forward`` (or ``_conv_forward``) of the torch class it derives from (timm's
    ``BatchNormAct2d``, a convolution that standardizes its weight), or its instance has its own
    ``forward``. The tracer then follows the operations of that code instead of observing the layer
    whole.
    """
    base = _torch_base(m)
    if base is None:
        return None
    cls = type(m)
    for attr in _OWN_METHODS:
        if attr in m.__dict__:
            return f"its `{attr}` is set on the instance"
        if getattr(cls, attr, None) is not getattr(base, attr, None):
            owner = next((c for c in cls.__mro__ if attr in c.__dict__), cls)
            return f"its class {owner.__name__} replaces {base.__name__}.{attr}"
    return None


def opaque_reason(m: nn.Module) -> str | None:
    """Why the tracer can neither treat ``m`` as the torch layer it derives from nor follow its
    forward, or None if it can.

    * its ``weight`` or ``bias`` is neither a Parameter, a buffer, a parametrization nor the
      tensor of a supported legacy weight-norm or spectral-norm hook, but something a hook computes;
    * a legacy weight-norm or spectral-norm hook sits on another tensor, on a layer that is not a
      convolution or Linear, or on a layer with a forward of its own (:func:`own_forward`).
    """
    base = _torch_base(m)
    if base is None:
        return None
    own = own_forward(m)
    for hook in legacy_hooks(m):
        if own is not None:
            return f"a legacy {_kind(hook)} on a layer whose forward is its own ({own}) is not supported"
        if hook.name != "weight" or not isinstance(m, PRODUCER_TYPES):
            return f"a legacy {_kind(hook)} on `{hook.name}` of a {base.__name__} is not supported"
    for t in ("weight", "bias"):
        owned = t in m._parameters or t in m._buffers or parametrize.is_parametrized(m, t)
        if not owned and legacy_hook(m, t) is None and isinstance(m.__dict__.get(t), torch.Tensor):
            return f"its `{t}` is computed outside the layer (by a forward pre-hook?), not a Parameter or buffer"
    return None
