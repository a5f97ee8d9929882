"""Realized inference speedup of slimmed LEDSR models against their MAC reduction.

Builds the paper's LEDSR (16 blocks, 256 features, x2 by default), slims copies of it with the
one-shot L1 criterion at several ratios (optionally rounding kept widths to a multiple of 8),
and times dense and slimmed forward passes interleaved in one process. Reports the median
latency, the speedup, the ideal speedup (MAC ratio) and realized/ideal.

    python benchmarks/inference_speed.py --device cuda --dtype float16
    python benchmarks/inference_speed.py --device cpu --lr-size 90x160 --batch 1
    python benchmarks/inference_speed.py --smoke
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "sr"))
from ledsr import SRModel

import assl


def _slim(dense: torch.nn.Module, ratio: float, round_to: int) -> torch.nn.Module:
    model = copy.deepcopy(dense)
    pruner = assl.Pruner(model, torch.zeros(1, 3, 16, 16), ratio=ratio, skip=["*mean*", "*tail*"], round_to=round_to)
    return pruner.prune_now("l1")


def _macs(model: torch.nn.Module, h: int, w: int) -> float:
    graph = assl.trace(model, torch.zeros(1, 3, 16, 16, device=next(model.parameters()).device))
    return graph.count_macs() * h * w / 256


def _time(model: torch.nn.Module, x: torch.Tensor) -> float:
    if x.is_cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(x)
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--feats", type=int, default=256)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.80859375])
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--lr-size", default=None, help="LR input HxW (default: 1280x720 output on cuda, 160x90 on cpu)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model, one repeat (seconds)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        args.blocks, args.feats, args.batch, args.repeats, args.lr_size = 2, 16, [1], 2, "16x16"
        args.ratios = [0.5]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if args.lr_size:
        h, w = (int(v) for v in args.lr_size.split("x"))
    else:
        h, w = (720 // args.scale, 1280 // args.scale) if device.type == "cuda" else (90, 160)
    torch.manual_seed(0)
    dense = SRModel(n_resblocks=args.blocks, n_feats=args.feats, scale=args.scale).eval()
    variants = [("dense", dense)]
    for r in args.ratios:
        variants.append((f"ratio {r:g}", _slim(dense, r, 1)))
        if not args.smoke:
            variants.append((f"ratio {r:g}, round_to 8", _slim(dense, r, 8)))
    macs = {name: _macs(m, h, w) for name, m in variants}
    models = [(name, m.to(device=device, dtype=dtype).eval()) for name, m in variants]
    torch.backends.cudnn.benchmark = True
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    print(
        f"# LEDSR {args.blocks}x{args.feats} x{args.scale}, LR {h}x{w}, {args.dtype}, {what}, torch {torch.__version__}"
    )
    print("| model | features | params | GMACs | batch | latency ms | speedup | ideal | realized/ideal |")
    print("|---|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for batch in args.batch:
            x = torch.rand(batch, 3, h, w, device=device, dtype=dtype) * 255
            for _, m in models:  # warm-up (and cudnn autotuning)
                for _ in range(3):
                    _time(m, x)
            times: dict[str, list[float]] = {name: [] for name, _ in models}
            for _ in range(args.repeats):  # interleaved
                for name, m in models:
                    times[name].append(_time(m, x))
            base = statistics.median(times["dense"])
            for name, m in models:
                t = statistics.median(times[name])
                feats = m.model.head[0].out_channels
                params = sum(q.numel() for q in m.parameters())
                ideal = macs["dense"] / macs[name]
                print(
                    f"| {name} | {feats} | {params / 1e6:.2f}M | {macs[name] * batch / 1e9:.1f} | {batch} | "
                    f"{t * 1e3:.2f} | {base / t:.2f}x | {ideal:.2f}x | {base / t / ideal:.2f} |"
                )


if __name__ == "__main__":
    main()
