"""ASSL on a BatchNorm ResNet classifier: scikit-learn's handwritten digits, against the baselines.

A small ResNet (stem conv + BN, two basic blocks of conv -> BN -> ReLU at 16 channels, a stride-2
stage of 32 channels whose first block has a 1x1 conv + BN downsample, global average pooling,
Linear) is trained on the 8x8 digit scans of ``sklearn.datasets.load_digits`` (a fixed,
stratified split: 1257 training and 540 test images), then pruned at each ratio by every method
at an equal number of optimizer steps (see ``_bn_bench.py``): ``assl``, ``assl_noalign``,
one-shot ``l1`` + fine-tuning, Torch-Pruning's GroupNormPruner (optional), and the slim
architecture trained from scratch. Reports test accuracy right after slimming and after
fine-tuning, params, MACs per image and, for ASSL, the liveness of the chosen channels before
slimming (RMS of the chosen over the kept channels where they are read; 0 = silent).

Needs scikit-learn (``pip install -e ".[bench]"``), and torch-pruning for ``tp_groupnorm``.

    python benchmarks/bn_classifier.py --out runs/bn_classifier   # 2 ratios x 3 seeds: ~6 min of one CPU thread
    python benchmarks/bn_classifier.py --quick                     # 1 seed: ~2 min
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bn_bench as bench

DEFAULTS = {"batch_size": 64, "dense_iters": 600, "prune_iters": 300, "finetune_iters": 100, "eval_every": 50}
QUICK = {"dense_iters": 400, "prune_iters": 200, "finetune_iters": 60, "seeds": 1}
SMOKE = {
    "dense_iters": 4,
    "prune_iters": 10,
    "finetune_iters": 2,
    "eval_every": 0,
    "seeds": 1,
    "ratios": [0.5],
    "batch_size": 16,
}


class BasicBlock(nn.Module):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the input (through a 1x1 conv + BN when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class DigitsResNet(nn.Module):
    """Stem, two blocks at ``width``, a stride-2 stage of two blocks at ``2 * width``, pool, Linear."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        stem = nn.Conv2d(1, width, 3, 1, 1, bias=False)
        self.stem = nn.Sequential(stem, nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(BasicBlock(width, width), BasicBlock(width, width))
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def load(test_size: float = 0.3) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: digits as ``(n, 1, 8, 8)`` floats standardized on the training set."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:
        raise SystemExit(
            f"bn_classifier.py needs scikit-learn for its data ({e}): "
            "pip install scikit-learn, or pip install -e '.[bench]'"
        ) from None
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(d.images, d.target, test_size=test_size, random_state=0, stratify=d.target)
    xtr, xte = (torch.as_tensor(v, dtype=torch.float32)[:, None] for v in (xtr, xte))
    mean, std = xtr.mean(), xtr.std()
    return (xtr - mean) / std, torch.as_tensor(ytr), (xte - mean) / std, torch.as_tensor(yte)


def task(a: argparse.Namespace) -> bench.Task:
    """The digits classification task of the benchmark."""
    xtr, ytr, xte, yte = load()

    def batches(seed: int) -> bench.Batches:
        g = torch.Generator().manual_seed(seed)
        while True:
            order = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(order) - a.batch_size + 1, a.batch_size):
                idx = order[i : i + a.batch_size]
                yield xtr[idx], ytr[idx]

    def accuracy(model: nn.Module) -> float:
        return float((model(xte).argmax(1) == yte).float().mean())

    return bench.Task(
        name="BN ResNet on digits",
        metric="accuracy",
        digits=3,
        build=DigitsResNet,
        batches=batches,
        loss=nn.functional.cross_entropy,
        score=accuracy,
        example=xtr[:64],
        macs_input=xtr[:1],
        macs_factor=1e-6,
        macs_unit="MMACs / image",
        output_layers=lambda model: [model.fc],
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse the flags, run every method for every ratio and seed, write the results."""
    p = bench.build_parser(__doc__, DEFAULTS)
    a = bench.parse_args(p, argv, QUICK, SMOKE)
    return bench.main(task, "bn_classifier", a)


if __name__ == "__main__":
    main()
