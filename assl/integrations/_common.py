"""What the training-framework integrations share; plain torch and assl, no framework.

Finding the optimizer that updates the Pruner's scales, putting a slimmed copy in place of the
dense network inside a larger module, and shrinking a freshly built dense network to the sizes a
checkpoint recorded (through :func:`assl.load_slim_state_dict`, which checks them against the checkpoint's tensors).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ArgumentError, StateError
from ..layers import layer_sizes
from ..pruning._state import check_version
from ..pruning.pruner import Pruner
from ..serialization import load_slim_state_dict, record

__all__ = ["STATE_VERSION", "check_state", "device_of", "find_optimizer", "put_in_place", "restore", "shrink", "sizes"]

STATE_VERSION = 1


def sizes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The size attributes of every known layer of ``model``, as :func:`assl.save` stores them."""
    return layer_sizes(model)


def check_state(state: Mapping[str, Any], module: str | None) -> None:
    """Raise unless ``state`` is an integration's saved state for the network named ``module``.

    Raises:
        ValueError: Not such a state, or one that pruned another submodule.
    """
    check_version(state, "an ASSLPruning state", STATE_VERSION)
    if state.get("module") != module:
        raise StateError(
            f"the checkpoint pruned module={state.get('module')!r}, this callback prunes module={module!r}: create "
            "the callback as in the run you resume"
        )


def put_in_place(root: nn.Module, dense: nn.Module, small: nn.Module, changed: Iterable[str]) -> None:
    """Put the slimmed ``small`` in place of ``dense`` inside ``root``.

    When ``dense`` is ``root`` itself (which cannot be swapped from inside), ``small`` is a slimmed
    copy of it and the modules that slimming ``changed`` are swapped one by one, along with the
    root's own tensors if it is among them. Every place a swapped module sits is updated, so
    aliases of it inside ``root`` stay aliases.
    """
    if dense is root:
        changed = list(changed)
        new = {id(root.get_submodule(n)): small.get_submodule(n) for n in changed if n}
        if "" in changed:
            root._parameters.update(small._parameters)
            root._buffers.update(small._buffers)
    else:
        new = {id(dense): small}
    for m in list(root.modules()):
        for key, child in list(m._modules.items()):
            if child is not None and id(child) in new:
                m._modules[key] = new[id(child)]


def shrink(target: nn.Module, state: Mapping[str, Any], module: str | None, saved: Mapping[str, Any]) -> None:
    """Shrink ``target``, built dense (with or without a Pruner's scales), to the ``saved`` sizes.

    Args:
        target: The network, ``root.get_submodule(module)`` (or ``root`` when ``module`` is None).
        state: The whole root module's state dict, as the checkpoint holds it.
        module: The network's name inside the root module, or None.
        saved: The sizes :func:`sizes` recorded when the checkpoint was taken.

    Raises:
        assl.CheckpointError: The sizes and the tensors do not fit ``target`` (it is left as it was).
    """
    prefix = f"{module}." if module else ""
    sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    load_slim_state_dict(target, record(sub, dict(saved)))


def restore(root: nn.Module, checkpoint: Mapping[str, Any], key: str, module: str | None) -> bool:
    """Shrink the network in ``root`` to a slimmed checkpoint's sizes; False if it is not slimmed.

    Args:
        root: The module whose state dict the checkpoint's ``"state_dict"`` is.
        checkpoint: The checkpoint, with the integration's state at ``checkpoint["callbacks"][key]``.
        key: Where the integration's state is.
        module: The network's name inside ``root`` (None: ``root`` itself).

    Raises:
        ValueError: The state is not the integration's or names another ``module``.
    """
    state = checkpoint.get("callbacks", {}).get(key)
    if not isinstance(state, Mapping) or not state.get("slimmed"):
        return False
    check_state(state, module)
    shrink(root if module is None else root.get_submodule(module), checkpoint["state_dict"], module, state["sizes"])
    return True


def device_of(module: nn.Module) -> torch.device:
    """Where the first parameter or buffer of ``module`` is (the CPU for a module without any)."""
    for t in itertools.chain(module.parameters(), module.buffers()):
        return t.device
    return torch.device("cpu")


def find_optimizer(
    pruner: Pruner, optimizers: Iterable[torch.optim.Optimizer], keep: bool, advice: str
) -> torch.optim.Optimizer:
    """The optimizer that updates every scale of ``pruner`` (which stays attached to it if ``keep``).

    Raises:
        ValueError: None does; ``advice`` says what to do (the Pruner's own refusal is chained).
    """
    refusal: ValueError | None = None
    for opt in optimizers:
        try:
            pruner.attach(opt)
        except ValueError as e:
            refusal = e
            continue
        if not keep:
            pruner.detach()
        return opt
    raise ArgumentError(advice) from refusal
