"""ASSL on a BatchNorm U-Net denoiser: the photos embedded in scikit-image, against the baselines.

A small U-Net (double convs of conv -> BN -> ReLU at 12, 24 and 48 channels, max-pool down,
stride-2 ConvTranspose up, or with ``--up bilinear`` bilinear resizing + 1x1 conv, skip
concatenations, a zero-initialized 1x1 output conv, and a global residual: it predicts the
noise) learns to remove Gaussian noise of sigma 25/255 from random 32x32 patches of the six
training photos of ``examples/sr/data.py``, and is scored by PSNR (RGB, [0, 1]) on its two test
photos (``chelsea``, ``coffee``), with the same noise for every method. Then every method prunes
it at each ratio at an equal number of optimizer steps (see ``_bn_bench.py``): ``assl``,
``assl_noalign``, one-shot ``l1`` + fine-tuning, Torch-Pruning's GroupNormPruner (optional),
and the slim architecture trained from scratch. Reports PSNR right after slimming and after
fine-tuning, params, GMACs at 1280x720 and, for ASSL, the liveness of the chosen channels
before slimming (RMS of the chosen over the kept channels where they are read; 0 = silent).

Needs scikit-image and pillow (``pip install -e ".[bench]"``), and torch-pruning for ``tp_groupnorm``.

    python benchmarks/bn_denoiser.py --out runs/bn_denoiser   # 2 ratios x 3 seeds: ~7 min of one CPU thread
    python benchmarks/bn_denoiser.py --quick                   # 1 seed: ~2 min
    python benchmarks/bn_denoiser.py --up bilinear             # the U-Net Torch-Pruning can regularize
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))
import _bn_bench as bench
from data import default_images

SIGMA = 25 / 255
DEFAULTS = {
    "batch_size": 8,
    "patch_size": 32,
    "dense_iters": 600,
    "prune_iters": 200,
    "finetune_iters": 100,
    "eval_every": 50,
}
QUICK = {"dense_iters": 300, "prune_iters": 100, "finetune_iters": 50, "seeds": 1}
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


def double_conv(cin: int, cout: int) -> nn.Sequential:
    """conv3x3 -> BN -> ReLU, twice."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def upsample(cin: int, cout: int, up: str) -> nn.Module:
    """2x up: a stride-2 ConvTranspose (``"transpose"``), or bilinear resizing then a 1x1 conv (``"bilinear"``)."""
    if up == "transpose":
        return nn.ConvTranspose2d(cin, cout, 2, stride=2)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), nn.Conv2d(cin, cout, 1))


class UNet(nn.Module):
    """Two down and two up steps with skip concatenations; the output is the input minus the predicted noise."""

    def __init__(self, width: int = 12, channels: int = 3, up: str = "transpose") -> None:
        super().__init__()
        w = width
        self.enc1, self.enc2, self.mid = double_conv(channels, w), double_conv(w, 2 * w), double_conv(2 * w, 4 * w)
        self.pool = nn.MaxPool2d(2)
        self.up2, self.dec2 = upsample(4 * w, 2 * w, up), double_conv(4 * w, 2 * w)
        self.up1, self.dec1 = upsample(2 * w, w, up), double_conv(2 * w, w)
        self.out = nn.Conv2d(w, channels, 1)
        self.init_weights()

    def init_weights(self) -> None:
        """A zero output conv: the untrained net is the identity, and learns the noise from there."""
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return x - self.out(d1)


def _crop4(img: torch.Tensor) -> torch.Tensor:
    """Crop ``(3, H, W)`` to multiples of 4 (two 2x poolings)."""
    return img[:, : img.shape[1] // 4 * 4, : img.shape[2] // 4 * 4]


def task(a: argparse.Namespace) -> bench.Task:
    """The denoising task of the benchmark."""
    try:
        side = {"max_side": a.max_side} if a.max_side else {}
        train = [img / 255 for img in default_images("train", **side)]
        test = [_crop4(img / 255) for img in default_images("test", **side)]
    except ModuleNotFoundError as e:
        raise SystemExit(f"bn_denoiser.py needs the photos of scikit-image ({e}): pip install -e '.[bench]'") from None
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

    def batches(seed: int) -> bench.Batches:
        g = torch.Generator().manual_seed(seed)
        while True:
            clean = patches(a.batch_size, g)
            yield clean + SIGMA * torch.randn(clean.shape, generator=g), clean

    def psnr(model: nn.Module) -> float:
        values = []
        for clean, noisy in zip(test, noisy_test):
            mse = (model(noisy[None])[0].clamp(0, 1) - clean).pow(2).mean()
            values.append(10 * math.log10(1 / float(mse)))
        return sum(values) / len(values)

    noisy_psnr = sum(10 * math.log10(1 / float((n.clamp(0, 1) - c).pow(2).mean())) for c, n in zip(test, noisy_test))
    example = patches(4, torch.Generator().manual_seed(999))
    example = example + SIGMA * torch.randn(example.shape, generator=torch.Generator().manual_seed(9))
    return bench.Task(
        name=f"BN U-Net denoiser ({a.up} up) on the embedded photos",
        metric="PSNR (dB)",
        digits=2,
        build=lambda: UNet(up=a.up),
        batches=batches,
        loss=nn.functional.mse_loss,
        score=psnr,
        example=example,
        macs_input=torch.zeros(1, 3, 64, 64),
        macs_factor=1280 * 720 / (64 * 64) / 1e9,
        macs_unit="GMACs at 1280x720",
        output_layers=lambda model: [model.out],
        notes=[f"the noisy test photos themselves: {noisy_psnr / len(test):.2f} dB"],
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Parse the flags, run every method for every ratio and seed, write the results."""
    p = bench.build_parser(__doc__, DEFAULTS)
    p.add_argument("--patch_size", type=int, help="side of the square training patches (a multiple of 4)")
    side = "downsize the photos to this longer side (0: the loader's default, 800)"
    p.add_argument("--max_side", type=int, default=0, help=side)
    p.add_argument(
        "--up",
        default="transpose",
        choices=("transpose", "bilinear"),
        help="the 2x upsampling: stride-2 ConvTranspose (the U-Net paper's), or bilinear + 1x1 conv",
    )
    a = bench.parse_args(p, argv, QUICK, SMOKE)
    return bench.main(task, "bn_denoiser" if a.up == "transpose" else f"bn_denoiser-{a.up}", a)


if __name__ == "__main__":
    main()
