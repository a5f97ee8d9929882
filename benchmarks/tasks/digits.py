"""Classification: a small BatchNorm ResNet (or, with ``--net mobilenet``, a MobileNetV2-shaped net) on
scikit-learn's 8x8 handwritten digits, scored by accuracy.

A fixed, stratified split of 1257 training and 540 test images (one test image is 0.0019 of
accuracy), standardized on the training set, batches of 64. Needs scikit-learn.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from .. import networks
from ..training import Batches
from . import Task

METHODS = ["assl", "assl_noalign", "l1", "tp_groupnorm", "scratch"]
DEFAULTS = {
    "lr": 1e-3,
    "lr_schedule": "finetune",
    "batch_size": 64,
    "dense_iters": 600,
    "prune_iters": 300,
    "finetune_iters": 100,
    "eval_every": 50,
    "ratios": [0.5, 0.75],
    "methods": METHODS,
    "threads": 1,
}
QUICK = {"dense_iters": 400, "prune_iters": 200, "finetune_iters": 60, "seeds": 1}
"""About two minutes."""
SMOKE = {
    "dense_iters": 4,
    "prune_iters": 10,
    "finetune_iters": 2,
    "eval_every": 0,
    "seeds": 1,
    "ratios": [0.5],
    "batch_size": 16,
}
"""Seconds: what the test suite runs."""
NETS = {
    "resnet": ("digits_resnet", "BN ResNet", "fc"),
    "mobilenet": ("digits_mobilenet", "BN MobileNetV2", "classifier"),
}
"""``--net``: the network's name in :data:`benchmarks.networks.NETWORKS`, its name in headers, its output layer."""


def add_flags(p: argparse.ArgumentParser) -> None:
    """The task's flags."""
    p.add_argument("--batch_size", type=int)
    p.add_argument(
        "--net",
        default="resnet",
        choices=tuple(NETS),
        help="the classifier: a small ResNet of basic blocks, or MobileNetV2's inverted residuals "
        "(depthwise convolutions, linear bottlenecks)",
    )


def load(test_size: float = 0.3) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: digits as ``(n, 1, 8, 8)`` floats standardized on the training set."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise SystemExit(
            f"the digits task needs scikit-learn for its data ({e}): "
            "pip install scikit-learn, or pip install -e '.[bench]'"
        ) from None
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.images, d.target, test_size=test_size, random_state=0, stratify=d.target)
    xtr, xte = (torch.as_tensor(v, dtype=torch.float32)[:, None] for v in (xtr, xte))
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, torch.as_tensor(ytr), (xte - mean) / std, torch.as_tensor(yte)


def build(a: argparse.Namespace) -> Task:
    """The digits classification task of the flags ``a``."""
    xtr, ytr, xte, yte = load()

    def batches(seed: int) -> Batches:
        g = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(order) - a.batch_size + 1, a.batch_size):
                idx = order[i : i + a.batch_size]
                yield xtr[idx], ytr[idx]

    def accuracy(model: nn.Module) -> dict[str, float]:
        return {"accuracy": float((model(xte).argmax(1) == yte).float().mean())}

    network, title, output = NETS[a.net]
    return Task(
        name=f"{title} on digits",
        metric="accuracy",
        metric_label="accuracy",
        digits=3,
        build=lambda: networks.build(network),
        batches=batches,
        loss=nn.functional.cross_entropy,
        evaluate=accuracy,
        example=xtr[:64],
        macs_input=xtr[:1],
        macs_factor=1e-6,
        macs_unit="MMACs / image",
        output_layers=lambda model: [model.get_submodule(output)],
        # the ResNet's key predates --net: it stays as it was, so cached dense models stay valid
        dense_key=f'["digits", {a.batch_size}]' if a.net == "resnet" else f'["digits", "{a.net}", {a.batch_size}]',
        packages=("scikit-learn",),
    )
