"""Summaries of repeated measurements: mean ± sd over seeds, interquartile ranges, paired differences."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def spread(values: Sequence[float]) -> float:
    """The sample standard deviation, 0 for a single value."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def mean_sd(values: Iterable[float], digits: int) -> str:
    """``mean ± sd`` at ``digits`` decimals, ``-`` when there is nothing."""
    values = list(values)
    if not values:
        return "-"
    return f"{statistics.mean(values):.{digits}f} ± {spread(values):.{digits}f}"


def iqr(values: Sequence[float]) -> float:
    """The interquartile range (75th minus 25th percentile, numpy's linear interpolation)."""
    return float(np.percentile(values, 75) - np.percentile(values, 25))


def paired(mine: Mapping[int, float], base: Mapping[int, float]) -> list[float]:
    """``mine[s] - base[s]`` for every seed ``s`` both have, in the order of ``mine``."""
    return [mine[s] - base[s] for s in mine if s in base]


def signed(values: Iterable[float], digits: int) -> str:
    """``+0.012, -0.003`` at ``digits`` decimals."""
    return ", ".join(f"{v:+.{digits}f}" for v in values)


def signed_with_mean(values: Sequence[float], digits: int) -> str:
    """``+0.012, -0.003 (mean +0.005)``, or ``-`` when there is nothing."""
    if not values:
        return "-"
    return f"{signed(values, digits)} (mean {statistics.mean(values):+.{digits}f})"
