"""Save a slimmed model and load it back into a fresh instance of its dense architecture.

A slimmed model keeps its classes and forward code, so it cannot be rebuilt from its constructor
arguments: the constructor makes the dense widths. ``save`` stores the state dict together with
the size attributes of every known layer; ``load`` shrinks a freshly built dense model to those
sizes and loads the weights. The file holds plain types only and reads with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from .errors import CheckpointError

__all__ = ["CheckpointError", "load", "save"]

FORMAT = "assl.slim"
VERSION = 1

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FEATURE_NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
)
# the layers slimming resizes, and the attributes that follow their tensors
_SIZE_ATTRS: tuple[tuple[tuple[type[nn.Module], ...], tuple[str, ...]], ...] = (
    (_CONVS, ("in_channels", "out_channels", "groups")),
    ((nn.Linear,), ("in_features", "out_features")),
    (_FEATURE_NORMS, ("num_features",)),
    ((nn.GroupNorm,), ("num_channels",)),
    ((nn.LayerNorm,), ("normalized_shape",)),
    ((nn.PReLU,), ("num_parameters",)),
)


@dataclass
class _Slot:
    """Where a state-dict entry lives in the model once its parametrizations are folded."""

    module: nn.Module
    name: str
    tensor: torch.Tensor  # the model's tensor now (computed if parametrized): shape, dtype, device
    is_param: bool
    requires_grad: bool
    folded: bool  # a parametrized tensor: becomes a plain one on load


def _size_attrs(m: nn.Module) -> tuple[str, ...]:
    for types, attrs in _SIZE_ATTRS:
        if isinstance(m, types):
            return attrs
    return ()


def _sizes(model: nn.Module) -> dict[str, dict[str, Any]]:
    sizes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = _size_attrs(m)
        if attrs:
            sizes[name] = {a: list(getattr(m, a)) if a == "normalized_shape" else int(getattr(m, a)) for a in attrs}
    return sizes


def _where(path: object) -> str:
    if isinstance(path, (str, os.PathLike)):
        return repr(os.fspath(path))
    name = getattr(path, "name", None)
    return repr(name) if isinstance(name, str) else "the file object"


def _shape(t: torch.Tensor | torch.Size) -> str:
    return " x ".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else " x ".join(map(str, t))


def _few(names: set[str]) -> str:
    shown = sorted(names)[:5]
    more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return ", ".join(repr(n) for n in shown) + more


def save(model: nn.Module, path: str | os.PathLike[str] | BinaryIO) -> None:
    """Save a slimmed model: its state dict and the size attributes of its layers.

    The file is a dict of plain types, ``{"format": "assl.slim", "version": 1, "state_dict": ...,
    "sizes": {module name: {attribute: value}}}``, readable with ``torch.load(path,
    weights_only=True)``. ``sizes`` holds, for every Conv/ConvTranspose (``in_channels``,
    ``out_channels``, ``groups``), Linear (``in_features``, ``out_features``), BatchNorm and
    InstanceNorm (``num_features``), GroupNorm (``num_channels``), LayerNorm
    (``normalized_shape``, as a list) and PReLU (``num_parameters``). Read it back with
    :func:`assl.load` into a fresh instance of the dense architecture.

    Shared (tied) parameters are out of scope: each name is stored, and later loaded, on its own,
    as ``slim`` cuts them.

    Args:
        model: The slimmed model. Its parametrizations must be folded (``slim`` does that for the
            layers it traced).
        path: A file name, path-like object, or binary file object open for writing.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        CheckpointError: A module still has parametrizations (weight norm, ...). The file is not
            written then.

    Example:
        >>> assl.slim(model, graph, plan)
        >>> assl.save(model, "edsr_slim.pt")
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"assl.save needs the slimmed nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            tensors = ", ".join(cast(nn.ModuleDict, m.parametrizations).keys())
            raise CheckpointError(
                f"module {name or '<root>'!r} still has parametrizations ({tensors}): assl.save stores slimmed "
                "models, whose parametrizations assl.slim() folded; slim the model first, or fold them with "
                "torch.nn.utils.parametrize.remove_parametrizations"
            )
    torch.save(
        {"format": FORMAT, "version": VERSION, "state_dict": model.state_dict(), "sizes": _sizes(model)},
        path,
    )


