"""The stages of a run: dense -> ASSL pruning -> slim -> fine-tune -> evaluate, resumable.

A checkpoint (``checkpoint.pt``, loadable with ``weights_only=True``) is written every
``--checkpoint_every`` steps, at every stage boundary, and on Ctrl-C; ``--resume`` continues
from it, Pruner state included.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from data import EmbeddedSR, HRFolder, SRFolder, parse_data_range
from ledsr import SRModel
from metrics import psnr, ssim
from options import schedule
from report import save_png
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

import assl

log = logging.getLogger("sr")


@dataclass
class Context:
    args: argparse.Namespace
    out: Path
    device: torch.device
    rank: int = 0
    world: int = 1
    history: dict[str, list] = field(default_factory=lambda: {"loss": [], "psnr": [], "schedule": []})
    state: dict[str, Any] = field(default_factory=dict)  # stage, iteration, metrics so far
    global_step: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


# --- setup -----------------------------------------------------------------------------------


def setup(args: argparse.Namespace) -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available() and not args.cpu
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    out = Path(args.save)
    if not out.is_absolute():
        out = Path(args.save_root) / out
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        handler = logging.FileHandler(out / "log.txt")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        console = _BarSafeHandler(logging.WARNING)  # the library's warnings reach the console too
        console.setFormatter(logging.Formatter("%(name)s %(levelname)s: %(message)s"))
        warnings.showwarning = _log_warning  # assl.ASSLWarning and the like: into the log, above the bar
        for name in ("sr", "assl", "py.warnings"):
            logging.getLogger(name).addHandler(handler)
            if not any(isinstance(h, _BarSafeHandler) for h in logging.getLogger(name).handlers):
                logging.getLogger(name).addHandler(console)
            logging.getLogger(name).setLevel(logging.INFO)
        with (out / "config.json").open("w") as f:
            json.dump({k: v for k, v in vars(args).items() if k != "stage_ranges"}, f, indent=1)
    if args.threads:
        torch.set_num_threads(args.threads)
    log.info("torch uses %d CPU threads (--threads to change)", torch.get_num_threads())
    torch.manual_seed(args.seed + rank)
    return Context(args, out, device, rank, world)


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *_: object) -> None:
    """Show a Python warning as a log record (``warnings.showwarning``), so it reaches log.txt and the console."""
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)


class _BarSafeHandler(logging.Handler):
    """Writes records to the console above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def datasets(ctx: Context) -> tuple[Dataset, dict[str, Dataset]]:
    """The training set and the named evaluation sets (``val`` for curves, ``test`` held out)."""
    a = ctx.args
    common = {"scale": a.scale, "rgb_range": a.rgb_range}
    if a.dir_data:
        train_range, test_range = parse_data_range(a.data_range)
        train = SRFolder(a.dir_data, train_range, patch_size=a.patch_size, train=True, repeat=20, **common)
        test = SRFolder(a.dir_data, test_range, patch_size=a.patch_size, train=False, repeat=1, **common)
        evals: dict[str, Dataset] = {"val": test, "test": test}
    else:
        extra = {"max_side": a.max_side} if a.max_side else {}
        train = EmbeddedSR("train", patch_size=a.patch_size, train=True, repeat=50, **common, **extra)
        evals = {
            "val": EmbeddedSR("val", patch_size=a.patch_size, train=False, repeat=1, **common, **extra),
            "test": EmbeddedSR("test", patch_size=a.patch_size, train=False, repeat=1, **common, **extra),
        }
    if a.test_dir:
        evals[Path(a.test_dir).name] = HRFolder(a.test_dir, **common)
    return train, evals


