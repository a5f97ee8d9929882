"""Multiply-accumulates, counted twice: by the library under test and by torch's flop counter.

``assl``'s graph counts the MACs of convolutions and Linear layers from the traced shapes;
``torch.utils.flop_counter.FlopCounterMode`` counts the flops of the aten convolution and matrix
products a forward pass dispatches (two per MAC). :func:`count_macs` returns the first after
checking it against the second, so no MAC figure of a benchmark rests on the library alone.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import assl

from ._internals import in_eval, model_call

PRODUCTS = ("convolution", "mm", "addmm", "bmm", "baddbmm")
"""The aten ops whose flops are multiply-accumulates (two flops each)."""


class MACsMismatch(AssertionError):
    """The library's MAC count and torch's flop counter disagree."""


def flop_counter_macs(model: nn.Module, inputs: Any) -> int:
    """MACs of one forward pass of ``model`` on ``inputs``, from torch's flop counter (flops / 2)."""
    with in_eval(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model_call(model, inputs)()
    counts = counter.get_flop_counts().get("Global", {})
    flops = sum(v for op, v in counts.items() if str(op).split(".")[1] in PRODUCTS)
    return int(flops) // 2


def count_macs(model: nn.Module, inputs: Any, *, rtol: float = 1e-9) -> int:
    """MACs of ``model`` on the whole batch of ``inputs`` by ``assl.count`` (per sample, times the
    batch size), checked against torch's flop counter.

    Raises:
        MACsMismatch: The two counts differ by more than ``rtol`` (relative).
    """
    graph = assl.trace(model, inputs)
    ours = graph.count_macs() * graph.samples
    theirs = flop_counter_macs(model, inputs)
    if abs(ours - theirs) > rtol * max(abs(theirs), 1):
        raise MACsMismatch(
            f"{type(model).__name__}: assl counts {ours:,} MACs, torch's flop counter {theirs:,} (flops / 2)"
        )
    return ours