def _read(path: str | os.PathLike[str] | BinaryIO) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    where = _where(path)
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, EOFError, RuntimeError) as e:
        raise CheckpointError(
            f"{where} cannot be read with torch.load(weights_only=True) ({type(e).__name__}): it is not a file "
            f"written by assl.save (format {FORMAT!r}); see the chained error"
        ) from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        got = f"an object of type {type(obj).__name__}" + (
            f" with keys {_few(set(map(str, obj)))}" if isinstance(obj, dict) else ""
        )
        raise CheckpointError(
            f"{where} is not an assl.save file: expected a dict with format {FORMAT!r}, got {got}; a plain "
            "state dict loads with model.load_state_dict into a model of the same sizes"
        )
    version = obj.get("version")
    if version != VERSION:
        raise CheckpointError(
            f"{where} has {FORMAT!r} version {version!r}; this assl reads version {VERSION}: upgrade assl"
        )
    state, sizes = obj.get("state_dict"), obj.get("sizes")
    if not isinstance(state, dict) or not isinstance(sizes, dict):
        raise CheckpointError(f"{where} has no 'state_dict' or 'sizes' dict: the file is damaged; save it again")
    return state, sizes


def _slots(model: nn.Module) -> dict[str, _Slot]:
    """State-dict key -> slot, as the model's state dict will be once its parametrizations are folded."""
    slots: dict[str, _Slot] = {}
    folded_prefixes: list[str] = []
    for mod_name, m in model.named_modules(remove_duplicate=False):
        if not parametrize.is_parametrized(m):
            continue
        prefix = f"{mod_name}." if mod_name else ""
        with torch.no_grad():
            for t_name, plist in cast(nn.ModuleDict, m.parametrizations).items():
                original = cast(torch.Tensor, plist.original if hasattr(plist, "original") else plist.original0)
                slots[prefix + t_name] = _Slot(
                    m,
                    t_name,
                    getattr(m, t_name).detach(),
                    isinstance(original, nn.Parameter),
                    bool(original.requires_grad),
                    folded=True,
                )
                folded_prefixes.append(f"{prefix}parametrizations.{t_name}.")
    for key, value in model.state_dict(keep_vars=True).items():
        if any(key.startswith(p) for p in folded_prefixes) or not isinstance(value, torch.Tensor):
            continue
        mod_name, _, t_name = key.rpartition(".")
        m = model.get_submodule(mod_name)
        is_param = isinstance(value, nn.Parameter)
        slots[key] = _Slot(m, t_name, value.detach(), is_param, bool(value.requires_grad), folded=False)
    return slots


def _check_state(state: dict[str, Any], slots: dict[str, _Slot], model_keys: set[str], where: str) -> None:
    missing, unexpected = model_keys - set(state), set(state) - model_keys
    if missing or unexpected:
        parts = [f"missing from the file: {_few(missing)}" if missing else ""]
        parts.append(f"not in the model: {_few(unexpected)}" if unexpected else "")
        raise CheckpointError(
            f"{where} was saved from a different architecture; state dict keys {'; '.join(p for p in parts if p)}. "
            "Build the model with the class and arguments it was saved from"
        )
    for key, slot in slots.items():
        saved, now = state[key], slot.tensor
        if not isinstance(saved, torch.Tensor):
            raise CheckpointError(f"{where} holds a {type(saved).__name__} for tensor {key!r}: the file is damaged")
        if saved.ndim != now.ndim or any(s > n for s, n in zip(saved.shape, now.shape)):
            raise CheckpointError(
                f"tensor {key!r} is {_shape(saved)} in {where} but {_shape(now)} in the model: a slimmed model "
                "only shrinks; load it into a fresh instance of the dense architecture it was slimmed from"
            )


