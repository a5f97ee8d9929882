"""The benchmarks' one timer: the library's interleaved rounds.

Every benchmark that times something calls :func:`time_calls` or :func:`time_fresh`, which run
``assl``'s own timer (the one its latency budget uses): in each round every candidate runs once,
in a new random order, after a warm-up, with the device synchronized around each sample. The
median over rounds is the figure; a slow moment of a shared machine spreads over all candidates.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._internals import device_of, in_eval, interleaved, model_call

__all__ = ["device_of", "in_eval", "median_ms", "model_call", "time_calls", "time_fresh", "with_autograd"]

WARMUP_CALLS = 2
"""Calls of each candidate before the timed rounds of :func:`interleaved` (the warm-up and the sizing of a sample)."""


def time_calls(
    calls: Sequence[Callable[[], Any]],
    device: torch.device,
    *,
    rounds: int,
    seed: int = 0,
    min_time: float = 2e-3,
) -> np.ndarray:
    """Seconds per call of each of ``calls``: one row per interleaved round, one column per call.

    Each sample repeats its call until it lasts ``min_time`` seconds. The calls run in inference
    mode; wrap a call that trains with :func:`with_autograd`.
    """
    return interleaved(calls, device, rounds=rounds, min_time=min_time, seed=seed)


def time_fresh(
    prepare: Sequence[Callable[[], Callable[[], Any]]],
    device: torch.device,
    *,
    rounds: int,
    seed: int = 0,
) -> np.ndarray:
    """Like :func:`time_calls` for calls that may run only once, such as slimming a model in place.

    ``prepare[i]()`` builds, untimed, a call of candidate ``i`` on its own fresh state (a copy of a
    model, say). Each round builds what it needs and times every candidate once (after the
    timer's warm-up calls, each on a fresh state too), in a new random order.
    """
    samples = []
    for r in range(rounds):
        calls = [_pool(p, WARMUP_CALLS + 1) for p in prepare]
        samples.append(interleaved(calls, device, rounds=1, min_time=0.0, seed=seed + r)[0])
        del calls
        gc.collect()
    return np.stack(samples)


def _pool(prepare: Callable[[], Callable[[], Any]], n: int) -> Callable[[], Any]:
    """A call that runs the next of ``n`` calls built by ``prepare`` (each used once)."""
    ready = [prepare() for _ in range(n)]
    return lambda: ready.pop()()


def with_autograd(call: Callable[[], Any]) -> Callable[[], Any]:
    """``call`` with autograd on, as training and the library's tools run (the timer runs in inference mode)."""

    def run() -> Any:
        with torch.inference_mode(False), torch.enable_grad():
            return call()

    return run


def median_ms(samples: np.ndarray) -> list[float]:
    """The median of each column of :func:`time_calls`' seconds, in milliseconds."""
    return [float(v) * 1e3 for v in np.median(samples, axis=0)]
