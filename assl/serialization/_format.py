"""Save a slimmed model and load it back into a fresh instance of its dense architecture.

A slimmed model keeps its classes and forward code, so it cannot be rebuilt from its constructor
arguments: the constructor makes the dense widths. ``save`` stores the state dict together with
the size attributes of every known layer; ``load`` shrinks a freshly built dense model to those
sizes and loads the weights. The file holds plain types only and reads with
``torch.load(path, weights_only=True)``; a SHA-256 digest of its tensors and sizes lets ``load``
refuse a truncated or corrupted copy instead of loading changed weights.

The format is a dict: :func:`slim_state_dict` makes it and :func:`load_slim_state_dict` checks
and loads it, for callers that store it inside a larger checkpoint (the Lightning callback);
``save`` and ``load`` are these two around ``torch.save`` and ``torch.load``.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any, BinaryIO, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import ArgumentTypeError, CheckpointError
from ..layers import layer_sizes
from ._checks import (
    _check_layers,
    _check_sizes,
    _check_state,
    _few,
    _first_line,
    _Slot,
    _slots,
    _Undo,
    _where,
)

__all__ = ["FORMAT", "VERSION", "load", "load_slim_state_dict", "record", "save", "slim_state_dict"]

FORMAT = "assl.slim"
VERSION = 2  # 2: the file carries "sha256"; version 1 files had no digest and are refused
_KEYS = ("format", "version", "state_dict", "sizes", "sha256")


def _frame(h: Any, tag: bytes, data: bytes) -> None:
    h.update(tag + len(data).to_bytes(8, "little"))
    h.update(data)


def _feed(h: Any, obj: object) -> None:
    """Feed ``obj`` to the hash ``h`` in a form that tells types, structure and values apart."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
        _frame(h, b"T", f"{t.dtype}{tuple(obj.shape)}".encode())
        data = t.view(torch.uint8).numpy()
        h.update(b"B" + data.nbytes.to_bytes(8, "little"))
        h.update(data)
    elif isinstance(obj, dict):
        h.update(b"d" + len(obj).to_bytes(8, "little"))
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update((b"l" if isinstance(obj, list) else b"t") + len(obj).to_bytes(8, "little"))
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, str):
        _frame(h, b"s", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, bytes):
        _frame(h, b"b", obj)
    elif obj is None or isinstance(obj, (bool, int, float)):
        _frame(h, b"v", f"{type(obj).__name__}:{obj.hex() if isinstance(obj, float) else obj}".encode())
    else:
        _frame(h, b"r", f"{type(obj).__module__}.{type(obj).__qualname__}:{obj!r}".encode("utf-8", "surrogatepass"))


def _digest(state: dict[str, Any], sizes: dict[str, Any]) -> str:
    """SHA-256 over the format, version, state dict (names, dtypes, shapes and bytes of every tensor,
    other entries, the per-module metadata) and sizes, as hex."""
    h = hashlib.sha256()
    _feed(h, [FORMAT, VERSION, state, getattr(state, "_metadata", None), sizes])
    return h.hexdigest()


