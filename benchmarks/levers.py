"""What moves ASSL at high compression: runs of a quality benchmark with different settings, side by side.

A lever is a setting of the steps after the dense model: distillation from the dense model
(``--distill``), a learning rate of the scales' own (``--scale_lr``) or the library's floor under
it (``--min_scale_lr``), the share of steps given to
pruning (``--prune_iters`` / ``--finetune_iters``), the optimizer (``--optimizer``,
``--method_lr``), gradient clipping (``--clip``). Each run of ``benchmarks.quality``,
``bn_classifier`` or ``bn_denoiser`` appends its rows to one results file (``--append``); every run
starts from the same dense models (the dense cache), so runs and seeds are paired. :func:`render`
labels each run by the settings in which it differs from the library's defaults, and compares every
ASSL variant with training the slim network from scratch, per seed (learned widths with
``scratch_learned``, the same widths from scratch, when there is one): with the scratch run of the
same variant when there is one, else with the scratch run under the same levers that change scratch
too (a distilled scratch for every distilled ASSL variant: the comparison stays fair).

    python -m benchmarks.quality --quick --ratios 0.75 --eval_split val --methods assl scratch \\
        --dense_cache runs/dense --out benchmarks/results/levers_ledsr.jsonl
    python -m benchmarks.quality --quick --ratios 0.75 --eval_split val --methods assl scratch \\
        --distill 1 --dense_cache runs/dense --append --out benchmarks/results/levers_ledsr.jsonl
"""

from __future__ import annotations

import statistics
from typing import Any

from .method_table import data_packages
from .stats import mean_sd, paired, signed
from .tables import failures, markdown, provenance

LEVERS: dict[str, Any] = {
    "distill": 0.0,
    "distill_kind": "mse",
    "scale_lr": None,
    "penalty_form": "shrink",
    "prune_iters": None,
    "optimizer": "adam",
    "method_lr": None,
    "lr_schedule": None,
    "clip": 0.0,
    "pace_tol": 0.0,
    "pace_slow": 0.25,
    "grad_guard": 0.0,
    "guard_kept": True,
    "min_scale_lr": "auto",
    "min_width": None,
}
"""The settings that make a variant, with the value that means "the default" (None: the first run's)."""
NOT_ASSL = tuple(k for k in LEVERS if k not in ("guard_kept", "min_scale_lr"))
"""The levers that can make a variant of a method other than ASSL (the guard and the scales' rate
floor are ASSL's alone)."""
ABSENT: dict[str, Any] = {"guard_kept": False}
"""What a run of a :data:`NORMALIZED` benchmark recorded before a lever existed ran with: the
library's behaviour then."""
ABSENT_EVERYWHERE: dict[str, Any] = {"min_scale_lr": None}
"""The same for every benchmark (the scales' rate floor acts on inserted scales too)."""
NORMALIZED = ("bn_classifier", "bn_denoiser")
"""The benchmarks whose networks carry units in normalization layers (the only ones the guard
acts on: elsewhere a run without the setting ran as the default does)."""
SCRATCH_LEVERS = ("distill", "distill_kind", "optimizer", "method_lr", "lr_schedule", "clip")
"""The levers that change the scratch baseline too (its steps are the same whatever the split)."""


