"""Test-wide settings: one CPU thread (the models are tiny; threads only add contention), and a
deterministic timer.

Every latency the library measures goes through ``assl.budgets.timing.interleaved``. On a shared,
loaded machine its wall-clock numbers vary from run to run, and so would every choice made from
them (the widths of a latency budget, the device's width step, whether the check met its target).
In the tests it times the work each call does instead: a fixed cost per torch operation, per
floating-point operation and per element written, counted on a real run of the call. The timer's
own code still runs (warm-up, interleaved rounds, the checks), on a clock that advances by that
cost. A test marked ``real_timer`` measures wall-clock time and asserts only what holds however
loaded the machine is (shapes, signs, that the model is left as it was).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any
from unittest import mock

import numpy as np
import pytest
import torch
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

import assl.budgets.timing as timing

PER_OP, PER_FLOP, PER_ELEMENT = 2e-6, 1e-10, 1e-10
"""Seconds of the deterministic timer: one torch operation, one floating-point operation, one element written."""

_real_interleaved = timing.interleaved


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "real_timer: measure wall-clock time (assert only what holds on a loaded machine)"
    )


class _Work(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operations a call runs and the elements they write."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.elements = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        self.elements += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        return out


def work_seconds(call: Callable[[], Any]) -> float:
    """What the deterministic timer says one run of ``call`` takes."""
    work = _Work()
    with torch.inference_mode(), FlopCounterMode(display=False) as flops, work:
        call()
    return PER_OP * max(1, work.ops) + PER_FLOP * flops.get_total_flops() + PER_ELEMENT * work.elements


class _Clock:
    """A ``time`` module whose ``perf_counter`` advances only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def tick(self, seconds: float) -> Callable[[], None]:
        def run() -> None:
            self.now += seconds

        return run


def deterministic_interleaved(calls: Sequence[Callable[[], Any]], device: torch.device, **kwargs: Any) -> np.ndarray:
    """``timing.interleaved`` on the work each call does instead of the wall clock."""
    timing.timeable(device)  # a device that cannot be timed is refused before anything runs, as for real
    clock = _Clock()
    ticks = [clock.tick(work_seconds(call)) for call in calls]
    with mock.patch.object(timing, "time", clock):
        return _real_interleaved(ticks, device, **kwargs)


@pytest.fixture(autouse=True)
def _deterministic_timer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Put the deterministic timer wherever ``interleaved`` was imported (unless marked ``real_timer``)."""
    use = _real_interleaved if request.node.get_closest_marker("real_timer") else deterministic_interleaved
    for module in list(sys.modules.values()):
        if getattr(module, "__dict__", {}).get("interleaved") in (_real_interleaved, deterministic_interleaved):
            monkeypatch.setattr(module, "interleaved", use)
