"""Time tracing and slimming against model size, and Torch-Pruning's graph build + pruning of the same models.

For each model, ``assl.trace`` and ``assl.slim`` (half of every group's prunable channels) are
timed with the benchmarks' interleaved timer against a forward pass of the model and, when
``torch-pruning`` is installed, against its ``DependencyGraph`` build plus pruning half of every
group. Slimming and Torch-Pruning change a model in place, so every timed call gets a fresh copy
(made untimed). ``--memory`` also measures the peak extra memory of ``slim()`` (Linux): the
resident-memory high-water mark during it over the resident memory before it, in a fresh process
per model, over the dense model's parameter bytes.

    python -m benchmarks.trace_slim --repeats 5 --memory --plot docs/img/trace_slim.png
    python -m benchmarks.trace_slim --smoke        # seconds: used by the test suite
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing as mp
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import assl

from . import cli, networks, tp_adapter
from .results import Writer, read
from .tables import markdown, provenance
from .timing import model_call, time_fresh, with_autograd

NAME = "trace_slim"
MODELS: list[tuple[str, str, dict[str, Any], tuple[int, ...]]] = [
    *[(f"LEDSR {b}x{f}", "ledsr", {"blocks": b, "feats": f}, (1, 3, 16, 16)) for b, f in [(8, 64), (16, 64)]],
    *[(f"LEDSR {b}x{f}", "ledsr", {"blocks": b, "feats": f}, (1, 3, 16, 16)) for b, f in [(16, 256), (32, 256)]],
    ("LEDSR 64x256", "ledsr", {"blocks": 64, "feats": 256}, (1, 3, 16, 16)),
    ("ResNet-50-like", "resnet50_like", {}, (1, 3, 64, 64)),
    ("MobileNetV2-like", "mobilenetv2_like", {}, (1, 3, 64, 64)),
    ("DenseNet-121-like", "densenet121_like", {}, (1, 3, 64, 64)),
]
"""(label, network, its arguments, input shape)."""
SMOKE_MODELS = [("LEDSR 2x8", "ledsr", {"blocks": 2, "feats": 8}, (1, 3, 8, 8))]


def half_plan(graph: assl.Graph) -> dict[str, list[int]]:
    """Half of every group's prunable units (its first ones), leaving each group at least one."""
    plan = {}
    for g in graph.groups:
        units = [int(u) for u in g.prunable.nonzero()[0]]
        k = min(len(units) // 2, g.size - 1)
        if k > 0:
            plan[g.name] = units[:k]
    return plan


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    return networks.build(name, seed=0, **kwargs).eval()


def _slim_call(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    m = copy.deepcopy(model)
    graph = assl.trace(m, x)
    plan = half_plan(graph)
    return with_autograd(lambda: assl.apply_plan(m, graph, plan))


def _tp_call(model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    m = copy.deepcopy(model)
    return with_autograd(lambda: tp_adapter.prune_half(m, x))


def measure(label: str, name: str, kwargs: dict[str, Any], shape: tuple[int, ...], a: argparse.Namespace) -> dict:
    """The row of one model: medians (ms) and every round's sample of each timed call."""
    model = _build(name, kwargs)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    prepare: dict[str, Callable[[], Callable[[], Any]]] = {
        "forward": lambda: model_call(model, x),
        "trace": lambda: with_autograd(lambda: assl.trace(model, x)),
        "slim": lambda: _slim_call(model, x),
    }
    if a.torch_pruning and tp_adapter.installed():
        prepare["torch_pruning"] = lambda: _tp_call(model, x)
    samples = time_fresh(list(prepare.values()), torch.device("cpu"), rounds=a.repeats)
    ms = {k: samples[:, i] * 1e3 for i, k in enumerate(prepare)}
    row: dict[str, Any] = {
        "model": label,
        "network": name,
        "params": sum(p.numel() for p in model.parameters()),
        "input": list(shape),
        **{f"{k}_ms": statistics.median(v.tolist()) for k, v in ms.items()},
        "samples_ms": {k: v.tolist() for k, v in ms.items()},
        "torch_pruning": tp_adapter.version() if "torch_pruning" in prepare else None,
    }
    if a.memory:
        row["slim_peak_ratio"] = peak_ratio(name, kwargs, shape)
    return row


def _status(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _peak_child(name: str, kwargs: dict[str, Any], shape: tuple[int, ...], queue: Any) -> None:
    model = _build(name, kwargs)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    graph = assl.trace(model, torch.randn(shape))
    plan = half_plan(graph)
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # start the high-water mark afresh, at the current RSS
        f.write("5")
    assl.apply_plan(model, graph, plan)
    queue.put((_status("VmHWM") - before, size))


def peak_ratio(name: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> float:
    """Peak memory ``slim()`` adds over the dense model's bytes: in a fresh process, the resident
    set's high-water mark during ``slim()`` (reset just before it) minus the resident set before it."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_peak_child, args=(name, kwargs, shape, queue))
    proc.start()
    proc.join(timeout=600)
    if proc.exitcode != 0:
        raise RuntimeError(f"measuring slim()'s memory failed in the child process (exit code {proc.exitcode})")
    extra, size = queue.get(timeout=5)
    return extra / size


def render(rows: list[dict]) -> str:
    """The docs' table of a results file of this benchmark."""
    vals = [r["values"] for r in rows]
    tp = any(v.get("torch_pruning_ms") is not None for v in vals)
    memory = any(v.get("slim_peak_ratio") is not None for v in vals)
    header = ["model", "params", "input", "forward ms", "trace ms", "slim ms", "trace+slim ms"]
    header += ["Torch-Pruning ms", "ratio"] if tp else []
    header += ["slim peak / model size"] if memory else []
    body = []
    for v in vals:
        total = v["trace_ms"] + v["slim_ms"]
        cells = [v["model"], f"{v['params'] / 1e6:.2f}M", "x".join(map(str, v["input"]))]
        cells += [f"{v['forward_ms']:.1f}", f"{v['trace_ms']:.1f}", f"{v['slim_ms']:.1f}", f"{total:.1f}"]
        if tp:
            t = v.get("torch_pruning_ms")
            cells += [f"{t:.1f}", f"{total / t:.2f}"] if t is not None else ["-", "-"]
        if memory:
            cells.append(f"{v['slim_peak_ratio']:.2f}" if v.get("slim_peak_ratio") is not None else "-")
        body.append(cells)
    repeats = rows[0]["settings"]["repeats"]
    return "\n".join(
        [
            provenance(rows, ("torch-pruning",) if tp else ())
            + f" Medians of {repeats} interleaved rounds; ratio = assl / Torch-Pruning.",
            "",
            markdown(header, body),
        ]
    )


def plot(rows: list[dict], path: str) -> None:
    """A log-log PNG of the trace + slim time (and Torch-Pruning's) against the parameter count."""
    from .plots import figure

    vals = [r["values"] for r in rows]
    with figure(path, size=(6.5, 4.5)) as ax:
        ax.loglog([v["params"] for v in vals], [v["trace_ms"] + v["slim_ms"] for v in vals], "o", label="assl")
        tp = [v for v in vals if v.get("torch_pruning_ms") is not None]
        if tp:
            label = f"Torch-Pruning {tp[0]['torch_pruning']}"
            ax.loglog([v["params"] for v in tp], [v["torch_pruning_ms"] for v in tp], "s", label=label)
        for v in vals:
            total = v["trace_ms"] + v["slim_ms"]
            ax.annotate(v["model"], (v["params"], total), fontsize=7, xytext=(4, -10), textcoords="offset points")
        ax.set(xlabel="parameters", ylabel="ms (1 CPU thread)", title="tracing + slimming time against model size")
        ax.legend()


def main(argv: list[str] | None = None) -> list[dict]:
    """Time every model; append the rows to ``--out``, print the table, optionally plot it."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    p.add_argument("--smoke", action="store_true", help="one tiny model, two rounds")
    p.add_argument("--memory", action="store_true", help="also measure slim()'s peak extra memory (a process each)")
    p.add_argument("--no-torch-pruning", dest="torch_pruning", action="store_false", help="leave Torch-Pruning out")
    p.add_argument("--plot", default=None, help="write a log-log PNG of time against parameters here")
    cli.add_output(p, NAME)
    a = cli.parse(p, argv, smoke={"repeats": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        writer = Writer(cli.output_path(a, NAME), NAME, a, append=a.append)
        for label, name, kwargs, shape in SMOKE_MODELS if a.smoke else MODELS:
            row = writer.write(measure(label, name, kwargs, shape, a))
            print(
                f"{label}: trace {row['values']['trace_ms']:.1f} ms, slim {row['values']['slim_ms']:.1f} ms", flush=True
            )
    finally:
        torch.set_num_threads(threads)
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    if a.plot:
        plot(rows, a.plot)
    return rows


if __name__ == "__main__":
    main()
