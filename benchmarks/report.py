"""The docs' benchmark tables, regenerated from the committed results.

A generated table sits in a markdown file between two marker comments, with hand-written prose
around it::

    <!-- table: trace_slim -->
    ...generated...
    <!-- end table -->

``python -m benchmarks.report`` rewrites every such block from the results file named in
:data:`TABLES`; ``--check`` changes nothing and exits with status 1 when a block differs from what
the results give (or names no known table, or a table appears in no document), so a test can
hold the docs to the results.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from . import (
    align_study,
    inference_speed,
    latency_batch,
    latency_budget,
    levers,
    method_table,
    step_overhead,
    trace_cost,
    trace_slim,
    zoo,
)
from .results import REPO, RESULTS, read

MARKER = re.compile(r"<!-- table: (?P<name>[\w.-]+) -->\n(?P<body>.*?)<!-- end table -->", re.DOTALL)


@dataclass(frozen=True)
class Table:
    """A generated table: its name in the markers, its results file (under ``benchmarks/results/``), its renderer."""

    name: str
    results: str
    render: Callable[[list[dict]], str]


LEVER_NETS = ("ledsr_val", "ledsr_test", "ledsr8_test", "digits", "digits_mobilenet", "unet", "unet_bilinear")
"""The networks of the high-compression levers (docs/benchmarks/high-compression.md)."""

TABLES = [
    Table("trace_slim", "trace_slim.jsonl", trace_slim.render),
    Table("trace_cost", "trace_cost.jsonl", trace_cost.render),
    Table("step_overhead", "step_overhead.jsonl", step_overhead.render),
    Table("step_overhead_sizes", "step_overhead_sizes.jsonl", step_overhead.render_sizes),
    Table("inference_speed_cpu", "inference_speed_cpu.jsonl", inference_speed.render),
    Table("latency_budget", "latency_budget.jsonl", latency_budget.render),
    Table("latency_batch", "latency_batch.jsonl", latency_batch.render),
    Table("quality", "quality.jsonl", method_table.render),
    Table("quality_torch_pruning", "quality_torch_pruning.jsonl", method_table.render),
    Table("bn_alignment_study", "bn_alignment_study.jsonl", align_study.render),
    Table("bn_classifier", "bn_classifier.jsonl", method_table.render),
    Table("bn_classifier_long", "bn_classifier_long.jsonl", method_table.render),
    Table("bn_classifier_tp_reg", "bn_classifier_tp_reg.jsonl", method_table.render),
    Table("bn_denoiser", "bn_denoiser.jsonl", method_table.render),
    Table("bn_denoiser_bilinear", "bn_denoiser_bilinear.jsonl", method_table.render),
    Table("bn_denoiser_long", "bn_denoiser_long.jsonl", method_table.render),
    Table("zoo", "zoo.jsonl", zoo.render),
    Table("zoo_sample", "zoo_sample.jsonl", zoo.render_sample),
    *(Table(f"levers_{net}", f"levers_{net}.jsonl", levers.render) for net in LEVER_NETS),
]


def documents(repo: Path = REPO) -> list[Path]:
    """The markdown files that may hold tables: the README and everything under ``docs/``."""
    return [repo / "README.md", *sorted((repo / "docs").rglob("*.md"))]


def generate(table: Table, results: Path = RESULTS) -> str:
    """The block between ``table``'s markers, from its results file."""
    return f"\n{table.render(read(results / table.results)).rstrip()}\n\n"


def rewrite(text: str, tables: dict[str, Table], results: Path = RESULTS) -> tuple[str, list[str]]:
    """``text`` with every table block regenerated, and the names of the blocks it holds.

    Raises:
        KeyError: A marker names a table that :data:`TABLES` does not have.
    """
    names: list[str] = []

    def block(m: re.Match) -> str:
        name = m.group("name")
        if name not in tables:
            raise KeyError(f"<!-- table: {name} --> names no table of benchmarks.report (known: {', '.join(tables)})")
        names.append(name)
        return f"<!-- table: {name} -->\n{generate(tables[name], results)}<!-- end table -->"

    return MARKER.sub(block, text), names


def run(docs: Iterable[Path], *, check: bool, tables: Iterable[Table] = TABLES, results: Path = RESULTS) -> int:
    """Regenerate (or with ``check`` compare) the tables of ``docs``; the exit status: 0 when all is well."""
    known = {t.name: t for t in tables}
    status, seen = 0, set()
    for path in docs:
        text = path.read_text(encoding="utf-8")
        try:
            new, names = rewrite(text, known, results)
        except KeyError as e:
            print(f"{path}: {e.args[0]}", file=sys.stderr)
            status = 1
            continue
        seen.update(names)
        if new == text:
            continue
        if check:
            diff = difflib.unified_diff(text.splitlines(), new.splitlines(), str(path), "regenerated", lineterm="")
            print("\n".join(diff), file=sys.stderr)
            status = 1
        else:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote the tables of {path}")
    for name in known.keys() - seen:
        print(f"table {name} appears in no document", file=sys.stderr)
        status = 1
    if check and status:
        print("the docs' tables differ from the results: run python -m benchmarks.report", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Regenerate the docs' tables, or with ``--check`` report where they differ from the results."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table differs")
    a = p.parse_args(argv)
    return run(documents(), check=a.check)


if __name__ == "__main__":
    sys.exit(main())
