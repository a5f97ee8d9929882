"""Command-line options: the authors' flags, spelled as in their commands, plus our own.

The authors' commands run unchanged except for the data and checkpoint paths. Flags that only
made sense in the authors' setup are accepted and say so in ``--help``.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

import assl

# --quick: the whole pipeline on the embedded photos in a few minutes on a 2-core CPU. The pruning
# stage is assl.Schedule.for_steps(400) with the library's default penalty, at the same learning
# rate as every other stage: nothing in it is tuned by hand.
QUICK = {
    "n_resblocks": 4,
    "n_feats": 32,
    "patch_size": 48,
    "batch_size": 8,
    "dense_iters": 2000,
    "prune_steps": 400,
    "finetune_iters": 1000,
    "lr": 5e-4,
    "checkpoint_every": 250,
    "eval_every": 100,
    "print_every": 250,
    "stage_pr": "[0-1000:0.5]",
    # a 32-feature net is too small to keep two threads busy: on a shared 2-core machine the second
    # OpenMP thread mostly waits for a busy core (measured: 62 s with one thread, 125-155 s with two)
    "threads": 1,
}


# the authors' flags that spell a schedule out number by number; --prune_steps sizes one instead
SCHEDULE_FLAGS = (
    "align_iters",
    "update_reg_interval",
    "reg_granularity_prune",
    "reg_upper_limit",
    "stabilize_reg_interval",
)


def parse_stage_pr(text: str) -> list[tuple[int, int, float]]:
    """``"[0-1000:0.80859375]"`` -> ``[(0, 1000, 0.80859375)]``: layer index ranges and ratios.

    Several ranges are comma-separated: ``"[0-10:0.5,11-20:0.3]"``. Layer indices count the
    model's convolutions in definition order, as in the authors' code.

    Raises:
        ValueError: The text is not of that form or a ratio is outside [0, 1).
    """
    body = text.strip()
    if body.startswith("[") and body.endswith("]"):
        body = body[1:-1]
    out = []
    for part in filter(None, (p.strip() for p in body.split(","))):
        m = re.fullmatch(r"(\d+)-(\d+):([0-9.eE+-]+)", part)
        if not m:
            raise ValueError(f"--stage_pr part {part!r} is not of the form FIRST-LAST:RATIO, e.g. [0-1000:0.5]")
        first, last, ratio = int(m.group(1)), int(m.group(2)), float(m.group(3))
        if first > last or not 0 <= ratio < 1:
            raise ValueError(f"--stage_pr part {part!r}: need FIRST <= LAST and a ratio in [0, 1)")
        out.append((first, last, ratio))
    if not out:
        raise ValueError(f"--stage_pr {text!r} names no layer range")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Prune LEDSR with ASSL (the assl library) end to end: dense training or --pre_train, "
        "ASSL pruning, slimming, fine-tuning, evaluation. Without --dir_data it runs on photographs "
        "embedded in scikit-image; --quick makes the whole run take a few minutes on a CPU.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument_group("the authors' flags (spelled as in their commands)")
    a.add_argument("--model", default="LEDSR", choices=["LEDSR"], help="network; only LEDSR is provided")
    a.add_argument("--scale", type=int, default=2, choices=[2, 3, 4], help="super-resolution factor")
    a.add_argument("--patch_size", type=int, default=96, help="HR training patch size (96/144/192 for x2/x3/x4)")
    a.add_argument("--ext", default="sep", help="accepted for compatibility: images are read directly, no .npy cache")
    a.add_argument(
        "--dir_data",
        default=None,
        help="folder with DIV2K_train_HR/ (and DIV2K_train_LR_bicubic/X2/); "
        "default: photographs embedded in scikit-image",
    )
    a.add_argument("--data_train", default="DIV2K", help="dataset name: DIV2K or DF2K (both use the DIV2K layout)")
    a.add_argument("--data_test", default="DIV2K", help="accepted; the test images are --data_range's second part")
    a.add_argument("--data_range", default="1-800/801-810", help="train/test image index ranges under --dir_data")
    a.add_argument("--chop", action="store_true", help="tiled inference for large images (saves memory)")
    a.add_argument("--save_results", action="store_true", help="write the super-resolved test images")
    a.add_argument("--n_resblocks", type=int, default=16)
    a.add_argument("--n_feats", type=int, default=256)
    a.add_argument("--res_scale", type=float, default=1.0)
    a.add_argument("--rgb_range", type=float, default=255.0)
    a.add_argument("--method", default="ASSL", choices=["ASSL", "L1"], help="ASSL, or the one-shot L1-norm baseline")
    a.add_argument("--wn", action="store_true", help="accepted: ASSL always inserts weight-normalized scales")
    a.add_argument("--stage_pr", default="[0-1000:0.80859375]", help="pruning ratio per range of conv indices")
    a.add_argument("--skip_layers", default="*mean*,*tail*", help="globs of layers that keep all channels")
    a.add_argument(
        "--same_pruned_wg_layers",
        default=None,
        help="globs of one same-pruned group (the residual stream); default "
        "model.head.0,model.body.N,*body.2 with N = --n_resblocks; empty: take groups from the trace",
    )
    a.add_argument(
        "--same_pruned_wg_criterion",
        default="reg",
        choices=["reg", "simple"],
        help="reg: run the alignment phase; simple: choose the group's channels from |g| at once",
    )
    a.add_argument(
        "--reg_upper_limit",
        type=float,
        default=0.5,
        help="the penalty grows until it passes this (below 1 with --penalty_form shrink)",
    )
    a.add_argument("--reg_granularity_prune", type=float, default=1e-4, help="penalty growth per interval")
    a.add_argument("--update_reg_interval", type=int, default=20, help="steps between penalty growths")
    a.add_argument("--stabilize_reg_interval", type=int, default=43150, help="steps at the final penalty")
    a.add_argument("--pre_train", default=None, help="dense LEDSR checkpoint (state_dict, with or without 'model.')")
    a.add_argument("--save", default="ledsr_assl", help="output folder (relative paths go under --save_root)")
    a.add_argument("--lr", type=float, default=2e-4, help="fixed Adam learning rate, as the authors prune")
    a.add_argument("--batch_size", type=int, default=16)
    a.add_argument(
        "--epochs", type=int, default=None, help="cap every training stage at this many passes over the data"
    )
    a.add_argument("--seed", type=int, default=1)
    a.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is available")
    a.add_argument("--n_GPUs", type=int, default=1, help="accepted; use torchrun for several GPUs")
    a.add_argument("--print_every", type=int, default=100)
    a.add_argument("--test_only", action="store_true", help="only evaluate --pre_train")

    o = p.add_argument_group("this example's flags")
    o.add_argument("--quick", action="store_true", help="small LEDSR, short stages: the whole pipeline in minutes")
    o.add_argument("--save_root", default="experiment")
    o.add_argument("--dense_iters", type=int, default=None, help="dense training steps (default 0 with --pre_train)")
    o.add_argument("--align_iters", type=int, default=17260, help="steps of the alignment phase")
    o.add_argument(
        "--prune_steps",
        type=int,
        default=None,
        help="size the pruning stage to this many optimizer steps: assl.Schedule.for_steps(N), the paper's "
        "phase proportions and a penalty sized to them, instead of --align_iters and the authors' --reg_* / "
        "--update_reg_interval / --stabilize_reg_interval numbers (--quick: 400)",
    )
    o.add_argument(
        "--penalty_form",
        default="shrink",
        choices=["shrink", "gradient"],
        help="shrink: the chosen channels' scales and biases take no task gradient and shrink by (1 - penalty) "
        "each step, at any learning rate (the library's default); gradient: grad += penalty * x, the paper's, "
        "with the kept units unguarded and the scales at the optimizer's learning rate as in the paper "
        "(Schedule(guard_kept=False, min_scale_lr=None); with the authors' flags, the paper's setting)",
    )
    o.add_argument(
        "--align_loss",
        default="consensus",
        choices=["consensus", "authors"],
        help="consensus: pulls each layer's soft mask toward the group's mean mask (the library's default); "
        "authors: the paper's -mean(M Mt), which does not make the layers agree (with --penalty_form gradient "
        "and the authors' flags, the paper's setting)",
    )
    o.add_argument(
        "--max_prune_iters", type=int, default=None, help="cut the pruning stage short after this many steps"
    )
    o.add_argument(
        "--scale_lr",
        type=float,
        default=None,
        help="learning rate of the ASSL scales and of the pruned layers' biases (default --lr; with the shrink "
        "penalty the library raises it to at least 1 / the pruning steps, Schedule.min_scale_lr). With "
        "gradient, Adam moves a parameter by about lr per step, so a short run needs a larger one to reach zero "
        "in time",
    )
    o.add_argument(
        "--latency",
        type=float,
        default=None,
        help="prune to this fraction of the dense model's latency, measured on this machine on one --latency_size "
        "input (assl.Budget(relative_latency=...), per-layer widths on the device's width step) instead of "
        "--stage_pr",
    )
    o.add_argument(
        "--latency_size",
        default="90x160",
        help="HxW of the low-resolution input the latency is measured on, batch 1 (90x160: a 180x320 x2 output)",
    )
    o.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="weight of a distillation term in the loss of the pruning and fine-tuning stages: the distance from "
        "the network's output to the dense model's (assl.Teacher, the dense weights at the end of the dense "
        "stage, dense.pt on --resume); 0: off",
    )
    o.add_argument(
        "--distill_kind",
        default="mse",
        choices=["mse", "l1"],
        help="the distance of --distill: mean squared (as measured in the benchmarks) or mean absolute",
    )
    o.add_argument("--finetune_iters", type=int, default=1000, help="fine-tuning steps of the slimmed model")
    o.add_argument("--eval_every", type=int, default=1000, help="validation PSNR every this many steps")
    o.add_argument("--checkpoint_every", type=int, default=500, help="save a resumable checkpoint this often")
    o.add_argument("--resume", action="store_true", help="continue from --save's last checkpoint")
    o.add_argument("--test_dir", default=None, help="also evaluate on this folder of HR images (Set5-style)")
    o.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    o.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    o.add_argument("--max_side", type=int, default=None, help="downsize embedded photos to this longest side")
    o.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch (default: torch's; --quick: 1, fastest for its small net on a shared CPU)",
    )
    return p


def schedule(args: argparse.Namespace) -> assl.Schedule:
    """The pruning schedule: ``Schedule.for_steps(--prune_steps)``, or the authors' numbers."""
    align = args.same_pruned_wg_criterion == "reg"
    # the paper's penalty runs as the paper did: kept units unguarded, the scales at the optimizer's rate
    paper = args.penalty_form == "gradient"
    options = {"guard_kept": not paper, "min_scale_lr": None if paper else "auto"}
    if args.prune_steps is not None:
        return assl.Schedule.for_steps(
            args.prune_steps, align=align, penalty_form=args.penalty_form, align_loss=args.align_loss, **options
        )
    return assl.Schedule(
        align_iters=args.align_iters if align else 0,
        reg_interval=args.update_reg_interval,
        reg_step=args.reg_granularity_prune,
        reg_limit=args.reg_upper_limit,
        stabilize_iters=args.stabilize_reg_interval,
        penalty_form=args.penalty_form,
        align_loss=args.align_loss,
        **options,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; ``--quick`` fills every option the user did not give with its quick value.

    Under ``--quick``, giving any of the authors' schedule flags (``SCHEDULE_FLAGS``) builds the
    schedule from those flags instead of ``--prune_steps 400``; the schedule flags not given keep
    their ordinary defaults.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {a.dest for a in parser._actions for s in a.option_strings for t in argv if t == s or t.startswith(s + "=")}
    by_hand = sorted(given.intersection(SCHEDULE_FLAGS))
    if args.quick:
        for key, value in QUICK.items():
            if key not in given and not (key == "prune_steps" and by_hand):
                setattr(args, key, value)
    if "prune_steps" in given and by_hand:
        flags = ", ".join(f"--{k}" for k in by_hand)
        parser.error(f"--prune_steps sizes the whole schedule itself: drop it or drop {flags}")
    try:
        schedule(args)
    except ValueError as e:
        by_flags = args.prune_steps is None and args.penalty_form == "shrink"
        hint = " (--penalty_form gradient takes the paper's numbers as they are)" if by_flags else ""
        parser.error(f"{e}{hint}")
    if args.dense_iters is None:
        args.dense_iters = 0 if args.pre_train else 2000
    args.stage_ranges = parse_stage_pr(args.stage_pr)
    if not args.distill >= 0:
        parser.error(f"--distill is the weight of the distillation term: 0 (off) or more, got {args.distill}")
    if args.latency is not None and not 0 < args.latency < 1:
        parser.error(f"--latency is a fraction of the dense latency in (0, 1), got {args.latency}")
    try:
        args.latency_hw = tuple(int(v) for v in args.latency_size.lower().split("x"))
    except ValueError:
        args.latency_hw = ()
    if len(args.latency_hw) != 2 or min(args.latency_hw) < 1:
        parser.error(f"--latency_size must be HxW, e.g. 90x160, got {args.latency_size!r}")
    if args.latency is not None and args.method != "ASSL":
        parser.error("--latency prunes with ASSL: drop --method L1")
    if args.same_pruned_wg_layers is None:
        args.same_pruned_wg_layers = f"model.head.0,model.body.{args.n_resblocks},*body.2"
    if args.patch_size % args.scale:
        parser.error(f"--patch_size {args.patch_size} must be a multiple of --scale {args.scale}")
    return args
