"""Time tracing and slimming against model size.

Runs assl.trace + assl.slim (and, when installed, Torch-Pruning's DependencyGraph build +
pruning of the same channels) on EDSR models of several sizes and on a ResNet-50-shaped net,
repeated and interleaved, on one CPU thread. Prints a markdown table of medians.

    python benchmarks/trace_slim.py --repeats 7
    python benchmarks/trace_slim.py --smoke        # seconds: used by the test suite
"""

from __future__ import annotations

import argparse
import copy
import functools
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _models import densenet_like, edsr, mobilenetv2_like, resnet50_like

import assl


def _half_plan(graph: assl.Graph) -> dict[str, list[int]]:
    plan = {}
    for g in graph.groups:
        units = [int(u) for u in g.prunable.nonzero()[0]]
        k = min(len(units) // 2, g.size - 1)
        if k > 0:
            plan[g.name] = units[:k]
    return plan


def _forward_once(model: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        t0 = time.perf_counter()
        model(x)
        return time.perf_counter() - t0


def _assl_once(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    graph = assl.trace(m, x)
    t1 = time.perf_counter()
    assl.apply_plan(m, graph, _half_plan(graph))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def _tp_once(tp, model: nn.Module, x: torch.Tensor) -> float:  # pragma: no cover - optional dependency
    """Torch-Pruning: dependency graph build, then half of every group's channels pruned."""
    m = copy.deepcopy(model)
    last = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))][-1]
    t0 = time.perf_counter()
    dg = tp.DependencyGraph().build_dependency(m, example_inputs=x)
    for group in dg.get_all_groups(ignored_layers=[last]):
        root = group[0].dep.target.module
        n = root.out_channels if isinstance(root, nn.Conv2d) else root.out_features
        if n > 1:
            group.prune(idxs=list(range(n // 2)))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--smoke", action="store_true", help="one tiny model, one repeat")
    p.add_argument("--plot", default=None, help="write a log-log PNG of time against parameters here")
    p.add_argument(
        "--memory", action="store_true", help="also measure slim()'s peak extra memory (a child process per model)"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        import torch_pruning as tp  # type: ignore[import-not-found]
    except ImportError:
        tp = None
    tp_version = None
    if args.smoke:
        factories = [("EDSR 2x8", functools.partial(edsr, 2, 8), (1, 3, 8, 8))]
        args.repeats = 1
    else:
        factories = [
            (f"EDSR {b}x{f}", functools.partial(edsr, b, f), (1, 3, 16, 16))
            for b, f in [(8, 64), (16, 64), (16, 256), (32, 256), (64, 256)]
        ] + [
            ("ResNet-50-like", resnet50_like, (1, 3, 64, 64)),
            ("MobileNetV2-like", mobilenetv2_like, (1, 3, 64, 64)),
            ("DenseNet-121-like", densenet_like, (1, 3, 64, 64)),
        ]
    print(f"# trace + slim, 1 CPU thread, torch {torch.__version__}, {platform.processor() or platform.machine()}")
    head = "| model | params | input | forward ms | trace ms | slim ms | trace+slim ms |"
    print(head + (" Torch-Pruning ms | ratio |" if tp else "") + (" slim peak / model size |" if args.memory else ""))
    print("|---|---|---|---|---|---|---|" + ("---|---|" if tp else "") + ("---|" if args.memory else ""))
    points: list[tuple[str, int, float, float | None]] = []
    for name, factory, in_shape in factories:
        model, x = factory(), torch.randn(in_shape)
        tr, sl, tpt, fw = [], [], [], []
        for _ in range(args.repeats):  # interleaved
            fw.append(_forward_once(model, x))
            a, b = _assl_once(model, x)
            tr.append(a)
            sl.append(b)
            if tp is not None:
                tpt.append(_tp_once(tp, model, x))
        t, s = statistics.median(tr) * 1e3, statistics.median(sl) * 1e3
        n = sum(q.numel() for q in model.parameters())
        f = statistics.median(fw) * 1e3
        shape = "x".join(map(str, x.shape))
        row = f"| {name} | {n / 1e6:.2f}M | {shape} | {f:.1f} | {t:.1f} | {s:.1f} | {t + s:.1f} |"
        if tp is not None:
            tt = statistics.median(tpt) * 1e3
            row += f" {tt:.1f} | {(t + s) / tt:.2f} |"
            tp_version = tp.__version__
        if args.memory:
            row += f" {_peak_ratio(factory, in_shape):.2f} |"
        points.append((name, n, t + s, statistics.median(tpt) * 1e3 if tp is not None else None))
        print(row, flush=True)
        assert math.isfinite(t + s)
    if tp_version:
        print(f"\nTorch-Pruning {tp_version}; ratio = assl / Torch-Pruning (below 1: assl is faster)")
    if args.plot:
        _plot(points, args.plot, tp_version)


def _peak_rss() -> int:
    """High-water mark of resident memory in bytes (VmHWM: unlike ru_maxrss, it starts anew at exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def _peak_child(factory, shape: tuple[int, ...], queue) -> None:  # runs in a fresh process
    model = factory()
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    graph = assl.trace(model, torch.randn(shape))
    plan = _half_plan(graph)
    before = _peak_rss()
    assl.apply_plan(model, graph, plan)
    queue.put((_peak_rss() - before, size))


def _peak_ratio(factory, shape: tuple[int, ...]) -> float:
    """Peak memory slim() adds (resident-set growth in a fresh process) over the dense model's bytes.

    The model is built in the child, so that nothing but the trace runs before slim().
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(factory, shape, queue))
    proc.start()
    proc.join(timeout=600)
    if proc.exitcode != 0:
        raise RuntimeError(f"measuring slim()'s memory failed in the child process (exit code {proc.exitcode})")
    extra, size = queue.get(timeout=5)
    return extra / size


def _plot(points: list[tuple[str, int, float, float | None]], path: str, tp_version: str | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.loglog([p[1] for p in points], [p[2] for p in points], "o", label="assl trace + slim")
    if tp_version:
        ax.loglog([p[1] for p in points], [p[3] for p in points], "s", label=f"Torch-Pruning {tp_version}")
    for name, n, t, _ in points:
        ax.annotate(name, (n, t), fontsize=7, xytext=(4, -10), textcoords="offset points")
    ax.set(xlabel="parameters", ylabel="ms (1 CPU thread)", title="tracing + slimming time against model size")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
