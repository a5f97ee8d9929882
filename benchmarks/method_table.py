"""The quality benchmarks' report: methods at equal steps, mean ± sd over seeds, and paired differences.

Shared by the SR benchmark (``quality``) and the BatchNorm ones (``bn_classifier``,
``bn_denoiser``): the rows of :func:`benchmarks.methods.run_method` and the dense rows of
:func:`benchmarks.sweep.dense_model`, read back from a results file.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from .stats import mean_sd, paired, signed, spread
from .tables import failures, markdown, provenance


def _split(rows: list[dict]) -> tuple[dict[str, Any], list[dict], list[dict]]:
    """The task info, the dense rows (one per seed) and the method rows of a results file's rows."""
    vals = [r["values"] for r in rows]
    dense = list({v["seed"]: v for v in reversed(vals) if v["method"] == "dense"}.values())[::-1]
    if not dense:
        raise ValueError("no dense row: not the results of a quality benchmark")
    methods = [v for v in vals if v["method"] != "dense"]
    return dense[0]["task"], dense, methods


def data_packages(info: dict[str, Any]) -> list[str]:
    """The optional packages a task's data comes from: as its rows say, or, for rows written before
    they said it, by the data its name mentions."""
    if "packages" in info:
        return list(info["packages"])
    name = info["name"]
    return ["scikit-learn"] if "digits" in name else ["scikit-image"] if "photos" in name or "images" in name else []


def _ratios(methods: list[dict]) -> list[float]:
    return list(dict.fromkeys(v["ratio"] for v in methods))


def _methods(methods: list[dict]) -> list[str]:
    """The methods in the order the run took them."""
    return list(dict.fromkeys(v["method"] for v in methods))


def table(rows: list[dict]) -> str:
    """The markdown table (mean ± sd over seeds) and the paired differences of ``rows``."""
    info, dense, methods = _split(rows)
    d, label = info["digits"], info["metric_label"]
    extra = [k for k in dense[0]["metrics"] if k != info["metric"]]
    header = ["method", "ratio", f"{label} right after slimming", f"{label} after fine-tuning"]
    header += [k.upper() for k in extra]
    header += ["params", info["macs_unit"], "liveness", "wall s", "seeds"]
    blank = ["-"] * len(extra)
    body = [
        [name, "-", "-", f"{value:.{d}f}", *blank, "-", "-", "-", "-", "-"]
        for name, value in info["references"].items()
    ]
    body.append(
        ["dense", "0", "-", mean_sd([v["score"] for v in dense], d),
         *(f"{statistics.mean(v['metrics'][k] for v in dense):.4f}" for k in extra), f"{dense[0]['params']:,}",
         f"{dense[0]['macs']:.3g}", "-", f"{statistics.mean(v['wall_s'] for v in dense):.0f}", len(dense)]
    )  # fmt: skip
    for ratio in _ratios(methods):
        for m in _methods(methods):
            rs = [v for v in methods if v["method"] == m and v["ratio"] == ratio]
            if not rs:
                continue
            errors = {v["seed"]: v["error"] for v in rs if "error" in v}
            if len(errors) == len(rs):
                body.append([m, f"{ratio:g}", f"failed: {rs[0]['error']}", "-", *blank, "-", "-", "-", "-", len(rs)])
                continue
            rs = [v for v in rs if "error" not in v]
            slim = [v["score_slim"] for v in rs if not math.isnan(v["score_slim"])]
            live = [v["liveness"] for v in rs if "liveness" in v]
            body.append(
                [m, f"{ratio:g}", mean_sd(slim, d), mean_sd([v["score"] for v in rs], d) + failures(errors),
                 *(f"{statistics.mean(v['metrics'][k] for v in rs):.4f}" for k in extra), f"{rs[0]['params']:,}",
                 f"{rs[0]['macs']:.3g}", f"{max(live):.1e}" if live else "-",
                 f"{statistics.mean(v['wall_s'] for v in rs):.0f}", len(rs)]
            )  # fmt: skip
    out = [markdown(header, body)]
    diffs = paired_table(rows)
    if diffs:
        out += ["", diffs]
    return "\n".join(out)


