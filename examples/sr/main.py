"""Prune LEDSR with ASSL end to end; the authors' commands run with only the paths changed.

    python examples/sr/main.py --quick                       # a few minutes on a CPU
    python examples/sr/main.py --model LEDSR --scale 2 --patch_size 96 --dir_data DIV2K_ROOT \\
        --n_resblocks 16 --n_feats 256 --method ASSL --wn --stage_pr [0-1000:0.80859375] \\
        --skip_layers *mean*,*tail* --same_pruned_wg_layers model.head.0,model.body.16,*body.2 ...
    torchrun --nproc_per_node 4 examples/sr/main.py ...      # several processes (DDP)

See docs/sr_example.md for every flag, the data layout and how to reproduce the paper's setting.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.distributed as dist
from ledsr import load_pretrained
from options import parse_args
from pipeline import (
    Context,
    batches,
    bicubic_psnr,
    build_model,
    checkpoint,
    datasets,
    evaluate,
    make_pruner,
    setup,
    size_report,
    stage_limit,
    train_stage,
)
from report import plot, table, write_csv
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import assl

log = logging.getLogger("sr")

STAGES = ("dense", "prune", "finetune", "eval", "finished")


def _schedule_point(ctx: Context, pruner: assl.Pruner) -> dict[str, str]:
    """Record the schedule (penalty, chosen vs kept scales) for curves.png; the bar's postfix."""
    progress = pruner.progress()
    ratios = []
    for group, units in pruner.chosen().items():
        s = pruner.unit_scales(group).mean(0)
        keep = torch.ones_like(s, dtype=torch.bool)
        keep[units] = False
        ratios.append(float(s[~keep].mean() / s[keep].mean().clamp_min(1e-12)))
    ratio = max(ratios, default=float("nan"))
    ctx.history.setdefault("schedule", []).append((ctx.global_step, progress.phase, progress.penalty, ratio))
    return progress.postfix()


def _wrap(ctx: Context, model: nn.Module) -> nn.Module:
    return (
        DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)
        if ctx.world > 1
        else model
    )