def variant(
    settings: dict[str, Any],
    first: dict[str, Any],
    levers: tuple[str, ...] = tuple(LEVERS),
    absent: dict[str, Any] | None = None,
) -> str:
    """A run's label: the ``levers`` it sets away from the defaults (or from the first run, for the
    numbers a task fixes), e.g. ``distill 1, scale_lr 0.03``; ``defaults`` when none. A lever the
    run's settings lack counts as ``absent`` gives it (default: as the default)."""
    parts = []
    for key in levers:
        default = LEVERS[key]
        value = settings.get(key, (absent or {}).get(key, default))
        base = first.get(key) if default is None else default
        if value == base:
            continue
        if key == "pace_slow":
            continue  # said with pace_tol
        if key == "pace_tol":
            parts.append(f"recovery pace (tol {value:g}, slow {settings.get('pace_slow', 0.25):g})")
        elif key == "guard_kept":  # False: unguarded; "weights and biases": the first guard, weights too
            parts.append("kept units unguarded" if value is False else f"kept {value} guarded")
        elif key == "min_scale_lr":
            parts.append("no scale-rate floor" if value is None else f"min_scale_lr {value:g}")
        elif key == "grad_guard":
            parts.append(f"gradient guard {value:g}x")
        elif key == "prune_iters":
            parts.append(f"prune {value} + fine-tune {settings['finetune_iters']} steps")
        elif key == "optimizer":
            parts.append({"adamw": "AdamW", "sgd": "SGD (momentum 0.9)"}.get(value, value))
        else:
            parts.append(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}")
    return ", ".join(parts) or "defaults"


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def render(rows: list[dict]) -> str:
    """The docs' table of a levers results file: per variant and method, the score after fine-tuning
    (mean ± sd), right before slimming (in brackets with the BatchNorm running statistics measured
    anew, where the runs recorded it) and right after, the method minus scratch per seed, and the
    slimmed model's parameters and MACs (means over seeds). A method that failed on a seed says so
    with its error, in place of its scores when it failed on every seed."""
    first = rows[0]["settings"]
    info = next(r["values"]["task"] for r in rows if r["values"]["method"] == "dense")
    d, label = info["digits"], info["metric_label"]
    dense = {r["values"]["seed"]: r["values"]["score"] for r in rows if r["values"]["method"] == "dense"}
    runs: dict[tuple[str, str, float], dict[int, dict]] = {}
    failed: dict[tuple[str, str, float], dict[int, str]] = {}  # a method that failed on a seed: its error
    baselines: dict[str, tuple[str, str]] = {}  # variant -> the variants its scratch baseline may run under
    for r in rows:
        v = r["values"]
        if v["method"] == "dense":
            continue
        absent = {**ABSENT_EVERYWHERE, **(ABSENT if r["benchmark"] in NORMALIZED else {})}
        levers = tuple(LEVERS) if v["method"].startswith("assl") else NOT_ASSL
        name = variant(r["settings"], first, levers, absent)
        # the same variant without ASSL's own levers, else with the scratch levers alone
        baselines[name] = (
            variant(r["settings"], first, NOT_ASSL, absent),
            variant(r["settings"], first, SCRATCH_LEVERS),
        )
        key = (name, v["method"], v["ratio"])
        seeds = runs.setdefault(key, {})
        if "error" in v:
            failed.setdefault(key, {})[v["seed"]] = v["error"]
        else:
            seeds[v["seed"]] = v
    fresh = any("score_before_slim_refreshed" in r["values"] for r in rows)
    before_label = "right before slimming" + (" (BatchNorm statistics refreshed, in brackets)" if fresh else "")
    header = ["variant", "method", "ratio", f"{label} after fine-tuning", before_label]
    header += ["right after slimming", "minus scratch, per seed", "ahead of scratch", "params", info["macs_unit"]]
    body = []
    for (name, method, ratio), by_seed in runs.items():
        errors = failed.get((name, method, ratio), {})
        if not by_seed:
            body.append([name, method, f"{ratio:g}", f"failed on every seed: {errors[min(errors)]}", *["-"] * 6])
            continue
        score = {s: v["score"] for s, v in by_seed.items()}
        before = [v["score_before_slim"] for v in by_seed.values() if v.get("score_before_slim") is not None]
        refreshed = [v["score_before_slim_refreshed"] for v in by_seed.values() if "score_before_slim_refreshed" in v]
        after = [v["score_slim"] for v in by_seed.values() if v.get("score_slim") == v.get("score_slim")]
        cells = [name, method, f"{ratio:g}", mean_sd(score.values(), d) + failures(errors)]
        before_cell = f"{_mean(before):.{d}f}" if before else "-"
        if before and len(refreshed) == len(before):
            before_cell += f" ({_mean(refreshed):.{d}f})"
        cells += [before_cell, f"{_mean(after):.{d}f}" if after else "-"]
        own = "scratch_learned" if method == "assl_learned" else "scratch"  # learned widths: their own architecture
        same, common = baselines[name]
        scratch = runs.get((same, own, ratio)) or runs.get((common, own, ratio))
        scratch = scratch or runs.get((same, "scratch", ratio)) or runs.get((common, "scratch", ratio))
        if method == "scratch" or scratch is None:
            cells += ["-", "-"]
        else:
            diffs = paired(score, {s: v["score"] for s, v in scratch.items()})
            ahead = sum(x > 0 for x in diffs)
            mean = _mean(diffs)
            cells += [signed(diffs, d), f"{ahead} of {len(diffs)} (mean {mean:+.{d}f})"]
        cells += [
            f"{_mean([v['params'] for v in by_seed.values()]):,.0f}",
            f"{_mean([v['macs'] for v in by_seed.values()]):.3g}",
        ]
        body.append(cells)
    split = first.get("eval_split", "test")
    about = (
        f" {info['name']}, scored on the {split} images: {first['dense_iters']} dense steps (Adam {first['lr']:g}; "
        f"dense {mean_sd(dense.values(), d)}), then {first['prune_iters']} + {first['finetune_iters']} steps per "
        "method unless the variant says otherwise; every run from the same dense models."
    )
    return "\n".join([provenance(rows, data_packages(info)) + about, "", markdown(header, body)])
