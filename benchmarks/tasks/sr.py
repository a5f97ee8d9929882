"""Super-resolution: the SR example's LEDSR on the photos embedded in scikit-image (or DIV2K), scored by PSNR/SSIM.

Data, model and metrics are the SR example's (``examples/sr``): six training photos, one
validation photo (``rocket``) that settings are chosen on, two test photos (``chelsea``,
``coffee``) that only chosen settings are scored on; with ``--dir_data`` a DIV2K-style folder.
PSNR and SSIM on the Y channel with a border of ``scale`` pixels; the L1 loss on 0-255 pixels.
"""

from __future__ import annotations

import argparse
import json

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from examples.sr.data import EmbeddedSR, SRFolder, parse_data_range
from examples.sr.metrics import psnr, ssim

from .. import networks
from ..training import Batches, l1_loss
from . import Task

METHODS = ["assl", "assl_noalign", "l1", "l1_authors", "random", "scratch"]
"""The methods run by default (Torch-Pruning's only when asked for: an optional install)."""
DEFAULTS = {
    "lr": 2e-4,
    "lr_schedule": "constant",
    "dense_iters": 10000,
    "prune_iters": 3000,
    "finetune_iters": 5000,
    "ratios": [0.5],
    "methods": METHODS,
    "threads": 0,
}
QUICK = {
    "blocks": 4,
    "feats": 32,
    "patch_size": 48,
    "batch_size": 8,
    "lr": 5e-4,
    "dense_iters": 2000,
    "prune_iters": 400,
    "finetune_iters": 600,
    "align_iters": 100,
    "reg_interval": 4,
    "reg_step": 0.02,
    "stabilize_iters": 168,
}
"""CPU-sized: tens of minutes for the default methods and 3 seeds."""
SMOKE = {
    "blocks": 1,
    "feats": 4,
    "patch_size": 16,
    "batch_size": 2,
    "dense_iters": 3,
    "prune_iters": 10,
    "finetune_iters": 2,
    "align_iters": 2,
    "reg_interval": 1,
    "reg_step": 0.25,
    "stabilize_iters": 1,
    "seeds": 1,
    "methods": ["assl", "l1", "scratch"],
}
"""Seconds: what the test suite runs."""


def add_flags(p: argparse.ArgumentParser) -> None:
    """The task's flags: data, split, device and the LEDSR's size."""
    p.add_argument("--dir_data", default=None, help="a DIV2K-style folder instead of the embedded photos")
    p.add_argument("--data_range", default="1-800/801-810")
    p.add_argument(
        "--val_range", default=None, help="DIV2K indices for --eval_split val (must not overlap the training range)"
    )
    p.add_argument(
        "--eval_split",
        default="test",
        choices=("test", "val"),
        help="report on the held-out test images, or on the validation split used to choose settings",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--feats", type=int, default=64)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--patch_size", type=int, default=96)
    p.add_argument("--batch_size", type=int, default=16)


def load_data(a: argparse.Namespace) -> dict[str, Dataset]:
    """``train`` patches and the ``eval`` images (``--eval_split``: test or validation)."""
    side = 48 if a.smoke else None  # the smoke run's photos are small
    if a.dir_data:
        tr, te = parse_data_range(a.data_range)
        if a.eval_split == "val":
            if not a.val_range:
                raise SystemExit("--eval_split val with --dir_data needs --val_range, e.g. 781-800 (outside training)")
            te = parse_data_range(f"1-1/{a.val_range}")[1]
            if te[0] <= tr[1] and tr[0] <= te[1]:
                raise SystemExit(f"--val_range {a.val_range} overlaps the training range of --data_range")
        return {
            "train": SRFolder(a.dir_data, tr, a.scale, patch_size=a.patch_size, repeat=20),
            "eval": SRFolder(a.dir_data, te, a.scale, train=False),
        }
    return {
        "train": EmbeddedSR("train", a.scale, patch_size=a.patch_size, repeat=50, max_side=side),
        "eval": EmbeddedSR(a.eval_split, a.scale, train=False, max_side=side),
    }


def batch_stream(data: Dataset, batch: int, device: torch.device, seed: int) -> Batches:
    """(LR, HR) training batches on ``device``, reshuffled each epoch, forever, in an order set by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    while True:
        loader = DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=g)
        for lr, hr, _ in loader:
            yield lr.to(device), hr.to(device)


def scores(model: nn.Module, data: Dataset, scale: int, device: torch.device) -> dict[str, float]:
    """Mean PSNR and SSIM (Y, border = scale) of ``model`` on the images of ``data``."""
    ps, ss = [], []
    for i in range(len(data)):  # type: ignore[arg-type]
        lr, hr, _ = data[i]
        sr = model(lr[None].to(device))[0].clamp(0, 255).round()
        ps.append(psnr(sr, hr.to(device), scale=scale))
        ss.append(ssim(sr, hr.to(device), scale=scale))
    return {"psnr": sum(ps) / len(ps), "ssim": sum(ss) / len(ss)}


def bicubic(data: Dataset, scale: int) -> float:
    """Mean PSNR of bicubic upsampling on the images of ``data``."""
    values = []
    for i in range(len(data)):  # type: ignore[arg-type]
        lr, hr, _ = data[i]
        up = nn.functional.interpolate(lr[None], scale_factor=scale, mode="bicubic")[0]
        values.append(psnr(up[:, : hr.shape[1], : hr.shape[2]].clamp(0, 255).round(), hr, scale=scale))
    return sum(values) / len(values)


def build(a: argparse.Namespace) -> Task:
    """The SR task of the flags ``a``."""
    device = torch.device(a.device)
    data = load_data(a)
    tail = ("mean", "tail")
    dense_key = [a.blocks, a.feats, a.scale, a.patch_size, a.batch_size, a.dir_data, a.data_range, a.smoke]
    return Task(
        name=f"LEDSR {a.blocks}x{a.feats} x{a.scale} on the {a.eval_split} images",
        metric="psnr",
        metric_label="PSNR (dB)",
        digits=3,
        build=lambda: networks.ledsr(a.blocks, a.feats, a.scale).to(device),
        batches=lambda seed: batch_stream(data["train"], a.batch_size, device, seed),
        loss=l1_loss,
        evaluate=lambda model: scores(model, data["eval"], a.scale, device),
        # pixel-like values: slim() reports the output change on these (an all-black image gives ~0 out)
        example=torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).to(device) * 255,
        macs_input=torch.zeros(1, 3, 16, 16, device=device),
        macs_factor=(1280 / a.scale) * (720 / a.scale) / 256 / 1e9,
        macs_unit="GMACs (1280x720 out)",
        skip=networks.LEDSR_SKIP,
        output_layers=lambda model: [
            m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and any(t in n for t in tail)
        ],
        references={"bicubic": bicubic(data["eval"], a.scale)},
        dense_key=json.dumps(["sr", *dense_key, str(device)]),
        packages=("scikit-image",) if not a.dir_data else (),
    )