def _teacher(ctx: Context, model: nn.Module, stage: str, *, from_file: bool) -> assl.Teacher:
    """``--distill``'s teacher: a frozen copy of ``model``, the dense weights in memory at the end of
    the dense stage, or, resuming at a later stage, those saved then in ``dense.pt``.

    ``model`` must not hold a Pruner's scales yet. Loading draws no random numbers, so a resumed
    run's batches do not depend on it. The teacher is no ``nn.Module``: wrapping the model for DDP
    and building the optimizers from its parameters leave it out.

    Raises:
        FileNotFoundError: Resuming, and ``dense.pt`` is not in the output folder.
    """
    teacher = assl.Teacher(model)
    if from_file:
        path = ctx.out / "dense.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"--distill: resuming at the {stage} stage needs the dense model to distil from, saved as {path} "
                "at the end of the dense stage, and that file is missing; put it back, start again without "
                "--resume, or resume without --distill"
            )
        teacher.load_state_dict(torch.load(path, weights_only=True, map_location=ctx.device))
        log.info("--distill: the teacher is the dense model of %s", path)
    return teacher


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def run(argv: list[str] | None = None) -> dict:
    """Run the pipeline; returns the final results (also written to results.json)."""
    args = parse_args(argv)
    ctx = setup(args)
    t_start = time.time()
    ckpt_path = ctx.out / "checkpoint.pt"
    ckpt = (
        torch.load(ckpt_path, weights_only=True, map_location=ctx.device)
        if args.resume and ckpt_path.exists()
        else None
    )
    if args.resume and ckpt is None:
        log.warning("--resume: no checkpoint in %s, starting from scratch", ctx.out)
    stage = ckpt["stage"] if ckpt else "dense"
    if stage == "finished":
        stage = "eval"  # a finished run resumed: evaluate again
    results: dict = ckpt["results"] if ckpt else {}
    ctx.state["results"] = results
    if ckpt:
        ctx.history = ckpt["history"]
        ctx.global_step = ckpt["global_step"]
        torch.set_rng_state(ckpt["rng"].cpu())
        log.info("resuming at stage %s step %d", stage, ckpt["step"])
    train, evals = datasets(ctx)
    stream = batches(ctx, train)
    model = build_model(ctx)

    # --- dense ---------------------------------------------------------------------------
    if stage == "dense":
        if args.pre_train and not ckpt:
            load_pretrained(model, torch.load(args.pre_train, weights_only=True, map_location=ctx.device))
            log.info("loaded %s", args.pre_train)
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
        start = 0
        if ckpt:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            start = ckpt["step"]
        if args.test_only:
            psnr_, ssim_, _ = evaluate(ctx, model, evals["test"])
            print(table([("PSNR", f"{psnr_:.2f} dB"), ("SSIM", f"{ssim_:.4f}")]))
            return {"psnr": psnr_, "ssim": ssim_}
        net = _wrap(ctx, model)
        iters = stage_limit(ctx, args.dense_iters, train)
        train_stage(
            ctx,
            "dense",
            net,
            opt,
            stream,
            start=start,
            iters=iters,
            evals=evals,
            bare=model,
            save=lambda s: checkpoint(ctx, "dense", s, model, opt),
        )
        if ctx.main:
            results["bicubic_psnr"] = bicubic_psnr(ctx, evals["test"])
            results["dense_psnr"], results["dense_ssim"], _ = evaluate(ctx, model, evals["test"])
            results["dense_params"], results["dense_gmacs"] = size_report(model, args.scale)
            results["dense_widths"] = _widths(model)
            log.info("dense: PSNR %.2f SSIM %.4f", results["dense_psnr"], results["dense_ssim"])
        stage, ckpt = "prune", None
        if ctx.main:  # before the checkpoint that moves on: a resumed --distill run finds it
            torch.save(model.state_dict(), ctx.out / "dense.pt")
        checkpoint(ctx, "prune", 0, model, None)
        dense_in_memory = True
    else:
        dense_in_memory = False

    # --- the teacher of --distill: the dense model, frozen, built before the Pruner --------
    teacher_loss = None
    if stage in ("prune", "finetune"):
        results.update(distill=args.distill, distill_kind=args.distill_kind)  # the steps still to train
        if args.distill > 0:
            teacher = _teacher(ctx, model, stage, from_file=not dense_in_memory)
            teacher_loss = partial(teacher.loss, weight=args.distill, kind=args.distill_kind)

    # --- prune ---------------------------------------------------------------------------
    small: nn.Module | None = None
    if stage == "prune":
        if ckpt is not None and ckpt["pruner"] is None:
            model.load_state_dict(ckpt["model"])  # dense weights saved at the stage boundary
            ckpt = None
        pruner = make_pruner(ctx, model)
        penalized = {id(p) for p in pruner.penalized_parameters()}
        opt = torch.optim.Adam(
            [
                {"params": [p for p in model.parameters() if id(p) not in penalized]},
                {"params": pruner.penalized_parameters(), "lr": args.scale_lr or args.lr},
            ],
            lr=args.lr,
        )
        pruner.attach(opt)
        start = 0
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            pruner.load_state_dict(ckpt["pruner"])
            start = ckpt["step"]
        if args.method == "L1":
            small = pruner.prune_now("l1")
        else:
            net = _wrap(ctx, model)
            a, r, d = pruner.schedule.bounds(bool(pruner.aligned))
            iters = stage_limit(ctx, min(d, args.max_prune_iters or d), train)
            log.info(
                "pruning: align %d, regularize %d, stabilize %d steps%s, %s penalty up to %.4g",
                a,
                r - a,
                d - r,
                f" (cut at {iters})" if iters < d else "",
                pruner.schedule.penalty_form,
                pruner.schedule.penalty(d - 1, bool(pruner.aligned)),
            )
            # the schedule's true phase boundaries on the global step axis, for curves.png
            origin = ctx.global_step - pruner.step_count  # the global step at which pruning began
            firsts = {"align": 0, "regularize": a, "stabilize": r, "done": d}
            ctx.history["phases"] = [
                (origin + b, name) for name, b in firsts.items() if b <= iters and (name != "align" or a > 0)
            ]
            train_stage(
                ctx,
                "prune",
                net,
                opt,
                stream,
                start=start,
                iters=iters,
                evals=evals,
                bare=model,
                extra_loss=pruner.alignment_loss,
                teacher_loss=teacher_loss,
                progress=lambda: _schedule_point(ctx, pruner),
                stop=lambda: pruner.done,
                save=lambda s: checkpoint(ctx, "prune", s, model, opt, pruner),
            )
            log.info("%s", pruner.summary())
            results["liveness"] = max(pruner.liveness().values(), default=0.0)
            small = pruner.slim()
        if pruner.latency is not None:  # slim() timed the slimmed model on the table's input
            plan = pruner.latency
            results["latency_plan"].update(
                dense_ms=plan.dense * 1e3, target_ms=plan.target * 1e3, predicted_ms=plan.predicted * 1e3,
                measured_ms=None if plan.measured is None else plan.measured * 1e3,
            )  # fmt: skip
        if ctx.main:
            assl.save(small, ctx.out / "slim.pt")
            with (ctx.out / "plan.json").open("w") as f:
                json.dump({"plan": pruner.chosen(), "removed": pruner.removed}, f, indent=1)
            results["pruned_params"], results["pruned_gmacs"] = size_report(small, args.scale)
            results["pruned_widths"] = _widths(small)
            results["slimmed_psnr"], _, _ = evaluate(ctx, small, evals["test"])
        stage, ckpt = "finetune", None
        checkpoint(ctx, "finetune", 0, small, None)
        if ctx.world > 1:
            dist.barrier()

    # --- fine-tune -----------------------------------------------------------------------
    if stage in ("finetune", "eval"):
        if small is None:
            small = assl.load(build_model(ctx), ctx.out / "slim.pt")
        assert small is not None
        if stage == "finetune":
            # by name: slim() registers a slimmed layer's bias before its weight, assl.load() after it,
            # and a resumed optimizer state maps onto the parameters by their position in the list
            opt = torch.optim.Adam([p for _, p in sorted(small.named_parameters())], lr=args.lr)
            start = 0
            if ckpt is not None:
                small.load_state_dict(ckpt["model"])
                if ckpt["optimizer"] is not None:
                    opt.load_state_dict(ckpt["optimizer"])
                start = ckpt["step"]
            net = _wrap(ctx, small)
            iters = stage_limit(ctx, args.finetune_iters, train)
            final = small
            train_stage(
                ctx,
                "finetune",
                net,
                opt,
                stream,
                start=start,
                iters=iters,
                evals=evals,
                bare=small,
                teacher_loss=teacher_loss,
                save=lambda s: checkpoint(ctx, "finetune", s, final, opt),
            )
            if ctx.main:
                assl.save(small, ctx.out / "slim.pt")
            checkpoint(ctx, "eval", 0, small, None)
        elif ckpt is not None:
            small.load_state_dict(ckpt["model"])

    # --- evaluate ------------------------------------------------------------------------
    if ctx.main:
        assert small is not None
        for name, data in evals.items():
            if name == "val":
                continue
            save_dir = ctx.out / f"results-{name}" if args.save_results else None
            p, s, rows = evaluate(ctx, small, data, save_dir=save_dir)
            write_csv(ctx.out / f"metrics-{name}.csv", rows)
            results[f"pruned_psnr_{name}" if name != "test" else "pruned_psnr"] = p
            results[f"pruned_ssim_{name}" if name != "test" else "pruned_ssim"] = s
        results["wall_s"] = results.get("wall_s", 0.0) + time.time() - t_start
        widths = {
            k: (v, results.get("pruned_widths", {}).get(k, v)) for k, v in results.get("dense_widths", {}).items()
        }
        plot(ctx.out / "curves.png", ctx.history, widths)
        with (ctx.out / "results.json").open("w") as f:
            json.dump({k: v for k, v in results.items() if not k.endswith("widths")}, f, indent=1)
        checkpoint(ctx, "finished", 0, small, None)
        print(final_table(results, args))
    if ctx.world > 1:
        # DDP's reducer holds the process group: free it first, or gloo's destructor can block
        # forever when it runs after the group is destroyed
        net = None
        gc.collect()
        dist.destroy_process_group()
    return results


