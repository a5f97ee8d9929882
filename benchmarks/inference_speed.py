"""Realized inference speedup of slimmed LEDSR against its MAC reduction.

Builds the paper's LEDSR (16 blocks, 256 features, x2 by default), slims copies of it with the
one-shot L1 criterion at several ratios (and, unless ``--no-round``, with the kept widths rounded to
a multiple of 8), and times the dense and slimmed forward passes with the benchmarks' interleaved
timer (warm-up and cuDNN autotuning first). Reports the median latency, the speedup, the ideal
speedup (the MAC ratio, counted by ``assl`` and checked against torch's flop counter) and
realized/ideal.

    python -m benchmarks.inference_speed --device cuda --dtype float16 --repeats 20
    python -m benchmarks.inference_speed --device cpu --lr-size 45x80 --batch 1 --repeats 5 --threads 2
    python -m benchmarks.inference_speed --smoke
"""

from __future__ import annotations

import argparse
import copy
import statistics
from typing import cast

import torch
from torch import nn

import assl

from . import cli, networks
from .macs import count_macs
from .results import Writer, read
from .tables import markdown, provenance
from .timing import model_call, time_calls

NAME = "inference_speed"
SMOKE = {"blocks": 2, "feats": 16, "batch": [1], "repeats": 2, "lr_size": "16x16", "ratios": [0.5], "round": False}


def slimmed(dense: nn.Module, ratio: float, round_to: int) -> nn.Module:
    """A copy of ``dense`` without ``ratio`` of each group's channels, chosen by filter L1 norm."""
    model = copy.deepcopy(dense)
    x = torch.zeros(1, 3, 16, 16)
    pruner = assl.Pruner(model, x, ratio=ratio, skip=networks.LEDSR_SKIP, round_to=round_to)
    return pruner.prune_now("l1")


def main(argv: list[str] | None = None) -> list[dict]:
    """Time the dense and slimmed models at every batch size; append the rows to ``--out``, print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--feats", type=int, default=256)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.80859375])
    p.add_argument("--no-round", dest="round", action="store_false", help="leave out the round_to=8 variants")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--lr-size", default=None, help="LR input HxW (default: 1280x720 output on cuda, 160x90 on cpu)")
    p.add_argument("--repeats", type=int, default=15, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--smoke", action="store_true", help="tiny model, two rounds (seconds)")
    cli.add_output(p, NAME)
    a = cli.parse(p, argv, smoke=SMOKE)
    cli.set_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    if a.lr_size:
        h, w = (int(v) for v in a.lr_size.split("x"))
    else:
        h, w = (720 // a.scale, 1280 // a.scale) if device.type == "cuda" else (90, 160)
    dense = networks.build("ledsr", seed=0, blocks=a.blocks, feats=a.feats, scale=a.scale).eval()
    variants = [("dense", 0.0, 1, dense)]
    for r in a.ratios:
        variants.append((f"ratio {r:g}", r, 1, slimmed(dense, r, 1)))
        if a.round:
            variants.append((f"ratio {r:g}, round_to 8", r, 8, slimmed(dense, r, 8)))
    small_input = torch.zeros(1, 3, 16, 16)
    macs = {label: count_macs(m, small_input) * h * w / 256 for label, _, _, m in variants}  # per LR image
    models = [(label, r, k, m.to(device=device, dtype=dtype).eval()) for label, r, k, m in variants]
    torch.backends.cudnn.benchmark = True
    writer = Writer(cli.output_path(a, NAME), NAME, a, append=a.append, device=device)
    for batch in a.batch:
        x = torch.rand(batch, 3, h, w, device=device, dtype=dtype) * 255
        samples = time_calls([model_call(m, x) for *_, m in models], device, rounds=a.repeats)
        for i, (label, ratio, round_to, m) in enumerate(models):
            writer.write(
                {
                    "model": label,
                    "ratio": ratio,
                    "round_to": round_to,
                    "features": cast(nn.Conv2d, m.get_submodule("model.head.0")).out_channels,
                    "params": sum(q.numel() for q in m.parameters()),
                    "macs": macs[label] * batch,
                    "ideal": macs["dense"] / macs[label],
                    "batch": batch,
                    "lr_size": [h, w],
                    "dtype": a.dtype,
                    "latency_ms": statistics.median(samples[:, i].tolist()) * 1e3,
                    "dense_latency_ms": statistics.median(samples[:, 0].tolist()) * 1e3,
                    "samples_ms": (samples[:, i] * 1e3).tolist(),
                }
            )
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    return rows


def render(rows: list[dict]) -> str:
    """The docs' table of a results file of this benchmark (one block per run)."""
    out = []
    for run in dict.fromkeys(r["run"] for r in rows):
        rs = [r for r in rows if r["run"] == run]
        v0 = rs[0]["values"]
        body = []
        for r in rs:
            v = r["values"]
            speedup = v["dense_latency_ms"] / v["latency_ms"]
            body.append(
                [
                    "dense" if v["model"] == "dense" else v["model"],
                    v["features"],
                    f"{v['params'] / 1e6:.2f}M",
                    f"{v['macs'] / 1e9:.1f}",
                    v["batch"],
                    f"{v['latency_ms']:.2f}",
                    f"{speedup:.2f}x",
                    f"{v['ideal']:.2f}x",
                    f"{speedup / v['ideal']:.2f}",
                ]
            )
        h, w = v0["lr_size"]
        header = ["model", "features", "params", "GMACs", "batch", "latency ms", "speedup", "ideal", "realized/ideal"]
        out += [
            provenance(rs) + f" LR {h}x{w}, {v0['dtype']}; medians of {rs[0]['settings']['repeats']} interleaved"
            " rounds.",
            "",
            markdown(header, body),
            "",
        ]
    return "\n".join(out).rstrip()


if __name__ == "__main__":
    main()