def slim_state_dict(model: nn.Module) -> dict[str, Any]:
    """A slimmed model as plain data: its state dict, the size attributes of its layers and their digest.

    The dict is ``{"format": "assl.slim", "version": 2, "state_dict": ..., "sizes": {module name:
    {attribute: value}}, "sha256": ...}``. ``sizes`` holds, for every Conv/ConvTranspose
    (``in_channels``, ``out_channels``, ``groups``), Linear (``in_features``, ``out_features``),
    BatchNorm and InstanceNorm (``num_features``), GroupNorm (``num_channels``), LayerNorm
    (``normalized_shape``, as a list) and PReLU (``num_parameters``). ``sha256`` is a hex SHA-256
    digest over the format, the version, the state dict (the names, dtypes, shapes and bytes of
    every tensor) and ``sizes``: :func:`load_slim_state_dict` refuses a dict that does not match
    it. Store it anywhere ``torch.save`` can (it holds plain types and tensors only).

    Args:
        model: The slimmed model. Its parametrizations must be folded (slimming does that for the
            layers it traced).

    Returns:
        The dict described above; its tensors are the model's own (``state_dict()`` does not copy).

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module``.
        CheckpointError: A module still has parametrizations (weight norm, ...).

    Example:
        >>> checkpoint["slim"] = assl.slim_state_dict(small)
    """
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"assl.slim_state_dict needs the slimmed nn.Module, got {type(model).__name__}")
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            tensors = ", ".join(cast(nn.ModuleDict, m.parametrizations).keys())
            raise CheckpointError(
                f"module {name or '<root>'!r} still has parametrizations ({tensors}): assl.save stores slimmed "
                "models, whose parametrizations assl.slim() folded; slim the model first, or fold them with "
                "torch.nn.utils.parametrize.remove_parametrizations"
            )
    return record(model.state_dict(), layer_sizes(model))


def record(state: dict[str, Any], sizes: dict[str, Any]) -> dict[str, Any]:
    """The :func:`slim_state_dict` of a state dict and the sizes recorded with it (digest included)."""
    return {"format": FORMAT, "version": VERSION, "state_dict": state, "sizes": sizes, "sha256": _digest(state, sizes)}


def save(model: nn.Module, path: str | os.PathLike[str] | BinaryIO) -> None:
    """Save a slimmed model: ``torch.save`` of :func:`slim_state_dict`.

    The file reads with ``torch.load(path, weights_only=True)``. Read it back with
    :func:`assl.load` into a fresh instance of the dense architecture.

    Shared (tied) parameters are out of scope: each name is stored, and later loaded, on its own,
    as slimming cuts them.

    Args:
        model: The slimmed model. Its parametrizations must be folded (slimming does that for the
            layers it traced).
        path: A file name, path-like object, or binary file object open for writing.

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module``.
        CheckpointError: A module still has parametrizations (weight norm, ...). The file is not
            written then.

    Example:
        >>> small = pruner.slim()
        >>> assl.save(small, "edsr_slim.pt")
    """
    torch.save(slim_state_dict(model), path)


def _torch_load(f: BinaryIO, where: str) -> object:
    try:
        return torch.load(f, weights_only=True, map_location="cpu")
    except Exception as e:  # a damaged file fails anywhere in the zip, pickle or storage code, with any type
        raise CheckpointError(
            f"{where} cannot be read with torch.load(weights_only=True) ({_first_line(e)}): it is truncated or "
            f"corrupted, or not a file written by assl.save (format {FORMAT!r}); copy it again or save the model "
            "again (see the chained error)"
        ) from e


def _read(path: str | os.PathLike[str] | BinaryIO, where: str) -> object:
    """What the file holds (checked by :func:`_checked`)."""
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as f:  # a missing or unreadable file raises OSError, as open() does
            return _torch_load(f, where)
    return _torch_load(path, where)


