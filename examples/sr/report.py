"""Outputs of a run: per-image CSV, super-resolved PNGs, the curves and widths plot, the table."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
    """Loss and validation PSNR over every stage with the stage and phase boundaries, the pruning
    schedule (penalty, and the chosen units' scales against the kept ones), and kept widths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 9))
    (loss_ax, psnr_ax), (sched_ax, width_ax) = axes
    for stage, color in (("dense", "tab:blue"), ("prune", "tab:red"), ("finetune", "tab:green")):
        pts = [(s, v) for st, s, v in history.get("loss", []) if st == stage]
        if pts:
            s, v = zip(*pts)
            k = max(1, len(v) // 50)
            smooth = np.convolve(v, np.ones(k) / k, mode="valid")
            loss_ax.plot(s[k - 1 :], smooth, color=color, label=stage)
        pts = [(s, v) for st, s, v in history.get("psnr", []) if st == stage]
        if pts:
            s, v = zip(*pts)
            psnr_ax.plot(s, v, "o-", color=color, label=stage)
    stages, phases = _boundaries(history)
    for ax in (loss_ax, psnr_ax):
        _mark(ax, stages, labels=True, ls="--")
        _mark(ax, phases, labels=False, ls=":")
    loss_ax.set(title="training L1 loss", xlabel="step (all stages)", yscale="log")
    psnr_ax.set(
        title="validation PSNR (Y, dB): one validation photo, not the test photos of the table",
        xlabel="step (all stages)",
    )
    sched = history.get("schedule", [])
    if sched:
        steps, _, penalty, ratio = zip(*sched)
        (pen,) = sched_ax.plot(steps, penalty, color="tab:purple", label="penalty (left axis)")
        sched_ax.set_ylabel("penalty", color="tab:purple")
        twin = sched_ax.twinx()
        (rat,) = twin.plot(steps, ratio, color="tab:orange", label="chosen / kept |scale| (right axis, log)")
        twin.set(yscale="log", ylabel="mean |scale| of chosen units / kept (worst group)")
        # one legend for both curves, under the axes where it covers neither
        sched_ax.legend(
            [pen, rat], [pen.get_label(), rat.get_label()], loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2
        )
        left = min([steps[0], *(s for s, _ in phases)])
        right = max([steps[-1], *(s for s, _ in phases)])
        if right > left:
            sched_ax.set_xlim(left, right)
    _mark(sched_ax, phases, labels=True, ls=":")  # after the limits: a label at the right edge goes inside
    sched_ax.set(title="pruning schedule (prune stage)", xlabel="step (all stages)")
    names = list(widths)
    x = np.arange(len(names))
    width_ax.bar(x, [widths[n][0] for n in names], color="lightgray", label="dense")
    width_ax.bar(x, [widths[n][1] for n in names], color="tab:green", label="slimmed")
    width_ax.set_xticks(x, [n.replace("model.", "") for n in names], rotation=90, fontsize=8)
    width_ax.set(title="output channels per conv", ylabel="channels")
    for ax in (loss_ax, psnr_ax, width_ax):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _boundaries(history: Mapping[str, list]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(step, name) where each stage begins, and where each pruning phase begins: the schedule's
    own boundaries when the run recorded them (``history["phases"]``), else the first sampled
    step of each phase."""
    stages: list[tuple[int, str]] = []
    for stage, step, _ in history.get("loss", []):
        if not stages or stages[-1][1] != stage:
            stages.append((step, stage))
    phases: list[tuple[int, str]] = [(int(s), str(n)) for s, n in history.get("phases", [])]
    if not phases:
        for step, phase, _, _ in history.get("schedule", []):
            if not phases or phases[-1][1] != phase:
                phases.append((step, phase))
    return stages, phases


def _mark(ax: Any, bounds: list[tuple[int, str]], *, labels: bool, ls: str) -> None:
    lo, hi = ax.get_xlim()
    for i, (step, name) in enumerate(bounds):
        ax.axvline(step, color="gray", lw=0.8, ls=ls)
        if labels:
            y = 0.98 - 0.06 * (i % 2)  # alternate heights so that close labels do not overlap
            right = hi > lo and (step - lo) / (hi - lo) > 0.9  # near the right edge: the label goes left of the line
            text = f"{name} " if right else f" {name}"
            ax.text(step, y, text, transform=ax.get_xaxis_transform(), fontsize=9, va="top", color="dimgray",
                    ha="right" if right else "left")  # fmt: skip


def table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column text table."""
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(w)}  {v}" for k, v in rows)
