"""What ``assl.load`` checks in a file before it changes the model, and how it undoes a change.

The sizes a file gives every layer must fit its tensors (a conv's channels and groups, a norm's
features, ...), and its tensors must fit the model's; each check names the layer and says what
to do. :class:`_Undo` records what loading changes so a failure half way puts the model back.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import CheckpointError
from ..layers import implied_shapes, size_attrs


@dataclass
class _Slot:
    """Where a state-dict entry lives in the model once its parametrizations are folded."""

    module: nn.Module
    name: str
    tensor: torch.Tensor  # the model's tensor now (computed if parametrized): shape, dtype, device
    is_param: bool
    requires_grad: bool
    folded: bool  # a parametrized tensor: becomes a plain one on load


def _where(path: object) -> str:
    if isinstance(path, (str, os.PathLike)):
        return repr(os.fspath(path))
    name = getattr(path, "name", None)
    return repr(name) if isinstance(name, str) else "the file object"


def _shape(t: torch.Tensor | tuple[int, ...]) -> str:
    return " x ".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else " x ".join(map(str, t))


def _few(names: set[str]) -> str:
    shown = sorted(names)[:5]
    more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return ", ".join(repr(n) for n in shown) + more


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else ""
    return f"{type(e).__name__}: {line[:200]}" if line else type(e).__name__


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
    expected = {name: size_attrs(m) for name, m in model.named_modules() if size_attrs(m)}
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
        if isinstance(m, nn.GroupNorm) and isinstance(saved, dict) and set(attrs) - set(saved) == {"num_groups"}:
            saved["num_groups"] = m.num_groups  # saved before whole groups could go: they did not
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


def _check_layers(state: dict[str, Any], sizes: dict[str, Any], model: nn.Module, where: str) -> None:
    """Every layer's saved sizes against the saved tensors they imply (``_check_sizes`` passed)."""
    for name, s in sizes.items():
        m = model.get_submodule(name)
        shapes, problem = implied_shapes(m, s)
        given = ", ".join(f"{a}={v}" for a, v in s.items())
        for t_name, shape in shapes.items():
            key = f"{name}.{t_name}" if name else t_name
            saved = state.get(key)
            if problem or not isinstance(saved, torch.Tensor) or tuple(saved.shape) == shape:
                continue
            problem = f"these make {key!r} {_shape(shape)}, but the file's tensor is {_shape(saved)}"
        if problem:
            raise CheckpointError(
                f"{where} contradicts itself: its sizes give `{name}` ({type(m).__name__}) {given}; {problem}. The "
                "file is damaged or was not written by assl.save: save the model again"
            )


class _Undo:
    """What ``load`` is about to change in a model, to put back if a later step fails."""

    def __init__(self) -> None:
        self._steps: list[Callable[[], object]] = []
        self._seen: set[int] = set()

    def module(self, m: nn.Module, attrs: tuple[str, ...] = ()) -> None:
        """Remember ``m``'s class, submodules, parameters, buffers and ``attrs`` as they are now."""
        if id(m) in self._seen:
            return
        self._seen.add(id(m))
        cls = m.__class__
        dicts: list[tuple[dict[str, Any], list[tuple[str, Any]]]] = [
            (d, list(d.items())) for d in (m._modules, m._parameters, m._buffers)
        ]
        values = {a: getattr(m, a) for a in size_attrs(m) + attrs}

        def restore() -> None:
            m.__class__ = cls
            for d, items in dicts:
                d.clear()
                d.update(items)
            for a, v in values.items():
                setattr(m, a, v)

        self._steps.append(restore)

    def values(self, t: torch.Tensor) -> None:
        """Remember the values of ``t``, which keeps its identity and is overwritten in place."""
        old = t.clone()
        self._steps.append(lambda: t.copy_(old))

    def extra_state(self, m: nn.Module) -> None:
        old = copy.deepcopy(m.get_extra_state())
        self._steps.append(lambda: m.set_extra_state(old))

    def restore(self) -> None:
        with torch.no_grad():
            for step in reversed(self._steps):
                step()
