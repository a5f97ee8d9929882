"""Benchmark results as JSON Lines: one measurement per line, with what it was measured on.

Every row records the benchmark, the run it belongs to, the date, the environment (torch and
Python versions, platform, CPU, GPU, threads, load, the optional packages in play, the git state
of the checkout), the benchmark's settings and command line, the seed, and the measured values::

    {"schema": 1, "benchmark": "trace_slim", "run": "...", "date": "2026-12-06",
     "env": {...}, "settings": {...}, "argv": [...], "seed": null, "values": {...}}

:class:`Writer` appends rows as they are measured, so a run that is cut short keeps what it
measured; :func:`read` loads them back. The committed files under ``benchmarks/results/`` are
what ``python -m benchmarks.report`` turns into the docs' tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

SCHEMA = 1
RESULTS = Path(__file__).resolve().parent / "results"
"""Where the committed results live; smoke runs go to its ``smoke/`` folder (not committed)."""
REPO = RESULTS.parent.parent
PACKAGES = ("numpy", "torch-pruning", "scikit-learn", "scikit-image", "timm", "torchvision")
"""Versions recorded when installed: the optional packages a benchmark may use."""


def default_path(name: str, smoke: bool = False) -> Path:
    """``benchmarks/results/NAME.jsonl``, or under ``smoke/`` for a smoke run."""
    return RESULTS / "smoke" / f"{name}.jsonl" if smoke else RESULTS / f"{name}.jsonl"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(repo: Path = REPO) -> dict[str, Any] | None:
    """The checkout's commit and whether it has uncommitted changes; None outside a git checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha, "dirty": bool(status.strip())}


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def environment(device: torch.device | str | None = None) -> dict[str, Any]:
    """What a measurement ran on: versions, platform, CPU, GPU (when ``device`` is one), threads, load."""
    device = torch.device(device) if device is not None else None
    gpu = torch.cuda.get_device_name(device) if device is not None and device.type == "cuda" else None
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpus": os.cpu_count(),
        "cpus_available": available,
        "threads": torch.get_num_threads(),
        "device": str(device) if device is not None else "cpu",
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "loadavg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "packages": _versions(),
    }


def _plain(value: Any) -> Any:
    """``value`` as JSON can hold it: paths and other objects become strings, tuples lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _repo_relative(value: Any) -> Any:
    """``value`` with every absolute path inside the repository written relative to its root."""
    if isinstance(value, dict):
        return {k: _repo_relative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_repo_relative(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value).resolve()
        if path.is_relative_to(REPO):
            return path.relative_to(REPO).as_posix() or "."
    return value


class Writer:
    """Appends the rows of one run of a benchmark to a JSON Lines file.

    Args:
        path: The file; its folder is created.
        benchmark: The benchmark's name, e.g. ``"trace_slim"``.
        settings: The run's settings (its parsed flags); stored with every row.
        append: Keep the rows already in the file (several runs that make one table), instead of
            starting it afresh.
        device: The device measured on (its GPU name is recorded).
        argv: The command line's arguments (default ``sys.argv[1:]``).
    """

    def __init__(
        self,
        path: str | Path,
        benchmark: str,
        settings: argparse.Namespace | Mapping[str, Any],
        *,
        append: bool = False,
        device: torch.device | str | None = None,
        argv: list[str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append:
            self.path.write_text("")
        self.benchmark = benchmark
        plain = _plain(vars(settings) if isinstance(settings, argparse.Namespace) else dict(settings))
        self.settings = _repo_relative(plain)
        self.argv = _repo_relative(list(sys.argv[1:] if argv is None else argv))
        self.device = device
        self.run = f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        self.git = git_state()

    def write(self, values: Mapping[str, Any], seed: int | None = None) -> dict[str, Any]:
        """Append one row of measured ``values`` (of ``seed``, when the run has seeds); return it."""
        row = {
            "schema": SCHEMA,
            "benchmark": self.benchmark,
            "run": self.run,
            "date": dt.date.today().isoformat(),
            "env": {**environment(self.device), "git": self.git},
            "settings": self.settings,
            "argv": self.argv,
            "seed": seed,
            "values": _plain(values),
        }
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")
        return row


def read(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a results file, in the order they were written.

    Raises:
        ValueError: A line is not a row of this format (names the file and line).
    """
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or row.get("schema") != SCHEMA or "values" not in row:
            raise ValueError(f"{path}:{number}: not a benchmark result row of schema {SCHEMA}")
        rows.append(row)
    return rows


def values(rows: list[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """The ``values`` of the rows whose values hold every ``key=value`` of ``match``."""
    return [r["values"] for r in rows if all(r["values"].get(k) == v for k, v in match.items())]