class BatchOrder(Sampler[list[tuple[int, int]]]):
    """The training batches from the run's batch ``start`` on, each a function of the seed and its number alone.

    Pass ``e`` over the ``n`` items is a permutation drawn with a generator seeded from ``seed`` and
    ``e``, which also draws every item a seed of its own for its random patch; each of ``world``
    processes takes every ``world``-th item of the permutation (``rank`` first), in batches of
    ``batch_size``, the short last one dropped. Batch ``b`` is thus the same whether the run reached
    it in one go or resumed before it, on any number of data workers.

    Raises:
        ValueError: Fewer than ``batch_size`` items per process.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, start: int = 0, rank: int = 0, world: int = 1) -> None:
        self.per_pass = (n // world) // batch_size
        if self.per_pass < 1:
            raise ValueError(
                f"{n} training items cannot fill one batch of {batch_size} per process ({world} processes): "
                "lower --batch_size or raise --repeat"
            )
        self.n, self.batch_size, self.seed, self.start, self.rank, self.world = n, batch_size, seed, start, rank, world

    def draw(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pass ``epoch``'s order of the items, and each item's patch seed."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g), torch.randint(0, 2**62, (self.n,), generator=g)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        b, drawn = self.start, None
        while True:
            epoch, pos = divmod(b, self.per_pass)
            if drawn is None or drawn[0] != epoch:
                order, seeds = self.draw(epoch)
                drawn = (epoch, order[self.rank :: self.world].tolist(), seeds.tolist())
            mine = drawn[1][pos * self.batch_size : (pos + 1) * self.batch_size]
            yield [(i, drawn[2][i]) for i in mine]
            b += 1


def batches(ctx: Context, train: Dataset) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The endless stream of training batches, from the run's step ``ctx.global_step`` on (:class:`BatchOrder`)."""
    order = BatchOrder(
        len(train),  # type: ignore[arg-type]
        ctx.args.batch_size,
        seed=ctx.args.seed,
        start=ctx.global_step,
        rank=ctx.rank,
        world=ctx.world,
    )
    loader = DataLoader(
        train,
        batch_sampler=order,
        generator=torch.Generator(),  # the workers' base seed: the run's own generator stays untouched
        num_workers=ctx.args.workers,
        pin_memory=ctx.device.type == "cuda",
    )
    for lr, hr, _ in loader:
        yield lr.to(ctx.device, non_blocking=True), hr.to(ctx.device, non_blocking=True)


