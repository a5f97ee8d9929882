"""How the library walks what a model is called with and what it returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import torch

__all__ = ["call_args", "tensors"]


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
    raise TypeError(
        f"example inputs must be a tensor, a tuple/list of positional arguments or a dict of keyword "
        f"arguments, got {type(inputs).__name__}"
    )
