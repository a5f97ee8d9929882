"""Figures for the docs: matplotlib without a display."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def figure(path: str | Path, size: tuple[float, float] = (7, 4)) -> Iterator[Any]:
    """Axes of a ``size`` (inches) figure, saved as a PNG to ``path`` at the end of the block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
