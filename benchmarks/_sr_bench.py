"""The training pieces ``quality.py`` and ``alignment_study.py`` share, and their reporting.

Data, the L1 training loop, PSNR/SSIM evaluation, params and MACs, the dense LEDSR of
``examples/sr`` per seed (optionally cached), the seed sweep and the writers of tables and plots.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))
from data import EmbeddedSR, SRFolder, parse_data_range
from ledsr import SRModel
from metrics import psnr, ssim

import assl

Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def batch_stream(data: Dataset, batch: int, device: torch.device, seed: int) -> Batches:
    """(LR, HR) training batches on ``device``, reshuffled each epoch, forever, in an order set by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    while True:
        loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True, generator=g)
        for lr, hr, _ in loader:
            yield lr.to(device), hr.to(device)


def train(
    model: nn.Module,
    stream: Batches,
    steps: int,
    lr: float,
    *,
    pruner: assl.Pruner | None = None,
    param_groups: list | None = None,
    stop: Callable[[], bool] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> int:
    """``steps`` Adam steps of L1 training (plus the alignment term); ``after_step(n)`` after the n-th."""
    opt = torch.optim.Adam(param_groups or model.parameters(), lr=lr)
    if pruner is not None:
        pruner.attach(opt)
    done = 0
    while done < steps and not (stop and stop()):
        x, y = next(stream)
        loss = (model(x) - y).abs().mean() + (pruner.alignment_loss() if pruner is not None else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        if after_step is not None:
            after_step(done)
    return done


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, scale: int, device: torch.device) -> tuple[float, float]:
    """Mean PSNR and SSIM (Y, border = scale) of ``model`` on the images of ``data``."""
    model.eval()
    ps, ss = [], []
    for i in range(len(data)):  # type: ignore[arg-type]
        lr, hr, _ = data[i]
        sr = model(lr[None].to(device))[0].clamp(0, 255).round()
        ps.append(psnr(sr, hr.to(device), scale=scale))
        ss.append(ssim(sr, hr.to(device), scale=scale))
    model.train()
    return sum(ps) / len(ps), sum(ss) / len(ss)


def model_size(model: nn.Module, scale: int, device: torch.device) -> tuple[int, float]:
    """Parameters and GMACs for a 1280x720 output."""
    graph = assl.trace(model, torch.zeros(1, 3, 16, 16, device=device))
    return sum(p.numel() for p in model.parameters()), graph.count_macs() * (1280 / scale) * (720 / scale) / 256 / 1e9


def load_data(args: argparse.Namespace) -> dict:
    """``train`` patches and the ``eval`` images (``--eval_split``: test or validation)."""
    side = {"max_side": 48} if args.smoke else {}
    if args.dir_data:
        tr, te = parse_data_range(args.data_range)
        if args.eval_split == "val":
            if not args.val_range:
                raise SystemExit("--eval_split val with --dir_data needs --val_range, e.g. 781-800 (outside training)")
            te = parse_data_range(f"1-1/{args.val_range}")[1]
            if te[0] <= tr[1] and tr[0] <= te[1]:
                raise SystemExit(f"--val_range {args.val_range} overlaps the training range of --data_range")
        return {
            "train": SRFolder(args.dir_data, tr, args.scale, patch_size=args.patch_size, repeat=20),
            "eval": SRFolder(args.dir_data, te, args.scale, train=False),
        }
    return {
        "train": EmbeddedSR("train", args.scale, patch_size=args.patch_size, repeat=50, **side),
        "eval": EmbeddedSR(args.eval_split, args.scale, train=False, **side),
    }


def _dense_key(args: argparse.Namespace, seed: int) -> str:
    """The ``--dense_cache`` file key: a hash of every setting the dense model depends on."""
    fields = ("blocks", "feats", "scale", "patch_size", "batch_size", "lr", "dense_iters", "dir_data", "data_range")
    text = json.dumps([seed, torch.__version__, args.device, args.smoke, *(getattr(args, f) for f in fields)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_dense(args: argparse.Namespace, seed: int, data: dict, device: torch.device) -> tuple[nn.Module, dict]:
    """The dense LEDSR of ``seed`` (trained, or loaded from ``--dense_cache``) and its table row."""
    torch.manual_seed(seed)
    dense = SRModel(n_resblocks=args.blocks, n_feats=args.feats, scale=args.scale).to(device)
    t0 = time.time()
    cached = Path(args.dense_cache) / f"dense-{_dense_key(args, seed)}.pt" if args.dense_cache else None
    if cached is not None and cached.is_file():
        saved = torch.load(cached, map_location=device, weights_only=True)
        dense.load_state_dict(saved["state"])
        wall = saved["wall_s"]
    else:
        train(dense, batch_stream(data["train"], args.batch_size, device, seed), args.dense_iters, args.lr)
        wall = time.time() - t0
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state": dense.state_dict(), "wall_s": wall}, cached)
    dp, ds = evaluate(dense, data["eval"], args.scale, device)
    bic = []
    for i in range(len(data["eval"])):
        lr_, hr_, _ = data["eval"][i]
        up = nn.functional.interpolate(lr_[None], scale_factor=args.scale, mode="bicubic")[0]
        bic.append(psnr(up[:, : hr_.shape[1], : hr_.shape[2]].clamp(0, 255).round(), hr_, scale=args.scale))
    params, gmacs = model_size(dense, args.scale, device)
    row = {
        "method": "dense",
        "seed": seed,
        "psnr": dp,
        "ssim": ds,
        "params": params,
        "gmacs": gmacs,
        "wall_s": wall,
        "bicubic": sum(bic) / len(bic),
    }
    return dense, row


def sweep(
    args: argparse.Namespace, data: dict, device: torch.device, runs: Callable[[nn.Module, int], Iterator[dict]]
) -> tuple[list[dict], list[dict]]:
    """For each seed, the dense model and then the rows ``runs(dense, seed)`` yields, each printed as
    JSON as it comes (a cut-short run keeps what it printed). Returns (rows, dense rows)."""
    rows, dense_rows = [], []
    for seed in range(args.seeds):
        dense, row = train_dense(args, seed, data, device)
        dense_rows.append(row)
        for r in runs(dense, seed):
            rows.append(r)
            print(json.dumps(r), flush=True)
    return rows, dense_rows


def spread(values: list[float]) -> float:
    """The sample standard deviation, 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_sd(values: list[float], digits: int) -> str:
    """``mean ± sd`` at ``digits`` decimals, ``-`` when there is nothing."""
    if not values:
        return "-"
    return f"{statistics.mean(values):.{digits}f} ± {spread(values):.{digits}f}"


def save(out: Path, stem: str, table: str, args: argparse.Namespace, rows: list[dict], dense_rows: list[dict]) -> None:
    """Print ``table`` and write it and the raw rows as ``out/stem.md`` and ``out/stem.json``."""
    print(table)
    (out / f"{stem}.md").write_text(table + "\n")
    (out / f"{stem}.json").write_text(json.dumps({"args": vars(args), "dense": dense_rows, "rows": rows}, indent=1))


@contextlib.contextmanager
def figure(path: Path) -> Iterator[Any]:
    """Axes of a 7x4 in matplotlib figure (no display needed), saved to ``path`` at the end of the block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    yield ax
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
