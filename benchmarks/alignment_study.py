"""Why the alignment phase helps little in short runs: diagnostics and a sweep on the validation split.

Runs ASSL on the quality benchmark's LEDSR (same flags, same dense model per seed, same total
pruning + fine-tuning steps) for every alignment weight x alignment length in the grid, plus
``noalign`` (no alignment phase), and scores on the **validation** photo: settings are chosen
here, and only the chosen one goes to the test photos (``quality.py --align_weight ...``). The
measurements draw no random numbers from the training run, so a setting's row equals what
``quality.py --eval_split val`` gives for ``assl`` / ``assl_noalign`` with the same flags.

Measured per run, on the aligned group (the residual stream):

* ``grad ratio``: ``||grad_g(align_weight * alignment loss)|| / ||grad_g(task loss)||`` over the
  group's scales on the first batches: how much of the scales' gradient the alignment term is;
* ``agreement``: mean over pairs of the group's layers of the overlap of the channels each would
  keep on its own (top ``n - k`` by ``|g|``), at the start and at the end of the alignment phase;
  chance is ``(n - k) / n``, 1 means every layer keeps the same channels;
* ``removed share``: of each layer's ``sum |g|``, the share on the channels the group removes,
  when they are chosen (lower: the removed channels mattered less to every layer); chance
  ``k / n``;
* ``g drift``: mean ``|change of g|`` over the alignment phase, against the mean ``|g|``;
* ``left g``: at the end of the schedule, the mean ``|g|`` of the removed channels over that of
  the kept ones (0 when the penalty has done its job, so that removing them changes nothing);
* PSNR on the validation photo at the end of the schedule (channels still there), just after
  slimming, and after fine-tuning.

``--mask_scale std`` tests one explanation of what the numbers show: the soft masks
``sigmoid(|g| - t)`` are nearly flat when the ``|g|`` of a layer differ by a few percent, so the
cross-layer term cannot tell channels apart. It replaces ``assl.alignment.soft_masks`` in this
process (only here, for the experiment) by ``sigmoid((|g| - t) / std(|g|))``, per layer.

    python benchmarks/alignment_study.py --quick --prune_iters 600 --finetune_iters 400
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _baselines import assl_pruner
from _sr_args import build_parser, configure, describe, parse_args
from _sr_bench import Batches, batch_stream, evaluate, figure, load_data, mean_sd, save, sweep, train

import assl
from assl.scales import scale_of


def agreement(rows: torch.Tensor, k: int) -> float:
    """Mean pairwise overlap of the per-layer kept sets (top ``n - k`` of each row)."""
    n = rows.shape[1]
    keep = [set(torch.argsort(r, descending=True, stable=True)[: n - k].tolist()) for r in rows]
    pairs = list(itertools.combinations(keep, 2))
    return sum(len(a & b) for a, b in pairs) / (len(pairs) * (n - k))


def removed_share(rows: torch.Tensor, removed: list[int]) -> float:
    """Mean over layers of the share of ``sum |g|`` that sits on the ``removed`` units."""
    idx = torch.as_tensor(removed, dtype=torch.long)
    return float((rows[:, idx].sum(1) / rows.sum(1)).mean())


def grad_ratio(pruner: assl.Pruner, model: nn.Module, stream: Batches, batches: int = 4) -> float:
    """``||grad of the alignment term|| / ||grad of the task loss||`` on the aligned groups' scales."""
    scales = [
        scale_of(model.get_submodule(n)).scale  # type: ignore[union-attr]
        for name in pruner.aligned
        for n in pruner.graph.group(name).layers
    ]
    align = torch.autograd.grad(pruner.alignment_loss(), scales)
    norm_align = torch.sqrt(sum((g**2).sum() for g in align))
    norms = []
    for _ in range(batches):
        x, y = next(stream)
        task = torch.autograd.grad((model(x) - y).abs().mean(), scales)
        norms.append(float(torch.sqrt(sum((g**2).sum() for g in task))))
    return float(norm_align) / statistics.mean(norms)


