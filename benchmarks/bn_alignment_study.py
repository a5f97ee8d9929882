"""Does the alignment phase align on a BatchNorm ResNet, and does aligning help? Controls on the digits classifier.

The controls of ``alignment_study.py`` (LEDSR), on ``bn_classifier.py``'s network, data, flags and
protocol (``_bn_bench.py``): one dense model per seed, and for every ratio every setting of
``--settings`` starts from a copy of it, sees the same batches and gets the same ``prune_iters +
finetune_iters`` optimizer steps. A setting is ``noalign`` (``Schedule.for_steps(prune_iters,
align=False)``: no alignment phase) or ``LOSS:WEIGHT`` (``Schedule.for_steps(prune_iters,
align_loss=LOSS, align_weight=WEIGHT)``); weight 0 runs the same alignment steps as plain
training, the control the aligned settings are measured against. The measurements draw no random
numbers, so the ``noalign`` and ``consensus:1`` rows equal ``bn_classifier.py``'s ``assl_noalign``
and ``assl`` with the same flags.

The trace of the classifier has two aligned groups (several layers whose outputs are added):
``stem.0``, the 16-channel stream (carried by the BatchNorms ``stem.1``, ``layer1.0.bn2``,
``layer1.1.bn2``), and ``layer2.0.downsample.0``, the 32-channel stream (``layer2.0.downsample.1``,
``layer2.0.bn2``, ``layer2.1.bn2``); the four single-layer groups are not aligned and are left out.
Measured per run, as the mean over the aligned groups (the JSON rows keep each group's value):

* ``agreement``: ``Pruner.alignment_agreement()``, the mean over pairs of a group's carriers of
  the overlap of the channels each would keep on its own (top ``n - k`` of its ``|gamma|``), when
  the Pruner is built and when it chooses the channels, at the end of the alignment phase (at once
  for ``noalign``); chance is ``(n - k) / n``;
* ``removed share``: of each carrier's ``sum |gamma|``, the share on the channels the group removes,
  when they are chosen (chance ``k / n``);
* ``g drift``: mean ``|change of |gamma||`` over the alignment phase, against the mean ``|gamma|``;
* ``spread``: the carriers' ``sd / mean`` of ``|gamma|`` over the group's channels at the start
  (how different the channels look to each layer: small, and any ranking is cheap to change);
* accuracy on the held-out split of ``bn_classifier.py`` (its 540 test images: the benchmark has no
  separate validation split) at the end of the schedule (chosen channels still there, eval mode),
  right after slimming, and after fine-tuning.

Then each setting minus the weight-0 control, per seed.

Needs scikit-learn (``pip install -e ".[bench]"``).

    python benchmarks/bn_alignment_study.py --out runs/bn_alignment_study  # 2 ratios x 3 seeds: ~2 min, one thread
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bn_bench as bench
import bn_classifier
from _alignment import (
    CONTROL,
    DEFAULT_SETTINGS,
    agreement_at_choice,
    by_setting,
    paired,
    parse_setting,
    removed_share,
    setting_arg,
)
from _sr_bench import mean_sd

import assl

STEM = "bn_alignment_study"


def schedule_for(setting: str, steps: int) -> assl.Schedule:
    """The schedule of ``setting`` (see :func:`_alignment.parse_setting`) in ``steps`` optimizer steps."""
    parsed = parse_setting(setting)
    if parsed is None:
        return assl.Schedule.for_steps(steps, align=False)
    loss, weight = parsed
    return assl.Schedule.for_steps(steps, align_loss=loss, align_weight=weight)


def _mean(values: dict[str, float]) -> float:
    return statistics.mean(values.values())


def observer(found: dict) -> Callable[[assl.Pruner], Callable[[], None]]:
    """For ``run_method(observe=...)``: put the aligned groups' ``|gamma|`` and agreement into ``found``
    when the Pruner is built (``"start"``) and just before it chooses their channels (``"choice"``)."""

    def read(pruner: assl.Pruner) -> dict:
        return {"agreement": pruner.alignment_agreement(), "rows": {g: pruner.unit_scales(g) for g in pruner.aligned}}

    def start(pruner: assl.Pruner) -> Callable[[], None]:
        found["pruner"] = pruner
        found["start"] = read(pruner)
        choice = pruner.schedule.align_iters  # the scales after this many steps choose the channels

        def before_step() -> None:
            if pruner.step_count == choice:
                found["choice"] = read(pruner)

        return before_step

    return start


def run_setting(
    task: bench.Task, setting: str, dense: nn.Module, ratio: float, a: argparse.Namespace, seed: int
) -> dict:
    """One ASSL run of ``setting`` on a copy of ``dense``, with the measurements of the module docstring."""
    parsed = parse_setting(setting)
    found: dict = {}
    method = "assl" if parsed is not None else "assl_noalign"
    schedule = schedule_for(setting, a.prune_iters)
    r = bench.run_method(task, method, dense, ratio, a, seed, schedule=schedule, observe=observer(found))
    pruner: assl.Pruner = found["pruner"]
    if not pruner.aligned:
        raise SystemExit("no group of several layers loses channels at this ratio: nothing to align")
    chosen = pruner.chosen()
    removed = pruner.removed
    units = {g: pruner.graph.group(g).size for g in pruner.aligned}
    row = {"setting": setting, "seed": seed, "ratio": ratio, "loss": parsed[0] if parsed else None}
    row.update(weight=parsed[1] if parsed else None, align_iters=schedule.align_iters if parsed else 0)
    row["groups"] = {g: {"units": units[g], "removed": removed[g], "carriers": pruner.carriers(g)} for g in units}
    row["chance_groups"] = {g: (units[g] - removed[g]) / units[g] for g in units}
    row["chance"] = _mean(row["chance_groups"])
    start, at_choice = found["start"]["rows"], found["choice"]["rows"]
    row["spread_groups"] = {g: float((start[g].std(1) / start[g].mean(1)).mean()) for g in units}
    row["agreement_start_groups"] = found["start"]["agreement"]
    row["agreement_start"] = _mean(row["agreement_start_groups"])
    if parsed is not None:
        row["agreement_end_groups"] = found["choice"]["agreement"]
        row["agreement_end"] = _mean(row["agreement_end_groups"])
        drift = {g: float((at_choice[g] - start[g]).abs().mean() / start[g].mean()) for g in units}
        row["g_drift_groups"], row["g_drift"] = drift, _mean(drift)
    row["removed_share_groups"] = {g: removed_share(at_choice[g], chosen[g]) for g in units}
    row["removed_share"] = _mean(row["removed_share_groups"])
    row.update(acc_before_slim=r["before_slim"], acc_slim=r["before"], acc=r["after"])
    row.update({k: r[k] for k in ("liveness", "slim_change", "params", "steps", "wall_s")})
    return row


def _group_names(rows: list[dict]) -> str:
    """``stem.0`` (16 units, carriers ..., spread ...), ... from the rows of the first ratio."""
    first = [r for r in rows if r["ratio"] == rows[0]["ratio"] and r["setting"] == rows[0]["setting"]]
    return "; ".join(
        f"`{g}` ({v['units']} units; carriers {', '.join(c for c, _ in v['carriers'])}; |gamma| sd / mean at the "
        f"start {mean_sd([r['spread_groups'][g] for r in first], 3)})"
        for g, v in rows[0]["groups"].items()
    )


def summary(task: bench.Task, rows: list[dict], dense_rows: list[dict], notes: list[str]) -> str:
    """Per ratio the table (mean ± sd over seeds), per group the agreement, the paired differences, notes."""
    d = task.digits
    out = [
        f"aligned groups (agreement and removed share: mean over them): {_group_names(rows)}",
        f"dense: {task.metric} {mean_sd([r['after'] for r in dense_rows], d)}, {dense_rows[0]['params']:,} params",
    ]
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        at = [r for r in rows if r["ratio"] == ratio]
        out += [
            "",
            f"Ratio {ratio:g} (chance agreement {at[0]['chance']:.3f}, chance removed share {1 - at[0]['chance']:.3f},"
            f" {at[0]['params']:,} params):",
            "",
            "| setting | align steps | agreement start -> end | chance | removed share | g drift | "
            f"{task.metric} before slim | after slim | after fine-tune | seeds |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for setting, rs, col, agree in by_setting(at):
            out.append(
                f"| {setting} | {rs[0]['align_iters']} | {agree} | {rs[0]['chance']:.3f} | {col('removed_share', 3)} | "
                f"{col('g_drift', 3)} | {col('acc_before_slim', d)} | {col('acc_slim', d)} | {col('acc', d)} | "
                f"{len(rs)} |"
            )
    groups = list(rows[0]["groups"])
    out += [
        "",
        "Agreement per aligned group, start -> when the channels are chosen:",
        "",
        "| ratio | setting | " + " | ".join(groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for ratio in dict.fromkeys(r["ratio"] for r in rows):
        at = [r for r in rows if r["ratio"] == ratio]
        for setting in dict.fromkeys(r["setting"] for r in at):
            rs = [r for r in at if r["setting"] == setting]
            cells = []
            for g in groups:
                start = mean_sd([r["agreement_start_groups"][g] for r in rs], 3)
                end = [r["agreement_end_groups"][g] for r in rs if "agreement_end_groups" in r]
                cells.append(start + (f" -> {mean_sd(end, 3)}" if end else ""))
            out.append(f"| {ratio:g} | {setting} | " + " | ".join(cells) + " |")
    columns = [
        ("agreement", agreement_at_choice, 3),
        ("before slim", lambda r: r["acc_before_slim"], d),
        ("after slim", lambda r: r["acc_slim"], d),
        ("after fine-tune", lambda r: r["acc"], d),
    ]
    diffs = paired(rows, columns)
    if diffs:
        out += [
            "",
            f"Per seed ({', '.join(str(s) for s in dict.fromkeys(r['seed'] for r in rows))}), each setting minus the "
            f"weight-0 control `{CONTROL}` (agreement when the channels are chosen; {task.metric}):",
            "",
            *diffs,
        ]
    out += ["", *[f"* {n}" for n in notes]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict]:
    """Run every setting for every ratio and seed; print the table and write it and the rows under ``--out``."""
    p = bench.build_parser(__doc__, {**bn_classifier.DEFAULTS, "eval_every": 0}, methods=False)
    p.add_argument(
        "--settings",
        nargs="+",
        type=setting_arg,
        default=DEFAULT_SETTINGS,
        help="noalign or LOSS:WEIGHT (LOSS consensus or authors; weight 0: the plain-training control)",
    )
    a = bench.parse_args(p, argv, bn_classifier.QUICK, bn_classifier.SMOKE)
    if a.threads:
        torch.set_num_threads(a.threads)
    task = bn_classifier.task(a)
    print(f"# BN alignment study, {bench.describe(task, a)}, settings {a.settings}", flush=True)
    t0 = time.time()

    def runs(dense: nn.Module, ratio: float, seed: int) -> Iterator[dict]:
        return (run_setting(task, s, dense, ratio, a, seed) for s in a.settings)

    rows, dense_rows, notes = bench.sweep(task, a, runs)
    notes.append(f"total wall time {time.time() - t0:.0f} s")
    bench.emit(a, STEM, summary(task, rows, dense_rows, notes), rows, dense_rows)
    return rows


if __name__ == "__main__":
    main()
