"""What the two alignment studies share: the settings they compare, the removed share, the paired table.

``alignment_study.py`` (LEDSR) and ``bn_alignment_study.py`` (the BatchNorm ResNet classifier) run
the same settings on the same dense model per seed and compare each against the weight-0 control.
A setting is ``noalign`` (no alignment phase) or ``LOSS:WEIGHT`` (``Schedule(align_loss=LOSS,
align_weight=WEIGHT)``); weight 0 runs the same alignment steps as plain training.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Iterator

import torch
from _sr_bench import mean_sd

from assl.pruning._alignment import ALIGN_LOSSES

DEFAULT_SETTINGS = ["noalign", "consensus:0", "authors:1", "consensus:1", "consensus:10"]
CONTROL = "consensus:0"


def parse_setting(text: str) -> tuple[str, float] | None:
    """``"noalign"`` -> None, ``"LOSS:WEIGHT"`` -> (loss, weight)."""
    if text == "noalign":
        return None
    loss, _, weight = text.partition(":")
    if loss not in ALIGN_LOSSES or not weight:
        raise argparse.ArgumentTypeError(f"a setting is noalign or LOSS:WEIGHT, LOSS in {ALIGN_LOSSES}")
    return loss, float(weight)


def setting_arg(text: str) -> str:
    """An argparse ``type`` for settings: ``text`` once :func:`parse_setting` accepts it."""
    parse_setting(text)
    return text


def removed_share(rows: torch.Tensor, removed: list[int]) -> float:
    """Mean over layers of the share of ``sum |g|`` that sits on the ``removed`` units."""
    idx = torch.as_tensor(removed, dtype=torch.long)
    return float((rows[:, idx].sum(1) / rows.sum(1)).mean())


def agreement_at_choice(row: dict) -> float:
    """A row's agreement when its channels were chosen: at the end of the alignment phase, or at the
    start for ``noalign`` (no alignment phase: it chooses at once)."""
    return row.get("agreement_end", row["agreement_start"])


def paired(
    rows: list[dict],
    columns: list[tuple[str, Callable[[dict], float], int]],
    control: str = CONTROL,
) -> list[str]:
    """Each setting minus ``control`` per seed (same dense model, same batches), per ratio.

    ``columns``: ``(header, value of a row, decimals)``. A cell lists the per-seed differences in
    seed order, then their mean. Empty when the control was not run.
    """
    if not any(r["setting"] == control for r in rows):
        return []
    heads = " | ".join(f"{h} - control" for h, _, _ in columns)
    out = [f"| ratio | setting | {heads} |", "|---|---|" + "---|" * len(columns)]
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        at = [r for r in rows if r["ratio"] == ratio]
        base = {r["seed"]: r for r in at if r["setting"] == control}
        for setting in dict.fromkeys(r["setting"] for r in at):
            if setting == control:
                continue
            mine = {r["seed"]: r for r in at if r["setting"] == setting}
            seeds = [s for s in mine if s in base]
            cells = []
            for _, value, digits in columns:
                diffs = [value(mine[s]) - value(base[s]) for s in seeds]
                per_seed = ", ".join(f"{d:+.{digits}f}" for d in diffs)
                cells.append(f"{per_seed} (mean {statistics.mean(diffs):+.{digits}f})" if diffs else "-")
            out.append(f"| {ratio:g} | {setting} | " + " | ".join(cells) + " |")
    return out


Column = Callable[[str, int], str]
"""``col(key, digits)``: the mean ± sd over a setting's runs of ``row[key]``."""


def by_setting(rows: list[dict]) -> Iterator[tuple[str, list[dict], Column, str]]:
    """Each setting in first-seen order: its rows, a column formatter, and its agreement cell
    (``start -> end``, or the start alone for ``noalign``)."""
    for setting in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == setting]

        def col(key: str, digits: int, rs: list[dict] = rs) -> str:
            return mean_sd([r[key] for r in rs if key in r], digits)

        agree = col("agreement_start", 3) + (" -> " + col("agreement_end", 3) if "agreement_end" in rs[0] else "")
        yield setting, rs, col, agree
