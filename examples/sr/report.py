"""Outputs of a run: per-image CSV, super-resolved PNGs, the curves and widths plot, the table."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch


def write_csv(path: Path, rows: Sequence[Mapping[str, object]]) -> None:
    """One row per image: name, PSNR, SSIM (and whatever else the rows carry)."""
    if not rows:
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def save_png(path: Path, img: torch.Tensor, rgb_range: float) -> None:
    """Write a (3, H, W) image in [0, rgb_range] as an 8-bit PNG."""
    from PIL import Image

    arr = (img.detach().float().clamp(0, rgb_range) * (255.0 / rgb_range)).round().byte()
    Image.fromarray(arr.permute(1, 2, 0).cpu().numpy()).save(path)


def plot(path: Path, history: Mapping[str, list], widths: Mapping[str, tuple[int, int]]) -> None:
    """Loss and validation PSNR over the steps of every stage, and kept vs original widths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for stage, color in (("dense", "tab:blue"), ("prune", "tab:red"), ("finetune", "tab:green")):
        pts = [(s, v) for st, s, v in history.get("loss", []) if st == stage]
        if pts:
            s, v = zip(*pts)
            k = max(1, len(v) // 50)
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            axes[0].plot(s[k - 1 :], smooth, color=color, label=stage)
        pts = [(s, v) for st, s, v in history.get("psnr", []) if st == stage]
        if pts:
            s, v = zip(*pts)
            axes[1].plot(s, v, "o-", color=color, label=stage)
    axes[0].set(title="training L1 loss", xlabel="step (all stages)", yscale="log")
    axes[1].set(title="validation PSNR (Y, dB)", xlabel="step (all stages)")
    for ax in axes[:2]:
        ax.legend()
    names = list(widths)
    before = [widths[n][0] for n in names]
    after = [widths[n][1] for n in names]
    x = np.arange(len(names))
    axes[2].bar(x, before, color="lightgray", label="dense")
    axes[2].bar(x, after, color="tab:green", label="slimmed")
    axes[2].set_xticks(x, [n.replace("model.", "") for n in names], rotation=90, fontsize=6)
    axes[2].set(title="output channels per conv", ylabel="channels")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column text table."""
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)
