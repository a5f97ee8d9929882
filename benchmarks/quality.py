"""Quality at equal budget: ASSL against the baselines, same model, same data, same iterations.

From one dense LEDSR per seed, every method prunes to the same kept width and then fine-tunes,
with pruning + fine-tuning steps equal across methods:

* ``assl``: alignment + growing regularization on the scales, then slim and fine-tune, with the
  library's defaults: ``Schedule.for_steps(--prune_iters)``, the shrink penalty, and the same
  learning rate as every other method (``--schedule flags --penalty_form gradient`` and the
  ``--reg_*`` flags run the paper's penalty with numbers of one's own);
* ``assl_noalign``: the same without the alignment phase (groups chosen by aggregated |g|);
* ``l1``: one-shot L1-norm pruning, aligned per residual group (group-aggregated score);
* ``l1_authors``: the authors' L1 baseline: each layer ranks its own filters, and a residual
  group, which must lose the same channels to be slimmed, takes its first layer's ranking;
* ``random``: random channels per group;
* ``scratch``: the slimmed architecture re-initialized and trained for the dense + pruning +
  fine-tuning steps.

Reports PSNR/SSIM (Y, border = scale) on held-out test images (or, with ``--eval_split val``, on
the validation split that settings are chosen on), params, MACs (1280x720 output), wall time per
method, mean and spread over seeds, as a markdown table and a PNG. For the pruned methods it also
reports the PSNR right after slimming, before fine-tuning: for ASSL it shows whether the penalty
drove the removed channels to zero (then it is the PSNR of the model before slimming); the rows
also keep ASSL's ``Pruner.liveness()`` just before slimming (``alive``: the largest over groups).

    python benchmarks/quality.py --quick --out runs/quality       # CPU, embedded photos
    python benchmarks/quality.py --dir_data DIV2K --device cuda     # the full settings
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baselines import assl_pruner, one_shot, scratch, torch_pruning
from _sr_args import build_parser, configure, describe, parse_args
from _sr_bench import batch_stream, evaluate, figure, load_data, mean_sd, model_size, save, spread, sweep, train


def run_method(
    method: str, dense: nn.Module, a: argparse.Namespace, seed: int, data: dict, device: torch.device
) -> dict:
    """Prune a copy of ``dense`` with ``method``, fine-tune it to the common step count, and score it."""
    torch.manual_seed(seed + 1000)
    model = copy.deepcopy(dense)
    stream = batch_stream(data["train"], a.batch_size, device, seed + 2000)
    x0 = torch.zeros(1, 3, 16, 16, device=device)
    t0 = time.time()
    total = a.prune_iters + a.finetune_iters
    extra: dict = {}
    if method in ("assl", "assl_noalign"):
        pruner, groups = assl_pruner(model, a, align=method == "assl")
        used = train(model, stream, a.prune_iters, a.lr, pruner=pruner, param_groups=groups, stop=lambda: pruner.done)
        extra["alive"] = max(pruner.liveness().values(), default=0.0)
        small = pruner.slim()
        finetune = total - used
    elif method.startswith("tp_"):
        small, finetune = torch_pruning(method, model, a, stream, x0), a.finetune_iters
        try:
            small(x0)
        except RuntimeError as e:  # a broken pruned model is a result too: report it, go on
            print(f"# {method} produced a model that fails on its own example input: {e}", flush=True)
            return {
                "method": method,
                "seed": seed,
                "psnr": math.nan,
                "ssim": math.nan,
                "params": 0,
                "gmacs": 0.0,
                "wall_s": time.time() - t0,
                "error": str(e).split("\n")[0],
            }
    elif method == "scratch":
        small, finetune = scratch(dense, a.ratio, x0), a.dense_iters + total
    else:
        small, finetune = one_shot(method, model, dense, a.ratio, seed, x0), total
    if method != "scratch":
        extra["psnr_slim"] = evaluate(small, data["eval"], a.scale, device)[0]
    train(small, stream, finetune, a.lr)
    p, s = evaluate(small, data["eval"], a.scale, device)
    params, gmacs = model_size(small, a.scale, device)
    return {
        "method": method,
        "seed": seed,
        "psnr": p,
        "ssim": s,
        "params": params,
        "gmacs": gmacs,
        "wall_s": time.time() - t0,
        **extra,
    }


def _summary(rows: list[dict], a: argparse.Namespace, dense_rows: list[dict]) -> str:
    """The markdown table: dense, bicubic, then each method's mean over seeds."""
    out = [
        "| method | ratio | PSNR (dB) | PSNR right after slimming | SSIM | params | GMACs | wall s | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def line(name: str, rs: list[dict], ratio: str) -> str:
        if any("error" in r for r in rs):
            return f"| {name} | {ratio} | failed: {rs[0].get('error', '')[:90]} | - | - | - | - | - | {len(rs)} |"
        return (
            f"| {name} | {ratio} | {mean_sd([r['psnr'] for r in rs], 3)} | "
            f"{mean_sd([r['psnr_slim'] for r in rs if 'psnr_slim' in r], 2)} | "
            f"{statistics.mean(r['ssim'] for r in rs):.4f} | {rs[0]['params']:,} | {rs[0]['gmacs']:.2f} | "
            f"{statistics.mean(r['wall_s'] for r in rs):.0f} | {len(rs)} |"
        )

    out.append(line("dense", dense_rows, "0"))
    bic = [r["bicubic"] for r in dense_rows]
    out.append(f"| bicubic | - | {statistics.mean(bic):.3f} | - | - | - | - | - | {len(bic)} |")
    for m in a.methods:
        rs = [r for r in rows if r["method"] == m]
        if rs:
            out.append(line(m, rs, f"{a.ratio:g}"))
    return "\n".join(out + _paired(rows, a))


def _paired(rows: list[dict], a: argparse.Namespace) -> list[str]:
    """``assl`` minus each other method, seed by seed (same dense model, same batches), in dB."""
    ok = {(r["method"], r["seed"]): r["psnr"] for r in rows if "error" not in r}
    others = [m for m in a.methods if m != "assl"]
    seeds = sorted({s for m, s in ok if m == "assl"})
    if not others or not seeds:
        return []
    cells = [", ".join(f"{ok['assl', s] - ok[m, s]:+.3f}" for s in seeds if (m, s) in ok) or "-" for m in others]
    return [
        "",
        f"assl minus each method, paired by seed (seeds {', '.join(map(str, seeds))}), dB:",
        "",
        f"| ratio | {' | '.join(others)} |",
        f"|---{'|---' * len(others)}|",
        f"| {a.ratio:g} | {' | '.join(cells)} |",
    ]


def _plot(rows: list[dict], dense_rows: list[dict], path: Path, split: str = "test") -> None:
    """PSNR per seed and mean ± sd per method, against the dense and bicubic means."""
    with figure(path) as ax:
        methods = list(dict.fromkeys(r["method"] for r in rows))
        methods = [m for m in methods if not any("error" in r for r in rows if r["method"] == m)]
        for i, m in enumerate(methods):
            ps = [r["psnr"] for r in rows if r["method"] == m]
            ax.scatter([i] * len(ps), ps, alpha=0.6)
            ax.errorbar(i, statistics.mean(ps), yerr=spread(ps), fmt="k_", capsize=6)
        d = [r["psnr"] for r in dense_rows]
        ax.axhline(statistics.mean(d), color="gray", ls="--", label="dense")
        ax.axhline(statistics.mean(r["bicubic"] for r in dense_rows), color="gray", ls=":", label="bicubic")
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set_ylabel(f"PSNR (Y, dB), {split} images")
        ax.legend()


def main(argv: list[str] | None = None) -> None:
    """Run every method for every seed; print and write the table, the rows and the plot."""
    args = parse_args(build_parser(__doc__), argv)
    device = configure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    print(f"# quality: {describe(args, device)}", flush=True)
    rows, dense_rows = sweep(
        args, data, device, lambda dense, seed: (run_method(m, dense, args, seed, data, device) for m in args.methods)
    )
    save(out, "quality", _summary(rows, args, dense_rows), args, rows, dense_rows)
    _plot(rows, dense_rows, out / "quality.png", args.eval_split)


if __name__ == "__main__":
    main()
