"""Denoising: a small BatchNorm U-Net on the embedded photos, scored by PSNR (RGB, [0, 1]).

The U-Net learns to remove Gaussian noise of sigma 25/255 from random 32x32 patches (flips and
rotations) of the six training photos of ``examples/sr/data.py``, and is scored on its two test
photos (``chelsea``, ``coffee``), with the same noise for every method and seed. Needs
scikit-image and pillow.
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from examples.sr.data import default_images

from .. import networks
from ..training import Batches
from . import Task

SIGMA = 25 / 255
METHODS = ["assl", "assl_noalign", "l1", "tp_groupnorm", "scratch"]
DEFAULTS = {
    "lr": 1e-3,
    "lr_schedule": "finetune",
    "batch_size": 8,
    "patch_size": 32,
    "dense_iters": 600,
    "prune_iters": 200,
    "finetune_iters": 100,
    "eval_every": 50,
    "ratios": [0.5, 0.75],
    "methods": METHODS,
    "threads": 1,
}
QUICK = {"dense_iters": 300, "prune_iters": 100, "finetune_iters": 50, "seeds": 1}
"""About two minutes."""
SMOKE = {
    "dense_iters": 3,
    "prune_iters": 12,
    "finetune_iters": 2,
    "eval_every": 0,
    "seeds": 1,
    "ratios": [0.5],
    "patch_size": 16,
    "batch_size": 2,
    "max_side": 48,
}
"""Seconds: what the test suite runs."""


def add_flags(p: argparse.ArgumentParser) -> None:
    """The task's flags: patches, photo size, the U-Net's upsampling."""
    p.add_argument("--batch_size", type=int)
    p.add_argument("--patch_size", type=int, help="side of the square training patches (a multiple of 4)")
    p.add_argument("--max_side", type=int, default=0, help="downsize the photos to this longer side (0: 800)")
    p.add_argument(
        "--up",
        default="transpose",
        choices=("transpose", "bilinear"),
        help="the 2x upsampling: stride-2 ConvTranspose (the U-Net paper's), or bilinear + 1x1 conv",
    )


def _crop4(img: torch.Tensor) -> torch.Tensor:
    """Crop ``(3, H, W)`` to multiples of 4 (two 2x poolings)."""
    return img[:, : img.shape[1] // 4 * 4, : img.shape[2] // 4 * 4]


def _psnr(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    return 10 * math.log10(1 / float((noisy.clamp(0, 1) - clean).pow(2).mean()))


def build(a: argparse.Namespace) -> Task:
    """The denoising task of the flags ``a``."""
    try:
        side = {"max_side": a.max_side} if a.max_side else {}
        train = [img / 255 for img in default_images("train", **side)]
        test = [_crop4(img / 255) for img in default_images("test", **side)]
    except ModuleNotFoundError as e:
        raise SystemExit(
            f"the denoising task needs the photos of scikit-image ({e}): pip install -e '.[bench]'"
        ) from None
    g = torch.Generator().manual_seed(12345)  # one noise for every method and seed
    noisy_test = [img + SIGMA * torch.randn(img.shape, generator=g) for img in test]
    p = a.patch_size

    def patches(n: int, g: torch.Generator) -> torch.Tensor:
        out = []
        for _ in range(n):
            img = train[int(torch.randint(len(train), (1,), generator=g))]
            y = int(torch.randint(img.shape[1] - p + 1, (1,), generator=g))
            x = int(torch.randint(img.shape[2] - p + 1, (1,), generator=g))
            patch = img[:, y : y + p, x : x + p]
            flip, rot = (int(v) for v in torch.randint(2, (2,), generator=g))
            out.append(patch.flip(-1).rot90(rot, (-2, -1)) if flip else patch.rot90(rot, (-2, -1)))
        return torch.stack(out)

    def batches(seed: int) -> Batches:
        g = torch.Generator().manual_seed(seed)
        while True:
            clean = patches(a.batch_size, g)
            yield clean + SIGMA * torch.randn(clean.shape, generator=g), clean

    def psnr(model: nn.Module) -> dict[str, float]:
        values = [_psnr(clean, model(noisy[None])[0]) for clean, noisy in zip(test, noisy_test)]
        return {"psnr": sum(values) / len(values)}

    example = patches(4, torch.Generator().manual_seed(999))
    example = example + SIGMA * torch.randn(example.shape, generator=torch.Generator().manual_seed(9))
    return Task(
        name=f"BN U-Net denoiser ({a.up} up) on the embedded photos",
        metric="psnr",
        metric_label="PSNR (dB)",
        digits=2,
        build=lambda: networks.build("unet", up=a.up),
        batches=batches,
        loss=nn.functional.mse_loss,
        evaluate=psnr,
        example=example,
        macs_input=torch.zeros(1, 3, 64, 64),
        macs_factor=1280 * 720 / (64 * 64) / 1e9,
        macs_unit="GMACs at 1280x720",
        output_layers=lambda model: [model.get_submodule("out")],
        references={"noisy input": sum(_psnr(c, n) for c, n in zip(test, noisy_test)) / len(test)},
        dense_key=f'["denoise", "{a.up}", {a.batch_size}, {a.patch_size}, {a.max_side}]',
        packages=("scikit-image",),
    )