def _checked(obj: object, where: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The state dict and sizes of ``obj``, once its format, version, layout and digest are checked."""
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if isinstance(obj, dict) and {"state_dict", "sizes"} <= set(obj) and not (isinstance(fmt, str) and fmt == FORMAT):
        raise CheckpointError(
            f"{where} has the layout of an assl.save file but format {repr(fmt)[:80]} where assl.save writes "
            f"{FORMAT!r}: it is damaged; copy it again or save the model again"
        )
    if not isinstance(obj, dict) or not (isinstance(fmt, str) and fmt == FORMAT):
        got = f"an object of type {type(obj).__name__}" + (
            f" with keys {_few(set(map(str, obj)))}" if isinstance(obj, dict) else ""
        )
        raise CheckpointError(
            f"{where} is not an assl.save file: expected a dict with format {FORMAT!r}, got {got}; a plain "
            "state dict loads with model.load_state_dict into a model of the same sizes"
        )
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version != VERSION:
        if isinstance(version, int) and not isinstance(version, bool) and 0 < version < VERSION:
            raise CheckpointError(
                f"{where} has {FORMAT!r} version {version}, written by an earlier assl without the integrity "
                f"digest this assl checks, so it is refused rather than loaded unchecked; this assl reads version "
                f"{VERSION}: load the file with the assl that wrote it and save the model again with this one"
            )
        raise CheckpointError(
            f"{where} has {FORMAT!r} version {version!r}; this assl reads version {VERSION}: upgrade assl (if "
            "this assl wrote the file, it is damaged: copy it again or save the model again)"
        )
    if set(obj) != set(_KEYS):
        what = "no integrity digest ('sha256')" if "sha256" not in obj else f"the keys {_few(set(map(str, obj)))}"
        raise CheckpointError(
            f"{where} has {what}, where an assl.save file has {', '.join(map(repr, _KEYS))}: it is damaged or was "
            "not written by assl.save; save the model again"
        )
    state, sizes, stored = obj["state_dict"], obj["sizes"], obj["sha256"]
    if not isinstance(state, dict) or not isinstance(sizes, dict) or not isinstance(stored, str):
        raise CheckpointError(
            f"{where} holds a {type(state).__name__} 'state_dict', a {type(sizes).__name__} 'sizes' and a "
            f"{type(stored).__name__} 'sha256' where assl.save writes dict, dict and str: the file is damaged; "
            "save the model again"
        )
    try:
        digest = _digest(state, sizes)
    except Exception as e:
        raise CheckpointError(
            f"{where} is damaged: its contents cannot be hashed to check them against their digest "
            f"({_first_line(e)}); copy the file again or save the model again"
        ) from e
    if digest != stored:
        raise CheckpointError(
            f"{where} is damaged: its tensors and sizes do not match the SHA-256 digest assl.save stored with them "
            "(a truncated or corrupted copy, or a file edited after saving), so nothing was loaded; copy the file "
            "again or save the model again"
        )
    if not all(isinstance(k, str) for k in state) or not all(
        isinstance(k, str) and isinstance(v, dict) and all(isinstance(a, str) for a in v) for k, v in sizes.items()
    ):
        raise CheckpointError(
            f"{where} has a state dict or sizes with keys other than names, or sizes other than dicts: it was not "
            "written by assl.save; save the model again"
        )
    return state, sizes


def _shrink(model: nn.Module, state: dict[str, Any], sizes: dict[str, Any], slots: dict[str, _Slot]) -> None:
    """Fold the parametrizations, give every tensor its saved shape and every layer its saved sizes."""
    with torch.no_grad():
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


def load(model: nn.Module, path: str | os.PathLike[str] | BinaryIO) -> nn.Module:
    """Shrink a fresh dense model to the sizes saved by :func:`assl.save` and load the weights.

    ``model`` must be built as the saved model was before slimming: same classes and module
    names, tensors as large or larger. Every tensor whose saved shape differs is replaced by a new
    one of the saved shape (a ``Parameter`` keeps its ``requires_grad``; dtype and device are the
    model's), parametrizations of the model (weight norm, ...) are folded into plain tensors as
    ``slim`` folds them, the size attributes are set from the file, then the weights load with
    ``strict=True``. Build the optimizer after loading.

    The file is checked whole before the model changes: its format and version, the SHA-256
    digest ``save`` stored over its tensors and sizes (a truncated or corrupted copy does not
    match it), its keys and layers against the model's, and every layer's sizes against the
    shapes of its saved tensors (``out_channels``, ``in_channels`` and ``groups`` against a
    convolution's weight, ``num_features`` against a norm's weight and running stats, ...). Should
    a step fail once the model has started to change (a module's ``set_extra_state`` refusing its
    value, running out of memory), the model is put back as it was before the error propagates:
    the same tensors with the same values, sizes, classes and parametrizations. Tensors that keep
    their shape are copied once for that while the weights load.

    Shared (tied) parameters are out of scope: each name gets its own tensor, so ties are broken,
    as ``slim`` breaks them.

    Args:
        model: A fresh instance of the dense architecture, on the device and dtype wanted.
        path: A file name, path-like object, or binary file object written by :func:`assl.save`.

    Returns:
        ``model`` itself, slimmed to the saved sizes and holding the saved weights.

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module``.
        OSError: ``path`` names a file that cannot be opened (``FileNotFoundError``, ...).
        CheckpointError: The file cannot be read (truncated, corrupted, not a torch file), is not
            an ``assl.save`` file, has another format version (version 1 files, written before
            the digest, are refused), does not match its digest, contradicts itself (sizes that
            do not fit its tensors), or does not fit the model (other state-dict keys or modules,
            a tensor with other dimensions or larger than the model's, another kernel size); or
            loading the weights failed after the model started to change. The model is as it was
            before the call then. Running out of memory raises the usual error, also with the
            model put back.

    Example:
        >>> model = assl.load(EDSR(n_resblocks=16, n_feats=64), "edsr_slim.pt")
    """
    _check_model(model, "assl.load")
    where = _where(path)
    return _load_checked(model, _checked(_read(path, where), where), where)


def load_slim_state_dict(model: nn.Module, slim_state: Mapping[str, Any]) -> nn.Module:
    """Shrink a fresh dense model to the sizes of a :func:`slim_state_dict` and load its weights.

    What :func:`assl.load` does with a file, on the dict itself: the same checks before the model
    changes (format, version, digest, keys, every layer's sizes against its tensors), and the
    same undo when a step fails after it started to change.

    Args:
        model: A fresh instance of the dense architecture, on the device and dtype wanted.
        slim_state: A dict returned by :func:`slim_state_dict` (or read back from where it was stored).

    Returns:
        ``model`` itself, slimmed to the recorded sizes and holding the recorded weights.

    Raises:
        ArgumentTypeError: ``model`` is not an ``nn.Module``.
        CheckpointError: ``slim_state`` is not such a dict, does not match its digest or does not
            fit the model; the model is as it was before the call.

    Example:
        >>> small = assl.load_slim_state_dict(build_dense_model(), checkpoint["slim"])
    """
    _check_model(model, "assl.load_slim_state_dict")
    where = "the slim state dict"
    return _load_checked(
        model, _checked(dict(slim_state) if isinstance(slim_state, Mapping) else slim_state, where), where
    )


def _check_model(model: object, caller: str) -> None:
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"{caller} needs a fresh instance of the dense nn.Module, got {type(model).__name__}")


def _load_checked(model: nn.Module, checked: tuple[dict[str, Any], dict[str, Any]], where: str) -> nn.Module:
    """Load a checked state dict and sizes into ``model`` (see :func:`load`)."""
    state, sizes = checked
    slots = _slots(model)
    model_keys = set(slots) | {k for k, v in model.state_dict().items() if not isinstance(v, torch.Tensor)}
    _check_state(state, slots, model_keys, where)
    _check_sizes(sizes, model, where)
    _check_layers(state, sizes, model, where)

    undo = _Undo()  # every check is done: from here on the model changes, and goes back on failure
    try:
        for key, slot in slots.items():
            undo.module(slot.module)
            if not slot.folded and state[key].shape == slot.tensor.shape:
                undo.values(slot.tensor)  # overwritten in place by load_state_dict
        for name in sizes:
            undo.module(model.get_submodule(name))
        for key in model_keys - set(slots):  # extra state, set by the module's set_extra_state
            undo.extra_state(model.get_submodule(key.rpartition(".")[0]))
        _shrink(model, state, sizes, slots)
        model.load_state_dict(state, strict=True)
    except BaseException as e:
        undo.restore()
        if isinstance(e, (MemoryError, torch.cuda.OutOfMemoryError)) or not isinstance(e, Exception):
            raise
        raise CheckpointError(
            f"loading {where} into the model failed ({_first_line(e)}); the model is as it was before the call: "
            "see the chained error"
        ) from e
    return model
