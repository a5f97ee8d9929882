"""Trace an EDSR-baseline, remove half of every channel group by weight L1-norm, check the result.

    python examples/slim_demo.py [--blocks 16] [--feats 64]

Prints the groups the tracer found, the parameters before and after, the largest difference
between the slimmed model and the masked dense model, and CPU latency of both.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import assl


class ResBlock(nn.Module):
    def __init__(self, f: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(f, f, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(f, f, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.body(x)
        res += x
        return res


class EDSR(nn.Module):
    def __init__(self, blocks: int, feats: int, scale: int = 2) -> None:
        super().__init__()
        self.head = nn.Sequential(nn.Conv2d(3, feats, 3, padding=1))
        self.body = nn.Sequential(*[ResBlock(feats) for _ in range(blocks)], nn.Conv2d(feats, feats, 3, padding=1))
        self.tail = nn.Sequential(
            nn.Conv2d(feats, feats * scale**2, 3, padding=1), nn.PixelShuffle(scale), nn.Conv2d(feats, 3, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        res = self.body(x)
        res += x
        return self.tail(res)


def l1_plan(model: nn.Module, graph: assl.Graph, ratio: float) -> dict[str, list[int]]:
    """Per group, the units with the smallest summed L1-norm of their producers' filters."""
    plan = {}
    for g in graph.groups:
        score = torch.zeros(g.size)
        for layer in g.layers:
            w = model.get_submodule(layer).weight.detach()
            per_channel = w.abs().flatten(1).sum(1)  # one L1-norm per output filter
            score.index_add_(0, torch.as_tensor(g.channels(layer)), per_channel)
        score[torch.as_tensor(~g.prunable)] = float("inf")
        k = min(int(ratio * g.num_prunable), g.size - 1)
        if k > 0:
            plan[g.name] = score.argsort()[:k].tolist()
    return plan


def latency(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    with torch.no_grad():
        model(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--feats", type=int, default=64)
    p.add_argument("--ratio", type=float, default=0.5)
    args = p.parse_args()
    torch.manual_seed(0)
    model = EDSR(args.blocks, args.feats).eval()
    x = torch.randn(1, 3, 48, 48)

    t0 = time.perf_counter()
    graph = assl.trace(model, x)
    traced = time.perf_counter() - t0
    print(graph.summary(), "\n")
    plan = l1_plan(model, graph, args.ratio)
    dense_params = sum(p.numel() for p in model.parameters())
    reference = assl.masked_copy(model, graph, plan)
    dense = assl.masked_copy(model, graph, {})
    t0 = time.perf_counter()
    assl.apply_plan(model, graph, plan)
    slimmed = time.perf_counter() - t0

    test = torch.randn(2, 3, 64, 40)
    with torch.no_grad():
        err = (model(test) - reference(test)).abs().max().item()
    slim_params = sum(p.numel() for p in model.parameters())
    t_dense, t_slim = latency(dense, x), latency(model, x)
    print(f"trace {traced * 1e3:.1f} ms, slim {slimmed * 1e3:.1f} ms")
    print(f"parameters {dense_params:,} -> {slim_params:,} ({slim_params / dense_params:.1%})")
    print(f"max |slimmed - masked dense| on a new input size: {err:.2e}")
    print(
        f"CPU latency 1x3x48x48: dense {t_dense * 1e3:.1f} ms, slimmed {t_slim * 1e3:.1f} ms "
        f"({t_dense / t_slim:.2f}x faster)"
    )


if __name__ == "__main__":
    main()
