"""What every benchmark's command line shares: presets, threads and where the results go."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .results import default_path


def parse(
    parser: argparse.ArgumentParser,
    argv: list[str] | None,
    *,
    quick: Mapping[str, Any] | None = None,
    smoke: Mapping[str, Any] | None = None,
) -> argparse.Namespace:
    """Parse ``argv`` with ``--quick`` / ``--smoke`` (when the parser has them) setting defaults.

    A preset changes defaults only: flags given explicitly still win.
    """
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "quick", False) and quick:
        parser.set_defaults(**quick)
    if getattr(pre, "smoke", False) and smoke:
        parser.set_defaults(**smoke)
    return parser.parse_args(argv)


def add_output(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out`` (the results file) and ``--append``."""
    parser.add_argument(
        "--out",
        default=None,
        help=f"results file (JSON Lines; default {default_path(name).relative_to(default_path(name).parents[2])}, "
        "or under results/smoke/ with --smoke)",
    )
    parser.add_argument(
        "--append", action="store_true", help="add to the rows already in --out (runs that make one table)"
    )


def output_path(args: argparse.Namespace, name: str) -> Path:
    """``--out``, or the default results file of benchmark ``name`` (the smoke folder for ``--smoke``)."""
    return Path(args.out) if args.out else default_path(name, smoke=getattr(args, "smoke", False))


def set_threads(threads: int | None) -> None:
    """``torch.set_num_threads(threads)``; 0 or None leaves torch's default."""
    if threads:
        torch.set_num_threads(threads)
