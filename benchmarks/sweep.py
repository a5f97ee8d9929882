"""The seed sweep of the quality benchmarks: one dense model per seed, then every run on it, rows saved as they come."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .methods import size
from .results import Writer
from .tasks import Task
from .training import cosine, train


def _cache_file(task: Task, a: argparse.Namespace, seed: int) -> Path | None:
    """The ``--dense_cache`` file of the dense model of ``seed``: keyed by every setting it depends on."""
    if not a.dense_cache:
        return None
    text = json.dumps([task.dense_key, seed, torch.__version__, a.lr, a.lr_schedule, a.dense_iters])
    return Path(a.dense_cache) / f"dense-{hashlib.sha256(text.encode()).hexdigest()[:16]}.pt"


def task_info(task: Task) -> dict[str, Any]:
    """What a table needs to know of the task: its name, metric, decimals, MACs unit, references."""
    return {
        "name": task.name,
        "metric": task.metric,
        "metric_label": task.metric_label,
        "digits": task.digits,
        "macs_unit": task.macs_unit,
        "references": task.references,
        "packages": list(task.packages),
    }


def dense_model(task: Task, a: argparse.Namespace, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """The dense model of ``seed`` (trained, or loaded from ``--dense_cache``) and its row."""
    torch.manual_seed(seed)
    dense = task.build()
    t0 = time.time()
    cached = _cache_file(task, a, seed)
    if cached is not None and cached.is_file():
        saved = torch.load(cached, map_location=next(dense.parameters()).device, weights_only=True)
        dense.load_state_dict(saved["state"])
        wall = saved["wall_s"]
    else:
        lr = a.lr if a.lr_schedule == "constant" else cosine(a.lr, 0, a.dense_iters)
        train(dense, task.batches(seed), a.dense_iters, task.loss, lr)
        wall = time.time() - t0
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"state": dense.state_dict(), "wall_s": wall}, cached)
    scores = task.score(dense)
    params, macs = size(task, dense)
    row = {"method": "dense", "ratio": 0.0, "seed": seed, "score": scores[task.metric], "metrics": scores}
    row.update(params=params, macs=macs, wall_s=wall, task=task_info(task))
    return dense, row


def sweep(
    task: Task, a: argparse.Namespace, writer: Writer, runs: Callable[[nn.Module, int], Iterable[dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """For each of ``--seeds`` seeds from ``--first_seed``, the dense model, then the rows ``runs(dense, seed)``
    yields.

    Every row is appended to ``writer`` and printed (without its curve) as it comes, so a run cut
    short keeps what it measured. Returns (rows, dense rows): their values.
    """
    rows, dense_rows = [], []
    for seed in range(a.first_seed, a.first_seed + a.seeds):
        dense, row = dense_model(task, a, seed)
        dense_rows.append(row)
        writer.write(row, seed)
        print(json.dumps({k: v for k, v in row.items() if k != "task"}), flush=True)
        for r in runs(dense, seed):
            rows.append(r)
            writer.write(r, seed)
            print(json.dumps({k: v for k, v in r.items() if k != "curve"}, default=str), flush=True)
    return rows, dense_rows