def _std_scaled_soft_masks(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``sigmoid((s - t) / std(s))`` per row: the paper's soft mask at a temperature set by the spread."""
    threshold = torch.kthvalue(scores, k + 1, dim=-1, keepdim=True).values
    return torch.sigmoid((scores - threshold) / scores.detach().std(dim=-1, keepdim=True).clamp_min(1e-12))


def run_setting(
    weight: float | None,
    iters: int,
    dense: nn.Module,
    a: argparse.Namespace,
    seed: int,
    data: dict,
    device: torch.device,
) -> dict:
    """One ASSL run (``weight=None``: no alignment phase) with the diagnostics of the module docstring."""
    b = argparse.Namespace(**{**vars(a), "align_weight": weight or 0.0, "align_iters": iters})
    torch.manual_seed(seed + 1000)
    model = copy.deepcopy(dense)
    pruner, groups = assl_pruner(model, b, align=weight is not None)
    name = next(iter(pruner.aligned))
    k = pruner.removed[name]
    stream = batch_stream(data["train"], b.batch_size, device, seed + 2000)
    start = pruner.unit_scales(name).cpu()
    r = {"setting": "noalign" if weight is None else f"w={weight:g}, {iters} steps", "seed": seed}
    r["weight"], r["align_iters"] = weight, iters if weight is not None else 0
    r["agreement_start"] = agreement(start, k)
    r["chance"] = (start.shape[1] - k) / start.shape[1]
    at_choice = {"rows": start}
    if weight is not None:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # runs stay paired
            r["grad_ratio"] = grad_ratio(pruner, model, batch_stream(data["train"], b.batch_size, device, seed + 4000))

        def after(n: int) -> None:
            if n == iters:
                at_choice["rows"] = pruner.unit_scales(name).cpu()

        used = train(
            model,
            stream,
            b.prune_iters,
            b.lr,
            pruner=pruner,
            param_groups=groups,
            stop=lambda: pruner.done,
            after_step=after,
        )
        end = at_choice["rows"]
        r["agreement_end"] = agreement(end, k)
        r["g_drift"] = float((end - start).abs().mean() / start.mean())
    else:
        used = train(model, stream, b.prune_iters, b.lr, pruner=pruner, param_groups=groups, stop=lambda: pruner.done)
    if not pruner.done:
        raise SystemExit(f"the schedule needs more than --prune_iters {b.prune_iters} steps: raise it")
    chosen = pruner.chosen()[name]
    r["removed_share"] = removed_share(at_choice["rows"], chosen)
    final = pruner.unit_scales(name).cpu()
    keep = torch.ones(final.shape[1], dtype=torch.bool)
    keep[chosen] = False
    r["left_g"] = float(final[:, ~keep].mean() / final[:, keep].mean())
    r["psnr_before_slim"] = evaluate(model, data["eval"], b.scale, device)[0]
    small = pruner.slim()
    r["psnr_slim"] = evaluate(small, data["eval"], b.scale, device)[0]
    train(small, stream, b.prune_iters + b.finetune_iters - used, b.lr)
    r["psnr"] = evaluate(small, data["eval"], b.scale, device)[0]
    return r


def summary(rows: list[dict], dense_rows: list[dict]) -> str:
    """The markdown table: each setting's measurements, mean ± sd over seeds, then the chance levels."""
    out = [
        "| setting | grad ratio | agreement start -> end | removed share | g drift | left g | PSNR before slim | "
        "PSNR after slim | PSNR | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for setting in dict.fromkeys(r["setting"] for r in rows):
        rs = [r for r in rows if r["setting"] == setting]

        def col(key: str, digits: int, rs=rs) -> str:
            return mean_sd([r[key] for r in rs if key in r], digits)

        agree = col("agreement_start", 3) + (" -> " + col("agreement_end", 3) if "agreement_end" in rs[0] else "")
        out.append(
            f"| {setting} | {col('grad_ratio', 3)} | {agree} | {col('removed_share', 3)} | {col('g_drift', 3)} | "
            f"{col('left_g', 3)} | {col('psnr_before_slim', 2)} | {col('psnr_slim', 2)} | {col('psnr', 3)} | "
            f"{len(rs)} |"
        )
    chance = rows[0]["chance"]
    out.append(
        f"\nchance agreement {chance:.3f}, chance removed share {1 - chance:.3f}; dense on the same images "
        f"{mean_sd([r['psnr'] for r in dense_rows], 3)} dB"
    )
    return "\n".join(out)


def _plot(rows: list[dict], dense_rows: list[dict], path: Path) -> None:
    """PSNR per setting against the alignment weight, the no-alignment range and the dense mean."""
    with figure(path) as ax:
        weights = sorted({r["weight"] for r in rows if r["weight"] is not None})
        pos = {w: i for i, w in enumerate(weights)}
        for iters in sorted({r["align_iters"] for r in rows if r["weight"] is not None}):
            pts = [(pos[r["weight"]], r["psnr"]) for r in rows if r["weight"] is not None and r["align_iters"] == iters]
            ax.scatter(*zip(*pts), alpha=0.6, label=f"{iters} alignment steps")
        noalign = [r["psnr"] for r in rows if r["weight"] is None]
        if noalign:
            ax.axhspan(min(noalign), max(noalign), color="gray", alpha=0.2, label="no alignment (range over seeds)")
        ax.axhline(statistics.mean(r["psnr"] for r in dense_rows), color="gray", ls="--", label="dense")
        ax.set_xticks(range(len(weights)), [f"{w:g}" for w in weights])
        ax.set_xlabel("alignment weight")
        ax.set_ylabel("PSNR (Y, dB), validation photo")
        ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> None:
    """Run every setting of the grid for every seed; print and write the table, the rows and the plot."""
    p = build_parser(__doc__)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 10.0, 100.0, 1000.0])
    p.add_argument("--align_grid", type=int, nargs="+", default=[100, 300], help="alignment lengths in steps")
    p.add_argument(
        "--mask_scale",
        choices=("raw", "std"),
        default="raw",
        help="std: soft masks at a temperature of each layer's |g| spread (an experiment, see above)",
    )
    # the study varies the alignment phase of the paper's schedule, penalty and all: the flags set the
    # numbers, and --quick keeps the scales' own learning rate its measurements were made with
    p.set_defaults(eval_split="val", out="runs/alignment_study", schedule="flags", penalty_form="gradient")
    smoke = {"weights": [0.0, 10.0], "align_grid": [2], "prune_iters": 12}
    args = parse_args(p, argv, smoke=smoke, quick={"scale_lr": 3e-2})
    device = configure(args)
    if args.mask_scale == "std":
        assl.alignment.soft_masks = _std_scaled_soft_masks  # type: ignore[attr-defined]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    print(f"# alignment study: {describe(args, device)}", flush=True)
    settings = [(None, 0), *((w, n) for n in args.align_grid for w in args.weights)]
    rows, dense_rows = sweep(
        args,
        data,
        device,
        lambda dense, seed: (run_setting(w, n, dense, args, seed, data, device) for w, n in settings),
    )
    save(out, "alignment_study", summary(rows, dense_rows), args, rows, dense_rows)
    _plot(rows, dense_rows, out / "alignment_study.png")


if __name__ == "__main__":
    main()
