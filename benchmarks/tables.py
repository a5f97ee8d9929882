"""Markdown for the docs: tables, and the line that says what a table was measured on."""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from typing import Any

HIDDEN_FLAGS = ("--out", "--append", "--plot", "--dense_cache")
"""Flags left out of the command a table quotes: where files went (or were reused from), not what was measured."""


def markdown(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A markdown table of ``rows`` under ``header`` (cells as ``str`` gives them)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def failures(errors: dict[int, str]) -> str:
    """What a method that failed on some seeds of a table row says there: `` (failed on seed 1, 2:
    <the lowest seed's error>)`` (the others name the same cause, with other numbers); ``""`` when none."""
    if not errors:
        return ""
    return f" (failed on seed {', '.join(map(str, sorted(errors)))}: {errors[min(errors)]})"


def command(row: dict[str, Any]) -> str:
    """``python -m benchmarks.NAME FLAGS`` of the run that wrote ``row``, without :data:`HIDDEN_FLAGS`."""
    argv, kept, skip = row.get("argv", []), [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag in HIDDEN_FLAGS:
            skip = "=" not in arg and flag != "--append"
            continue
        kept.append(arg)
    return " ".join(["python", "-m", f"benchmarks.{row['benchmark']}", *map(shlex.quote, kept)])


def _span(values: list[str]) -> str:
    unique = list(dict.fromkeys(values))
    return unique[0] if len(unique) == 1 else f"{unique[0]} to {unique[-1]}"


def provenance(rows: Sequence[dict[str, Any]], packages: Sequence[str] = ()) -> str:
    """One line: the commands, dates, machine, versions, threads and load of the runs that wrote ``rows``.

    ``packages``: optional packages whose versions to name (those the measurement used).
    """
    runs = list(dict.fromkeys(r["run"] for r in rows))
    first = {run: next(r for r in rows if r["run"] == run) for run in runs}
    commands = ", ".join(f"`{c}`" for c in dict.fromkeys(command(first[run]) for run in runs))
    env = rows[0]["env"]
    where = env["gpu"] or env["cpu"]
    threads = _span([str(r["env"]["threads"]) for r in rows])
    loads = [v for r in rows if r["env"].get("loadavg") for v in r["env"]["loadavg"][:1]]
    span = f"{min(loads):.1f}" if loads and f"{min(loads):.1f}" == f"{max(loads):.1f}" else None
    load = f", load average {span or f'{min(loads):.1f}-{max(loads):.1f}'}" if loads else ""
    extra = "".join(f", {name} {v}" for name, v in env.get("packages", {}).items() if name in packages)
    return (
        f"Measured {_span([r['date'] for r in rows])} with {commands}: {where} ({env['cpus_available']} of "
        f"{env['cpus']} CPUs available, {threads} torch thread{'s' if threads != '1' else ''}{load}), "
        f"torch {env['torch']}, Python {env['python']}{extra}."
    )
