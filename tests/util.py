"""Helpers shared by the tests: calling a model on any input structure, random plans."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import assl

ROOT = Path(__file__).resolve().parents[1]


def checkout_env(**extra: str) -> dict[str, str]:
    """The environment for a child Python process that imports this checkout's ``assl``, whatever
    is installed (or being reinstalled) in the environment meanwhile."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, dict):
        return [out[k] for k in sorted(out)]
    if isinstance(out, (tuple, list)):
        return list(out)
    return [out]


def max_rel_err(a: nn.Module, b: nn.Module, inputs: Any) -> float:
    """Largest |a - b| over all outputs, relative to the scale of a's output."""
    with torch.no_grad():
        torch.manual_seed(0)  # dropout in train mode draws the same masks for both
        xs = flat(call(a, inputs))
        torch.manual_seed(0)
        ys = flat(call(b, inputs))
    assert [x.shape for x in xs] == [y.shape for y in ys]
    return max(float((x - y).abs().max() / x.abs().max().clamp_min(1e-12)) for x, y in zip(xs, ys))


def random_plan(graph: assl.Graph, ratio: float | None, seed: int) -> dict[str, list[int]]:
    """Remove ``ratio`` of each group's prunable units at random (None: all but one unit)."""
    rng = np.random.default_rng(seed)
    plan: dict[str, list[int]] = {}
    for g in graph.groups:
        prunable = np.flatnonzero(g.prunable)
        if ratio is None:
            k = min(len(prunable), g.size - 1)
        else:
            k = min(int(np.ceil(ratio * len(prunable))), g.size - 1)
        if k > 0:
            plan[g.name] = sorted(rng.choice(prunable, size=k, replace=False).tolist())
    return plan


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything of a model that an operation must not change: tensors, structure, flags."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "repr": repr(model),
        "training": [m.training for m in model.modules()],
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
    }


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["repr"] == b["repr"]
    assert a["training"] == b["training"]
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k], b["state"][k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert a["grads"].keys() == b["grads"].keys()
    for k, g in a["grads"].items():
        h = b["grads"][k]
        assert (g is None and h is None) or torch.equal(g, h), k


def train_towards(
    teacher: nn.Module, model: nn.Module, pruner: assl.Pruner, opt: torch.optim.Optimizer, start: int, stop: int
) -> None:
    """Steps ``start`` to ``stop`` of an L1 fit of ``model`` to ``teacher`` on 2x3x8x8 inputs seeded by
    the step (a run split anywhere sees the same batches), with the Pruner's alignment term."""
    for i in range(start, stop):
        x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            y = teacher(x)
        loss = (model(x) - y).abs().mean() + pruner.alignment_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()


def roundtrip(obj: Any) -> Any:
    """``obj`` through ``torch.save`` and ``torch.load(weights_only=True)``, as a checkpoint goes."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
