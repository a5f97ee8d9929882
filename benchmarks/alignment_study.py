"""Does the alignment phase align, and does aligning help? Controls and diagnostics on the validation split.

Runs ASSL on the quality benchmark's LEDSR (same flags, same dense model per seed, same total
pruning + fine-tuning steps, the library's defaults: ``Schedule.for_steps(--prune_iters)`` and
the shrink penalty) for every setting of ``--settings``, and scores on the **validation** photo:
settings are chosen here, and only the chosen one goes to the test photos. A setting is
``noalign`` (no alignment phase) or ``LOSS:WEIGHT`` (``Schedule(align_loss=LOSS,
align_weight=WEIGHT)``); weight 0 runs the same alignment steps as plain training, the control
the aligned settings are measured against. The measurements draw no random numbers from the
training run, so the ``noalign`` and ``consensus:1`` rows equal what ``quality.py --eval_split
val`` gives for ``assl_noalign`` / ``assl`` with the same flags.

Measured per run, on the aligned group (the residual stream):

* ``grad ratio``: ``||grad_g(align_weight * alignment loss)|| / ||grad_g(task loss)||`` over the
  group's scales on the first batches: how much of the scales' gradient the alignment term is;
* ``agreement``: `assl.pruning._alignment.agreement` of the group's ``|g|``, the mean over pairs of
  its layers of the overlap of the channels each would keep on its own (top ``n - k``), at the
  start and at the end of the alignment phase; chance is ``(n - k) / n``, 1 means every layer
  keeps the same channels;
* ``removed share``: of each layer's ``sum |g|``, the share on the channels the group removes,
  when they are chosen (lower: the removed channels mattered less to every layer); chance
  ``k / n``;
* ``g drift``: mean ``|change of g|`` over the alignment phase, against the mean ``|g|``;
* ``left g``: at the end of the schedule, the mean ``|g|`` of the removed channels over that of
  the kept ones (0 when the penalty has done its job, so that removing them changes nothing);
* PSNR on the validation photo at the end of the schedule (channels still there), just after
  slimming, and after fine-tuning.

    python benchmarks/alignment_study.py --quick --ratio 0.5 --prune_iters 600 --finetune_iters 400
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _alignment import (
    DEFAULT_SETTINGS,
    agreement_at_choice,
    by_setting,
    paired,
    parse_setting,
    removed_share,
    setting_arg,
)
from _baselines import assl_pruner
from _sr_args import build_parser, configure, describe, parse_args
from _sr_bench import Batches, batch_stream, evaluate, figure, load_data, mean_sd, save, sweep, train

import assl
from assl.pruning._alignment import agreement
from assl.pruning._scales import scale_of


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


def run_setting(
    setting: str,
    dense: nn.Module,
    a: argparse.Namespace,
    seed: int,
    data: dict,
    device: torch.device,
) -> dict:
    """One ASSL run of ``setting`` (see :func:`parse_setting`) with the diagnostics of the module docstring."""
    parsed = parse_setting(setting)
    loss, weight = parsed if parsed is not None else ("consensus", None)
    b = argparse.Namespace(**{**vars(a), "align_weight": weight or 0.0, "align_loss": loss})
    torch.manual_seed(seed + 1000)
    model = copy.deepcopy(dense)
    pruner, groups = assl_pruner(model, b, align=weight is not None)
    name = next(iter(pruner.aligned))
    k = pruner.removed[name]
    iters = pruner.schedule.align_iters if weight is not None else 0
    stream = batch_stream(data["train"], b.batch_size, device, seed + 2000)
    start = pruner.unit_scales(name).cpu()
    r = {"setting": setting, "seed": seed, "ratio": b.ratio, "loss": loss if weight is not None else None}
    r["weight"], r["align_iters"] = weight, iters
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
    for setting, rs, col, agree in by_setting(rows):
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
    columns = [("agreement", agreement_at_choice, 3), ("PSNR", lambda r: r["psnr"], 3)]
    diffs = paired(rows, columns)
    if diffs:
        out += ["", "Per seed, over the weight-0 control (agreement when the channels are chosen, final PSNR):", ""]
        out += diffs
    return "\n".join(out)


def _plot(rows: list[dict], dense_rows: list[dict], path: Path) -> None:
    """PSNR per setting and seed: before slimming, after slimming and after fine-tuning."""
    with figure(path) as ax:
        settings = list(dict.fromkeys(r["setting"] for r in rows))
        for key, label, dx in (
            ("psnr_before_slim", "before slimming", -0.2),
            ("psnr_slim", "after slimming", 0.0),
            ("psnr", "after fine-tuning", 0.2),
        ):
            pts = [(settings.index(r["setting"]) + dx, r[key]) for r in rows]
            ax.scatter(*zip(*pts), alpha=0.6, label=label)
        ax.axhline(statistics.mean(r["psnr"] for r in dense_rows), color="gray", ls="--", label="dense")
        ax.set_xticks(range(len(settings)), settings)
        ax.set_xlabel("setting")
        ax.set_ylabel("PSNR (Y, dB), validation photo")
        ax.legend(fontsize=8)


def main(argv: list[str] | None = None) -> None:
    """Run every setting for every seed; print and write the table, the rows and the plot."""
    p = build_parser(__doc__)
    p.add_argument(
        "--settings",
        nargs="+",
        type=setting_arg,
        default=DEFAULT_SETTINGS,
        help="noalign or LOSS:WEIGHT (LOSS consensus or authors; weight 0: the plain-training control)",
    )
    p.set_defaults(eval_split="val", out="runs/alignment_study")
    smoke = {"settings": ["noalign", "consensus:0", "consensus:10"], "prune_iters": 12}
    args = parse_args(p, argv, smoke=smoke)
    device = configure(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    print(f"# alignment study: {describe(args, device)}", flush=True)
    rows, dense_rows = sweep(
        args,
        data,
        device,
        lambda dense, seed: (run_setting(t, dense, args, seed, data, device) for t in args.settings),
    )
    save(out, "alignment_study", summary(rows, dense_rows), args, rows, dense_rows)
    _plot(rows, dense_rows, out / "alignment_study.png")


if __name__ == "__main__":
    main()
