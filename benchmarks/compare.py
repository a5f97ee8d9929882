"""Running a quality benchmark: parse its flags, sweep seeds and methods, save and print the report.

``quality`` (SR), ``bn_classifier`` and ``bn_denoiser`` are this with a different task.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from . import cli, protocol, tp_adapter
from .method_table import plot, render
from .methods import run_method
from .results import Writer, read
from .sweep import sweep
from .tasks import task_module


def main(name: str, task_name: str, description: str, argv: list[str] | None) -> list[dict]:
    """Run benchmark ``name`` on task ``task_name``; returns the rows of this run (values and all)."""
    p = protocol.parser(name, task_name, description)
    p.add_argument("--plot", default=None, help="a folder for a PNG per ratio (score against steps)")
    a = protocol.parse(p, argv, task_name)
    return run(name, task_name, a)


def run(name: str, task_name: str, a: argparse.Namespace) -> list[dict]:
    """Run benchmark ``name`` with the parsed flags ``a``."""
    cli.set_threads(a.threads)
    methods = list(a.methods)
    if any(m in tp_adapter.METHODS for m in methods) and not tp_adapter.installed():
        methods = [m for m in methods if m not in tp_adapter.METHODS]
        print("# tp_* skipped: torch_pruning is not installed (pip install torch-pruning)", flush=True)
    task = task_module(task_name).build(a)
    writer = Writer(cli.output_path(a, name), name, a, append=a.append, device=getattr(a, "device", None))
    print(f"# {name}: {task.name}, methods {methods}, ratios {a.ratios}, {a.seeds} seeds -> {writer.path}", flush=True)

    def runs(dense: nn.Module, seed: int) -> Iterator[dict]:
        for ratio in a.ratios:
            for m in methods:
                yield run_method(task, m, dense, ratio, a, seed)[0]

    sweep(task, a, writer, runs)
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    if a.plot:
        Path(a.plot).mkdir(parents=True, exist_ok=True)
        for ratio in a.ratios:
            plot(rows, ratio, Path(a.plot) / f"{name}-{ratio:g}.png")
    return rows
