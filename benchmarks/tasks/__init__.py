"""The tasks the quality benchmarks prune on: a network, its data, its loss and its score.

Every method of :mod:`benchmarks.methods` sees a task only through :class:`Task`, so the SR
benchmarks (LEDSR on photos) and the BatchNorm ones (a ResNet on digits, a U-Net denoiser) run the
same protocol. :data:`TASKS` names each task's module: its command-line flags (``add_flags``), its
presets (``DEFAULTS``, ``QUICK``, ``SMOKE``) and ``build(args)``, which returns the :class:`Task`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch
from torch import nn

from ..training import Batches

TASKS = {"sr": "benchmarks.tasks.sr", "digits": "benchmarks.tasks.digits", "denoise": "benchmarks.tasks.denoise"}


def task_module(name: str) -> ModuleType:
    """The module of task ``name`` (see :data:`TASKS`)."""
    return importlib.import_module(TASKS[name])


@dataclass
class Task:
    """A network and its data, as the methods see them.

    Attributes:
        name: For headers, e.g. ``"BN ResNet on digits"``.
        metric: The key of the main score in :attr:`evaluate`'s result, e.g. ``"psnr"``.
        metric_label: Its name in tables, e.g. ``"PSNR (dB)"``.
        digits: Decimals of the score in tables.
        build: A fresh dense model (seeded by the caller), on the task's device.
        batches: ``seed -> (input, target)`` training batches on the device, forever.
        loss: ``(output, target) -> scalar``.
        evaluate: The model's scores on the held-out data (higher is better), the main one
            included; called in eval mode without gradients.
        example: Real inputs for the Pruner (tracing, liveness, slim()'s check) and Torch-Pruning.
        macs_input: One input for the MACs count; ``macs_factor`` x that count is reported.
        macs_factor: See ``macs_input``.
        macs_unit: The MACs column's header, e.g. ``"MMACs / image"``.
        skip: Layer patterns every method leaves whole (``Pruner(skip=...)``).
        output_layers: The layers that make the model's output (Torch-Pruning must leave them).
        references: Scores of trivial baselines on the same data, e.g. ``{"bicubic": 33.1}``.
        dense_key: What the dense model depends on beyond the protocol's steps and learning rate
            (for the dense-model cache).
        packages: The optional packages the data comes from (their versions go into reports).
    """

    name: str
    metric: str
    metric_label: str
    digits: int
    build: Callable[[], nn.Module]
    batches: Callable[[int], Batches]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Callable[[nn.Module], dict[str, float]]
    example: torch.Tensor
    macs_input: torch.Tensor
    macs_factor: float
    macs_unit: str
    skip: list[str] = field(default_factory=list)
    output_layers: Callable[[nn.Module], list[nn.Module]] = lambda model: []
    references: dict[str, float] = field(default_factory=dict)
    dense_key: str = ""
    packages: tuple[str, ...] = ()

    def score(self, model: nn.Module) -> dict[str, float]:
        """:attr:`evaluate` in eval mode without gradients; the model's mode is restored."""
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                return {k: float(v) for k, v in self.evaluate(model).items()}
        finally:
            model.train(was)