def stage_limit(ctx: Context, iters: int, train: Dataset) -> int:
    """``iters``, capped by ``--epochs`` passes over the training set."""
    if ctx.args.epochs is None:
        return iters
    per_epoch = max(1, len(train) // (ctx.args.batch_size * ctx.world))  # type: ignore[arg-type]
    return min(iters, ctx.args.epochs * per_epoch)


def build_model(ctx: Context) -> SRModel:
    a = ctx.args
    model = SRModel(
        n_resblocks=a.n_resblocks, n_feats=a.n_feats, scale=a.scale, rgb_range=a.rgb_range, res_scale=a.res_scale
    )
    return model.to(ctx.device)


# --- inference and evaluation ----------------------------------------------------------------


def infer(
    model: nn.Module, lr: torch.Tensor, *, chop: bool, scale: int, tile: int = 96, overlap: int = 24
) -> torch.Tensor:
    """Super-resolve ``lr`` (N, 3, h, w); with ``chop``, in overlapping tiles stitched back."""
    if not chop or (lr.shape[-2] <= tile and lr.shape[-1] <= tile):
        return model(lr)
    n, _, h, w = lr.shape
    out = lr.new_zeros(n, 3, h * scale, w * scale)
    step = tile - 2 * overlap
    for top in range(0, h, step):
        for left in range(0, w, step):
            t0, l0 = max(0, top - overlap), max(0, left - overlap)
            t1, l1 = min(h, top + step + overlap), min(w, left + step + overlap)
            sr = model(lr[:, :, t0:t1, l0:l1])
            bt, bl = min(h, top + step), min(w, left + step)
            out[:, :, top * scale : bt * scale, left * scale : bl * scale] = sr[
                :, :, (top - t0) * scale : (bt - t0) * scale, (left - l0) * scale : (bl - l0) * scale
            ]
    return out


@torch.no_grad()
def evaluate(
    ctx: Context, model: nn.Module, data: Dataset, *, save_dir: Path | None = None
) -> tuple[float, float, list]:
    """Mean PSNR/SSIM (Y channel, border = scale) and the per-image rows."""
    a = ctx.args
    was = model.training
    model.eval()
    rows = []
    for i in tqdm(range(len(data)), desc="eval", leave=False, disable=not ctx.main):  # type: ignore[arg-type]
        lr, hr, name = data[i]
        sr = infer(model, lr[None].to(ctx.device), chop=a.chop, scale=a.scale)[0].clamp(0, a.rgb_range)
        sr = sr.round() if a.rgb_range == 255 else sr
        hr = hr.to(ctx.device)
        rows.append(
            {
                "image": name,
                "psnr": psnr(sr, hr, scale=a.scale, rgb_range=a.rgb_range),
                "ssim": ssim(sr, hr, scale=a.scale, rgb_range=a.rgb_range),
            }
        )
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
            save_png(save_dir / f"{name}_x{a.scale}_SR.png", sr, a.rgb_range)
    model.train(was)
    finite = [r["psnr"] for r in rows if math.isfinite(r["psnr"])]
    return sum(finite) / max(1, len(finite)), sum(r["ssim"] for r in rows) / max(1, len(rows)), rows


def bicubic_psnr(ctx: Context, data: Dataset) -> float:
    """PSNR of plain bicubic upscaling: the floor any SR network must beat."""
    a = ctx.args
    vals = []
    for i in range(len(data)):  # type: ignore[arg-type]
        lr, hr, _ = data[i]
        up = torch.nn.functional.interpolate(lr[None], scale_factor=a.scale, mode="bicubic", align_corners=False)
        up = up[0, :, : hr.shape[-2], : hr.shape[-1]].clamp(0, a.rgb_range).round()
        vals.append(psnr(up, hr, scale=a.scale, rgb_range=a.rgb_range))
    return sum(vals) / max(1, len(vals))


def size_report(model: nn.Module, scale: int) -> tuple[int, float]:
    """Parameters, and GMACs for a 1280x720 output (the field's convention).

    The network is fully convolutional at the LR resolution, so MACs grow with the input area:
    they are counted on a 16x16 input and scaled to (720/scale) x (1280/scale).
    """
    graph = assl.trace(model, torch.zeros(1, 3, 16, 16, device=next(model.parameters()).device))
    macs = graph.count_macs() * (1280 / scale) * (720 / scale) / (16 * 16)
    return sum(p.numel() for p in model.parameters()), macs / 1e9


# --- training --------------------------------------------------------------------------------


def train_stage(
    ctx: Context,
    stage: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: Iterator[tuple[torch.Tensor, torch.Tensor]],
    *,
    start: int,
    iters: int,
    evals: dict[str, Dataset],
    save: Callable[[int], None],
    extra_loss: Callable[[], torch.Tensor] | None = None,
    teacher_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    progress: Callable[[], dict[str, str]] | None = None,
    stop: Callable[[], bool] | None = None,
    bare: nn.Module | None = None,
) -> int:
    """Train ``model`` from step ``start`` to ``iters`` (or until ``stop()``); returns the last step.

    ``extra_loss()`` (e.g. the Pruner's alignment loss) is added to the L1 loss of each step, and so
    is ``teacher_loss(output, lr)`` (e.g. a distillation term), computed under the same autocast as
    the network from its output and the low-resolution batch it was called with. The loss history
    and the log keep the L1 loss alone; the log adds the teacher's term. ``progress()`` (e.g. the
    Pruner's phase, steps left and penalty) is shown in the bar.
    """
    a = ctx.args
    use_amp = a.amp and ctx.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    step = start
    bar = tqdm(total=iters, initial=start, desc=stage, disable=not ctx.main, dynamic_ncols=True)
    postfix: dict[str, str] = {}
    t0 = time.time()
    try:
        while step < iters and not (stop and stop()):
            lr, hr = next(stream)
            with torch.autocast(ctx.device.type, enabled=use_amp):
                out = model(lr)
                loss = (out - hr).abs().mean()
                taught = teacher_loss(out, lr) if teacher_loss else None
            total = loss + (taught if taught is not None else 0.0) + (extra_loss() if extra_loss else 0.0)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            scaler.step(optimizer)
            scaler.update()
            step += 1
            ctx.global_step += 1
            if ctx.main:
                ctx.history["loss"].append((stage, ctx.global_step, loss.item()))
                bar.update(1)
                if progress is not None and (step % 10 == 0 or step == start + 1):
                    postfix.update(progress())
                    bar.set_postfix(postfix, refresh=False)
                if step % a.print_every == 0:
                    log.info(
                        "%s step %d/%d loss %.4f%s (%.2f s/step)",
                        stage,
                        step,
                        iters,
                        loss.item(),
                        "" if taught is None else f" distill {taught.item():.4f}",
                        (time.time() - t0) / max(1, step - start),
                    )
                if step % a.eval_every == 0:
                    val, _, _ = evaluate(ctx, bare or model, evals["val"])
                    ctx.history["psnr"].append((stage, ctx.global_step, val))
                    postfix["val_psnr"] = f"{val:.2f}"
                    bar.set_postfix(postfix)
            if step % a.checkpoint_every == 0:
                save(step)
    except KeyboardInterrupt:
        save(step)
        log.warning("interrupted at %s step %d: checkpoint saved, continue with --resume", stage, step)
        raise
    finally:
        bar.close()
    save(step)
    return step


def checkpoint(
    ctx: Context,
    stage: str,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    pruner: assl.Pruner | None = None,
) -> None:
    """Write ``checkpoint.pt`` atomically (rank 0 only)."""
    if not ctx.main:
        return
    state = {
        "stage": stage,
        "step": step,
        "global_step": ctx.global_step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "pruner": pruner.state_dict() if pruner is not None else None,
        "rng": torch.get_rng_state(),
        "history": ctx.history,
        "results": ctx.state.get("results", {}),
    }
    tmp = ctx.out / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(ctx.out / "checkpoint.pt")


def ratio_map(model: nn.Module, ranges: list[tuple[int, int, float]]) -> dict[str, float]:
    """``--stage_pr`` layer-index ranges -> {layer name: ratio} over the model's convolutions."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    out: dict[str, float] = {}
    for first, last, r in ranges:
        for name in convs[first : last + 1]:
            out.setdefault(name, r)
    return out


def make_pruner(ctx: Context, model: nn.Module) -> assl.Pruner:
    a = ctx.args
    # pixel-like values: slim() and liveness() measure the chosen channels on these (not on a black image)
    x = (torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * a.rgb_range).to(ctx.device)
    ratios = ratio_map(model, a.stage_ranges)
    skip = [p for p in a.skip_layers.split(",") if p]
    pruned = set(assl.trace(model, x).layers)
    ratios = {k: v for k, v in ratios.items() if k in pruned}
    groups = [a.same_pruned_wg_layers] if a.same_pruned_wg_layers else None
    if a.latency is None:
        return assl.Pruner(model, x, ratio=ratios, skip=skip, groups=groups, schedule=schedule(a))
    return _latency_pruner(ctx, model, skip, groups)


def _latency_pruner(ctx: Context, model: nn.Module, skip: list[str], groups: list[str] | None) -> assl.Pruner:
    """``--latency``: per-group widths for a fraction of the dense latency, timed here on one
    ``--latency_size`` input; a resumed run takes the widths of the first (no timing again)."""
    a = ctx.args
    h, w = a.latency_hw
    x = (torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * a.rgb_range).to(ctx.device)
    results = ctx.state.setdefault("results", {})
    saved = results.get("latency_plan")
    if saved is not None:
        log.info("latency budget: the widths of the first run (%s)", saved["describe"])
        return assl.Pruner(model, x, ratio=saved["ratios"], skip=skip, groups=groups, schedule=schedule(a))
    budget = assl.Budget(relative_latency=a.latency)
    pruner = assl.Pruner(model, x, budget=budget, round_to="auto", skip=skip, groups=groups, schedule=schedule(a))
    plan = pruner.latency
    assert plan is not None  # a latency budget always makes a plan
    results["latency_plan"] = {"ratios": plan.ratios(), "describe": plan.describe(), "widths": dict(plan.widths)}
    log.info("latency budget: %s", plan.describe())
    return pruner
