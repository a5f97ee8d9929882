"""What tracing and the Pruner's set-up cost now against a base revision of ``assl``.

For each model of :mod:`benchmarks.trace_slim`, times ``assl.trace(model, x)`` and the
construction of ``assl.Pruner(model, x, ratio=0.5)`` (its set-up: the trace, the choice of what
to remove, the checks) with the ``assl`` of this checkout ("after") and with the ``assl`` of
``--base`` ("before", default 9370591, the commit before the tracer learned to trace through
layers that override ``forward``, to follow per-channel tensors computed from parameters and
channel counts used as numbers, and to measure liveness at readers).

The base's ``assl`` is extracted (``git archive``) into a temporary folder, removed afterwards.
Each round starts one fresh worker process per version, with that version's ``assl`` first on
its path and the model builders of this checkout (they import nothing from ``assl``); for every
model, the two workers then measure in a new random order. A worker times each call with
``time.perf_counter`` (the benchmarks' shared timer is ``assl``'s own, which differs between the
versions): a warm-up call, then ``--calls`` timed calls, each Pruner on a fresh copy of the model
(made untimed), one torch thread. A round's sample is the median of its calls; a row holds the
median over rounds of each version and after / before.

    python -m benchmarks.trace_cost --rounds 7
    python -m benchmarks.trace_cost --smoke     # seconds, against HEAD (any clone has it): the test suite
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import torch

from . import cli
from .results import REPO, Writer, read
from .tables import markdown, provenance
from .trace_slim import MODELS, SMOKE_MODELS

NAME = "trace_cost"
BASE = "9370591"
"""The default "before": main just before the tracing work whose cost this benchmark measures."""
LIMIT = 1.2
"""The slowdown allowed: after / before above this is marked in the table."""
VERSIONS = ("before", "after")


class GitError(SystemExit):
    """The base revision could not be extracted: git is missing, or the revision is not in this clone."""


def _git(*args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, check=False, timeout=120)
    except FileNotFoundError:
        raise GitError(
            "benchmarks.trace_cost needs git (to extract the base revision's assl): git is not on PATH"
        ) from None


def resolve(rev: str) -> str:
    """The full commit of ``rev`` in this clone, or :class:`GitError` with a message saying what is missing."""
    done = _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    if done.returncode:
        why = done.stderr.decode(errors="replace").strip()
        raise GitError(
            f"revision {rev!r} is not in the git clone at {REPO}" + (f" ({why})" if why else "") + ": a shallow "
            "clone may lack it (git fetch --unshallow), or give another with --base"
        )
    return done.stdout.decode().strip()


@contextlib.contextmanager
def checkout(sha: str) -> Iterator[Path]:
    """A temporary folder holding ``assl/`` as commit ``sha`` has it; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="assl-base-"))
    try:
        done = _git("archive", "--format=tar", sha, "assl")
        if done.returncode:
            raise GitError(f"git archive {sha} assl failed: {done.stderr.decode(errors='replace').strip()}")
        with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(root, filter="data")
            else:  # Python without extraction filters; the archive is git's own, of a commit of this clone
                tar.extractall(root)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


_BOOT = (
    "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; from benchmarks.trace_cost import serve; serve(sys.argv[1])"
)


class Worker:
    """A process with the ``assl`` of ``root`` that measures the models it is sent, one at a time."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, str(root), str(REPO)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def measure(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one model to measure; its samples (seconds) and the ``assl`` measured."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker process ended (exit code {self.proc.wait()}) before answering")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"the worker failed on {request['network']}:\n{answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _times(call: Any, prepare: Any, n: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``call(prepare())``, ``prepare`` untimed, after one warm-up."""
    import gc

    out = []
    for i in range(n + 1):
        arg = prepare()
        gc.collect()
        start = time.perf_counter()
        call(arg)
        if i:
            out.append(time.perf_counter() - start)
        del arg
    return out


def _measure(assl: Any, request: dict[str, Any]) -> dict[str, Any]:
    import torch

    from . import networks

    model = networks.build(request["network"], seed=0, **request["kwargs"]).eval()
    x = torch.randn(request["shape"], generator=torch.Generator().manual_seed(0))
    calls = request["calls"]
    return {
        "trace": _times(lambda m: assl.trace(m, x), lambda: model, calls),
        "setup": _times(lambda m: assl.Pruner(m, x, ratio=0.5), lambda: copy.deepcopy(model), calls),
        "assl": str(Path(assl.__file__).resolve().parent),
    }


def serve(root: str) -> None:
    """A worker's loop: read a JSON request a line from stdin, answer a JSON line on stdout.

    ``root`` holds the ``assl`` to measure, already first on ``sys.path``. Anything else written
    to stdout (by the library, say) goes to stderr, so that stdout carries only the answers.
    """
    import logging
    import warnings

    import torch

    answers: IO[str] = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # the Pruner's notes on what it cannot prune are the same each call
    logging.disable(logging.WARNING)
    import assl

    if not Path(assl.__file__).resolve().is_relative_to(Path(root).resolve()):
        raise SystemExit(f"the worker imported assl from {assl.__file__}, not from {root}")
    for line in sys.stdin:
        try:
            answer = _measure(assl, json.loads(line))
        except Exception:  # the parent reports it and stops
            answer = {"error": traceback.format_exc()}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


