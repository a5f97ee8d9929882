"""The library's one timer: interleaved, repeated calls on the user's device, and stand-alone layers.

Latency tables, the latency budget's timed check and the project's benchmarks all time through
:func:`interleaved`.

Every measurement here is the median over ``rounds`` rounds; in each round every candidate runs
once, in a new random order, so a slow moment of a shared machine spreads over all candidates
instead of biasing one. Each timed sample repeats its call until it lasts ``min_time`` seconds.
On a GPU the device is synchronized before and after each sample.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._inputs import call_args, tensors
from ..errors import ArgumentError, ArgumentTypeError
from ..layers import CONV, DECONV

__all__ = ["device_of", "in_eval", "interleaved", "model_call", "replica", "timeable"]

TIMEABLE = ("cpu", "cuda", "mps")


def device_of(model: nn.Module, example_inputs: Any) -> torch.device:
    """The device the model runs on: that of the example inputs, else of its first parameter."""
    for t in tensors(example_inputs):
        return t.device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def timeable(device: torch.device) -> None:
    """Raise unless ``device`` can be timed here.

    Raises:
        ValueError: A meta tensor, a device type other than cpu/cuda/mps, or a GPU that is not
            available in this process.
    """
    if device.type not in TIMEABLE:
        raise ArgumentError(
            f"latency cannot be measured on device {str(device)!r}: only cpu, cuda and mps can be timed. Measure "
            f"the table where the model will run (assl.LatencyTable.measure) and pass it as Budget(table=...)"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError(f"latency cannot be measured on {device}: CUDA is not available in this process")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def interleaved(
    calls: Sequence[Callable[[], Any]],
    device: torch.device,
    *,
    rounds: int = 5,
    min_time: float = 2e-3,
    seed: int = 0,
) -> np.ndarray:
    """Seconds per call of each of ``calls``, one row per interleaved round (take the median).

    Each call runs twice first (warm-up, and to size a sample to ``min_time``); then, in each of
    ``rounds`` rounds, every call runs one sample in a new random order, the device synchronized
    around it. Runs under ``torch.inference_mode()``.

    Args:
        calls: What to time, each a function of no arguments.
        device: Where they run (synchronized on CUDA and MPS).
        rounds: Interleaved rounds: rows of the result.
        min_time: Seconds a sample lasts at least (a sample repeats its call as often as needed).
        seed: Seed of the random orders.

    Returns:
        Seconds per call, shape ``(rounds, len(calls))``.

    Raises:
        ArgumentError: The device cannot be timed, ``rounds < 1``, or a measurement is not a
            positive finite number.

    Example:
        >>> seconds = interleaved([lambda: dense(x), lambda: small(x)], x.device, rounds=11)
        >>> speedup = np.median(seconds[:, 0] / seconds[:, 1])
    """
    timeable(device)
    if rounds < 1:
        raise ArgumentError(f"rounds must be >= 1, got {rounds!r}")
    rng = np.random.default_rng(seed)
    numbers = []
    with torch.inference_mode():
        for call in calls:  # warm up (kernel choice, allocator) and size each sample
            call()
            _sync(device)
            t0 = time.perf_counter()
            call()
            _sync(device)
            once = time.perf_counter() - t0
            numbers.append(max(1, math.ceil(min_time / max(once, 1e-7))))
        samples = np.zeros((rounds, len(calls)))
        for r in range(rounds):
            for i in rng.permutation(len(calls)):
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(numbers[i]):
                    calls[i]()
                _sync(device)
                samples[r, i] = (time.perf_counter() - t0) / numbers[i]
    if not np.isfinite(samples).all() or (samples <= 0).any():
        raise ArgumentError(f"the device {device} could not be timed: measured {samples.min()} seconds per call")
    return samples


@contextlib.contextmanager
def in_eval(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode (no BatchNorm statistics updated) and restore every flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def model_call(model: nn.Module, example_inputs: Any) -> Callable[[], Any]:
    """A call of ``model`` on ``example_inputs`` (a tensor, a tuple of arguments or a dict)."""
    args, kwargs = call_args(example_inputs)
    return lambda: model(*args, **kwargs)


def replica(module: nn.Module, w_in: int, w_out: int, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A fresh layer like ``module`` with ``w_in``/``w_out`` weight rows, and an input for it.

    ``w_in`` and ``w_out`` are the sizes of the weight's input and output dimensions (for a
    depthwise conv the output size sets its groups). ``x`` is an input ``module`` was called with.
    """
    w = module.weight
    assert isinstance(w, torch.Tensor)
    kw = {"device": x.device, "dtype": w.dtype}
    bias = getattr(module, "bias", None) is not None
    if isinstance(module, nn.Linear):
        layer: nn.Module = nn.Linear(w_in, w_out, bias=bias, **kw)
        shape = (*x.shape[:-1], w_in)
    elif isinstance(module, (*CONV, *DECONV)):
        m = module
        depthwise = m.groups > 1 and m.in_channels == m.groups
        if depthwise:
            mult = m.out_channels // m.in_channels
            groups = max(1, w_out // mult) if isinstance(m, CONV) else w_in
            cin = groups
            cout = groups * mult if isinstance(m, CONV) else w_out * groups
        elif isinstance(m, DECONV):  # weight (in, out / groups, ...)
            groups, cin, cout = m.groups, w_in, w_out * m.groups
        else:  # weight (out, in / groups, ...)
            groups, cin, cout = m.groups, w_in * m.groups, w_out
        args = dict(stride=m.stride, padding=m.padding, dilation=m.dilation, groups=groups, bias=bias)
        if isinstance(m, DECONV):
            args["output_padding"] = m.output_padding
        else:
            args["padding_mode"] = m.padding_mode
        base = next(c for c in type(m).__mro__ if c in (*CONV, *DECONV))  # a subclass may take other arguments
        layer = base(cin, cout, m.kernel_size, **args, **kw)  # type: ignore[arg-type]
        cdim = x.ndim - len(m.kernel_size) - 1
        shape = (*x.shape[:cdim], cin, *x.shape[cdim + 1 :])
    else:
        raise ArgumentTypeError(f"cannot time a {type(module).__name__} on its own")
    return layer.eval(), torch.randn(shape, device=x.device, dtype=x.dtype)