def paired_table(rows: list[dict]) -> str:
    """``assl`` minus each other method after fine-tuning, per seed (same dense model, same batches)."""
    info, _, methods = _split(rows)
    ok = [v for v in methods if "error" not in v]
    others = [m for m in _methods(ok) if m != "assl"]
    if not any(v["method"] == "assl" for v in ok) or not others:
        return ""
    body = []
    for ratio in _ratios(methods):
        by = {m: {v["seed"]: v["score"] for v in ok if v["method"] == m and v["ratio"] == ratio} for m in _methods(ok)}
        body.append([f"{ratio:g}", *(signed(paired(by["assl"], by[m]), info["digits"]) or "-" for m in others)])
    seeds = ", ".join(str(s) for s in dict.fromkeys(v["seed"] for v in ok))
    head = f"`assl` minus each method, {info['metric_label']} after fine-tuning, per seed ({seeds}):"
    return "\n".join([head, "", markdown(["ratio", *others], body)])


def _optimizer(steps: dict) -> str:
    """``Adam 0.0005``, or the optimizer and rate of the steps after the dense model when they differ."""
    name = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD (momentum 0.9)"}[steps.get("optimizer", "adam")]
    lr = steps.get("method_lr")
    if lr is None or lr == steps["lr"]:
        return f"{name} {steps['lr']:g}" if name == "Adam" else f"{name} {steps['lr']:g} (the dense model: Adam)"
    return f"{name} {lr:g} (the dense model: Adam {steps['lr']:g})"


def render(rows: list[dict]) -> str:
    """The docs' block of a results file of a quality benchmark: what it was measured on, the tables."""
    info, _, methods = _split(rows)
    steps = rows[0]["settings"]
    about = (
        f" {info['name']}: {steps['dense_iters']} dense steps, then {steps['prune_iters']} + "
        f"{steps['finetune_iters']} steps per method, {_optimizer(steps)} ({steps['lr_schedule']}); "
        + (
            f"distilled from the dense model (weight {steps['distill']:g}"
            + (f", {steps['distill_kind']}" if steps.get("distill_kind", "mse") != "mse" else "")
            + "); "
            if steps.get("distill")
            else ""
        )
        + "mean ± sd over seeds."
    )
    tp = any(v["method"].startswith("tp_") for v in methods)
    packages = [*(["torch-pruning"] if tp else []), *data_packages(info)]
    return "\n".join([provenance(rows, packages) + about, "", table(rows)])


def plot(rows: list[dict], ratio: float, path: str | Path) -> None:
    """Mean score over seeds against steps after the dense model, per method, at ``ratio``;
    per-seed scores when the runs recorded no curve."""
    from .plots import figure

    info, dense, methods = _split(rows)
    start = {v["seed"]: v["score"] for v in dense}
    with figure(path) as ax:
        for i, m in enumerate(_methods(methods)):
            rs = [v for v in methods if v["method"] == m and v["ratio"] == ratio and "error" not in v]
            if not rs:
                continue
            runs = []
            for v in rs:
                first = (
                    [] if m in ("l1", "l1_authors", "random", "scratch", "scratch_learned") else [(0, start[v["seed"]])]
                )
                runs.append([(x, y) for x, y in first + v["curve"] if x >= 0 and not math.isnan(y)])
            xs = [x for x, _ in runs[0]]
            ys = [statistics.mean(run[j][1] for run in runs) for j in range(len(xs))]
            ax.plot(xs, ys, marker=".", color=f"C{i}", label=m)
            last = [v["score"] for v in rs]
            ax.errorbar(xs[-1], statistics.mean(last), yerr=spread(last), fmt="none", ecolor="k", capsize=4)
        ax.axhline(statistics.mean(v["score"] for v in dense), color="gray", ls="--", label="dense")
        for name, value in info["references"].items():
            ax.axhline(value, color="gray", ls=":", label=name)
        ax.set_xlabel("optimizer steps after the dense model")
        ax.set_ylabel(f"{info['metric_label']}, held-out")
        ax.set_title(f"{info['name']}, ratio {ratio:g}")
        ax.legend(fontsize=8)
