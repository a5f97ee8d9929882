"""How the library walks what a model is called with and what it returns."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import ArgumentError, ArgumentTypeError

__all__ = ["batch_size", "call_args", "check_on_device", "input_sets", "tensors"]


def tensors(obj: Any) -> Iterable[torch.Tensor]:
    """Every tensor inside ``obj``: nested tuples, lists, dicts and dataclasses are searched."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from tensors(item)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from tensors(getattr(obj, f.name))


def batch_size(inputs: Any) -> int:
    """Samples in ``inputs``: the first dimension of their first tensor that has one (1 if none has)."""
    return next((int(t.shape[0]) for t in tensors(inputs) if t.ndim > 0), 1)


def call_args(inputs: Any) -> tuple[tuple, dict]:
    """Positional and keyword arguments from example inputs as :func:`assl.trace` takes them.

    Raises:
        TypeError: ``inputs`` is not a tensor, a tuple/list or a dict.
    """
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    raise ArgumentTypeError(
        f"example inputs must be a tensor, a tuple/list of positional arguments or a dict of keyword "
        f"arguments, got {type(inputs).__name__}"
    )


def input_sets(example_inputs: Any, extra_inputs: Any) -> list[tuple[tuple, dict]]:
    """Call arguments of ``example_inputs`` and of every set in ``extra_inputs``, checked.

    Raises:
        TypeError: ``extra_inputs`` is not a list of input sets (a tensor there would be iterated
            row by row), or an input set is not a tensor, tuple/list or dict.
        ValueError: An input set holds a tensor on the meta device.
    """
    if isinstance(extra_inputs, (torch.Tensor, str, bytes, Mapping)) or not isinstance(extra_inputs, Iterable):
        raise ArgumentTypeError(
            f"extra_inputs must be a list of input sets, each given as example_inputs is (e.g. "
            f"extra_inputs=[torch.randn(1, 3, 24, 40)]), got a {type(extra_inputs).__name__}"
        )
    named = [("example_inputs", example_inputs), *((f"extra_inputs[{i}]", x) for i, x in enumerate(extra_inputs))]
    calls = []
    for which, inputs in named:
        try:
            args, kwargs = call_args(inputs)
        except TypeError as e:
            raise ArgumentTypeError(f"{which}: {e}") from None
        if any(t.is_meta for t in tensors((args, kwargs))):
            raise ArgumentError(
                f"{which} holds a tensor on the meta device, which has no values to run the model on; "
                f"give real tensors on the model's device"
            )
        calls.append((args, kwargs))
    return calls


def check_on_device(model: nn.Module) -> None:
    """Raise unless every parameter and buffer of ``model`` holds real values.

    Raises:
        ValueError: A parameter or buffer is on the meta device (named).
    """
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.is_meta:
            raise ArgumentError(
                f"`{name}` of the model is on the meta device, which has no values to run it on: "
                f"materialize the model first (model.to_empty(device=...), then load its weights)"
            )