def final_table(r: dict, args) -> str:
    def fmt(key: str, unit: str = "", digits: int = 2) -> str:
        v = r.get(key)
        return "-" if v is None else f"{v:,.{digits}f}{unit}"

    distilled = f", distilled ({args.distill_kind}, weight {args.distill:g})" if args.distill > 0 else ""
    rows = [
        ("", f"LEDSR x{args.scale}, {args.n_resblocks} blocks, {args.n_feats} feats, method {args.method}{distilled}"),
        ("bicubic PSNR (test, Y)", fmt("bicubic_psnr", " dB")),
        ("dense PSNR / SSIM (test, Y)", f"{fmt('dense_psnr', ' dB')} / {fmt('dense_ssim', '', 4)}"),
        ("slimmed, before fine-tuning", fmt("slimmed_psnr", " dB")),
        ("pruned PSNR / SSIM (test, Y)", f"{fmt('pruned_psnr', ' dB')} / {fmt('pruned_ssim', '', 4)}"),
        ("params dense -> pruned", f"{fmt('dense_params', '', 0)} -> {fmt('pruned_params', '', 0)}"),
        ("GMACs (1280x720 out) dense -> pruned", f"{fmt('dense_gmacs')} -> {fmt('pruned_gmacs')}"),
        ("wall time", fmt("wall_s", " s", 0)),
    ]
    lat = r.get("latency_plan", {})
    if lat.get("measured_ms") is not None:
        h, w = args.latency_hw
        row = f"{lat['dense_ms']:.2f} -> {lat['measured_ms']:.2f} (target {lat['target_ms']:.2f})"
        rows.insert(-1, (f"latency ms ({h}x{w} in) dense -> pruned", row))
    return table(rows)


if __name__ == "__main__":
    run()