def _check_sizes(sizes: dict[str, Any], model: nn.Module, where: str) -> None:
    expected = {name: _size_attrs(m) for name, m in model.named_modules() if _size_attrs(m)}
    missing, unexpected = set(expected) - set(sizes), set(sizes) - set(expected)
    if unexpected:
        raise CheckpointError(
            f"{where} has sizes for modules the model lacks or that are not layers slimming resizes: "
            f"{_few(unexpected)}; it was saved from a different architecture"
        )
    if missing:
        raise CheckpointError(
            f"{where} has no sizes for the model's layers {_few(missing)}: it was saved from a different architecture"
        )
    for name, attrs in expected.items():
        saved = sizes[name]
        m = model.get_submodule(name)
        if not isinstance(saved, dict) or set(saved) != set(attrs):
            raise CheckpointError(
                f"{where} has sizes {sorted(saved) if isinstance(saved, dict) else saved!r} for module {name!r}, a "
                f"{type(m).__name__} with {list(attrs)}: it was saved from a different architecture"
            )
        for attr in attrs:
            value, now = saved[attr], getattr(m, attr)
            values, nows = (value, list(now)) if attr == "normalized_shape" else ([value], [now])
            if (
                not isinstance(values, list)
                or len(values) != len(nows)
                or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= n for v, n in zip(values, nows))
            ):
                raise CheckpointError(
                    f"`{name}.{attr}` is {value!r} in {where} but {now!r} in the model: a slimmed model only "
                    "shrinks; load it into a fresh instance of the dense architecture it was slimmed from"
                )


def load(model: nn.Module, path: str | os.PathLike[str] | BinaryIO) -> nn.Module:
    """Shrink a fresh dense model to the sizes saved by :func:`assl.save` and load the weights.

    ``model`` must be built as the saved model was before slimming: same classes and module
    names, tensors as large or larger. Every tensor whose saved shape differs is replaced by a new
    one of the saved shape (a ``Parameter`` keeps its ``requires_grad``; dtype and device are the
    model's), parametrizations of the model (weight norm, ...) are folded into plain tensors as
    ``slim`` folds them, the size attributes are set from the file, then the weights load with
    ``strict=True``. Build the optimizer after loading.

    Shared (tied) parameters are out of scope: each name gets its own tensor, so ties are broken,
    as ``slim`` breaks them.

    Args:
        model: A fresh instance of the dense architecture, on the device and dtype wanted.
        path: A file name, path-like object, or binary file object written by :func:`assl.save`.

    Returns:
        ``model`` itself, slimmed to the saved sizes and holding the saved weights.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        CheckpointError: The file is not an ``assl.save`` file, has another format version, or
            does not fit the model (other state-dict keys or modules, a tensor with other
            dimensions or larger than the model's). Every check happens before the first change:
            the model is untouched then.

    Example:
        >>> model = assl.load(EDSR(n_resblocks=16, n_feats=64), "edsr_slim.pt")
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"assl.load needs a fresh instance of the dense nn.Module, got {type(model).__name__}")
    where = _where(path)
    state, sizes = _read(path)
    slots = _slots(model)
    model_keys = set(slots) | {k for k, v in model.state_dict().items() if not isinstance(v, torch.Tensor)}
    _check_state(state, slots, model_keys, where)
    _check_sizes(sizes, model, where)

    with torch.no_grad():  # every check is done: from here on the model changes
        for slot in slots.values():
            if slot.folded and parametrize.is_parametrized(slot.module):
                m = slot.module
                m.__class__ = m.__class__.__bases__[0]  # leave the shared Parametrized* class alone
                del m._modules["parametrizations"]
        for key, slot in slots.items():
            shape = state[key].shape
            if not slot.folded and shape == slot.tensor.shape:
                continue
            new = torch.empty(shape, dtype=slot.tensor.dtype, device=slot.tensor.device)
            if slot.is_param:
                slot.module._parameters[slot.name] = nn.Parameter(new, requires_grad=slot.requires_grad)
            else:
                slot.module._buffers[slot.name] = new
        for name, attrs in sizes.items():
            m = model.get_submodule(name)
            for attr, value in attrs.items():
                setattr(m, attr, tuple(value) if attr == "normalized_shape" else value)
    model.load_state_dict(state, strict=True)
    return model