def measure(roots: dict[str, Path], models: Sequence[tuple[str, str, dict[str, Any], tuple[int, ...]]], a: Any) -> dict:
    """Per model, every round's median of ``a.calls`` calls, seconds: ``{label: {version: {"trace": [...], ...}}}``."""
    rng = random.Random(a.seed)
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        label: {v: {"trace": [], "setup": []} for v in VERSIONS} for label, *_ in models
    }
    for r in range(a.rounds):
        workers = {v: Worker(roots[v]) for v in VERSIONS}
        try:
            for label, name, kwargs, shape in models:
                order = list(VERSIONS)
                rng.shuffle(order)
                for v in order:
                    request = {"network": name, "kwargs": kwargs, "shape": list(shape), "calls": a.calls}
                    answer = workers[v].measure(request)
                    for k in ("trace", "setup"):
                        samples[label][v][k].append(statistics.median(answer[k]))
                print(
                    f"round {r + 1}/{a.rounds} {label}: trace "
                    + ", ".join(f"{v} {samples[label][v]['trace'][-1] * 1e3:.1f} ms" for v in VERSIONS),
                    flush=True,
                )
        finally:
            for w in workers.values():
                w.close()
    return samples


def row(label: str, name: str, shape: tuple[int, ...], samples: dict, base: str) -> dict[str, Any]:
    """The results row of one model: medians (ms) before and after, after / before, every round's sample (ms)."""
    values: dict[str, Any] = {"model": label, "network": name, "input": list(shape), "base": base}
    for k in ("trace", "setup"):
        for v in VERSIONS:
            values[f"{k}_ms_{v}"] = statistics.median(samples[v][k]) * 1e3
        values[f"{k}_ratio"] = values[f"{k}_ms_after"] / values[f"{k}_ms_before"]
    values["samples_ms"] = {k: {v: [s * 1e3 for s in samples[v][k]] for v in VERSIONS} for k in ("trace", "setup")}
    return values


def _n(n: int, what: str) -> str:
    return f"{n} {what}{'s' if n != 1 else ''}"


def _ratio(r: float) -> str:
    return f"**{r:.2f}**" if r > LIMIT else f"{r:.2f}"


def _cells(v: dict[str, Any], k: str) -> list[str]:
    return [f"{v[f'{k}_ms_before']:.1f}", f"{v[f'{k}_ms_after']:.1f}", _ratio(v[f"{k}_ratio"])]


def render(rows: list[dict]) -> str:
    """The docs' table of a results file of this benchmark."""
    vals = [r["values"] for r in rows]
    header = ["model", "trace ms before", "after", "after / before", "set-up ms before", "after", "after / before"]
    body = [[v["model"], *_cells(v, "trace"), *_cells(v, "setup")] for v in vals]
    settings = rows[0]["settings"]
    git = rows[0]["env"].get("git")
    after = f"{git['sha'][:7]}{' with uncommitted changes' if git['dirty'] else ''}" if git else "this checkout"
    return "\n".join(
        [
            provenance(rows)
            + f" Before: {vals[0]['base'][:7]}; after: {after}. Medians over {_n(settings['rounds'], 'round')} of the"
            f" median of {_n(settings['calls'], 'call')}, in fresh processes, the versions in random order per model;"
            f" ratios above {LIMIT:.2f} in bold.",
            "",
            markdown(header, body),
        ]
    )


def main(argv: list[str] | None = None) -> list[dict]:
    """Measure every model before and after; append the rows to ``--out`` and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default=BASE, help=f"the revision to compare against (default {BASE}; HEAD with --smoke)")
    p.add_argument("--rounds", type=int, default=7, help="rounds, each with a fresh process per version")
    p.add_argument("--calls", type=int, default=3, help="timed calls per model, version and round (after a warm-up)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order of the versions")
    p.add_argument("--smoke", action="store_true", help="one tiny model, one round, one call, against HEAD")
    cli.add_output(p, NAME)
    a = cli.parse(p, argv, smoke={"base": "HEAD", "rounds": 1, "calls": 1})
    models = SMOKE_MODELS if a.smoke else MODELS
    base = resolve(a.base)
    with checkout(base) as old:
        samples = measure({"before": old, "after": REPO}, models, a)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what the workers ran with, as the rows record it
    try:
        writer = Writer(cli.output_path(a, NAME), NAME, a, append=a.append, argv=argv)
        for label, name, _, shape in models:
            writer.write(row(label, name, shape, samples[label], base))
    finally:
        torch.set_num_threads(threads)
    rows = [r for r in read(writer.path) if r["run"] == writer.run]
    print(render(rows))
    return rows


if __name__ == "__main__":
    main()
