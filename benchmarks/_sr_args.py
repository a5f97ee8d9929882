"""The command line that ``quality.py`` and ``alignment_study.py`` share: flags, presets, device.

``--quick`` and ``--smoke`` set defaults (CPU-sized, seconds) that flags given explicitly override.
"""

from __future__ import annotations

import argparse
import platform

import torch

METHODS = ("assl", "assl_noalign", "l1", "l1_authors", "random", "scratch", "tp_groupnorm", "tp_growingreg")
DEFAULT_METHODS = METHODS[:6]  # Torch-Pruning's two only when asked for (an optional install)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The flags of the quality benchmark (shared by ``alignment_study.py``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized model and steps (tens of minutes)")
    p.add_argument("--smoke", action="store_true", help="seconds: used by the test suite")
    p.add_argument("--dir_data", default=None)
    p.add_argument("--data_range", default="1-800/801-810")
    p.add_argument(
        "--val_range", default=None, help="DIV2K indices for --eval_split val (must not overlap the training range)"
    )
    p.add_argument(
        "--eval_split",
        default="test",
        choices=("test", "val"),
        help="report on the held-out test images, or on the validation split used to choose settings",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--blocks", type=int, default=16)
    p.add_argument("--feats", type=int, default=64)
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--patch_size", type=int, default=96)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-4, help="Adam's learning rate, for every method and stage")
    p.add_argument(
        "--scale_lr",
        type=float,
        default=None,
        help="a learning rate of their own for the parameters ASSL's penalty acts on (default: --lr)",
    )
    p.add_argument("--dense_iters", type=int, default=10000)
    p.add_argument(
        "--prune_iters",
        type=int,
        default=3000,
        help="pruning steps: ASSL's schedule is Schedule.for_steps(prune_iters) (with --schedule flags, a cap)",
    )
    p.add_argument("--finetune_iters", type=int, default=5000)
    p.add_argument(
        "--schedule",
        default="for_steps",
        choices=("for_steps", "flags"),
        help="for_steps: assl.Schedule.for_steps(--prune_iters), the library's way to size a schedule; "
        "flags: --align_iters, --reg_interval, --reg_step, --reg_limit and --stabilize_iters as given",
    )
    p.add_argument(
        "--penalty_form",
        default="shrink",
        choices=("shrink", "gradient"),
        help="ASSL's penalty: the library's default (shrink) or the paper's (gradient)",
    )
    p.add_argument("--align_weight", type=float, default=1.0)
    flags = p.add_argument_group("the schedule's numbers with --schedule flags")
    flags.add_argument("--align_iters", type=int, default=500)
    flags.add_argument("--reg_interval", type=int, default=4)
    flags.add_argument("--reg_step", type=float, default=0.005)
    flags.add_argument("--reg_limit", type=float, default=0.5)
    flags.add_argument("--stabilize_iters", type=int, default=1000)
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=METHODS,
        help="tp_groupnorm / tp_growingreg need torch-pruning installed",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--dense_cache",
        default=None,
        help="folder to keep the trained dense models in and reuse them from (keyed by every setting they depend on)",
    )
    p.add_argument("--out", default="runs/quality")
    return p


QUICK = {
    "blocks": 4,
    "feats": 32,
    "patch_size": 48,
    "batch_size": 8,
    "lr": 5e-4,
    "dense_iters": 2000,
    "prune_iters": 400,
    "finetune_iters": 600,
    "align_iters": 100,
    "reg_interval": 4,
    "reg_step": 0.02,
    "stabilize_iters": 168,
}
SMOKE = {
    "blocks": 1,
    "feats": 4,
    "patch_size": 16,
    "batch_size": 2,
    "dense_iters": 3,
    "prune_iters": 10,
    "finetune_iters": 2,
    "align_iters": 2,
    "reg_interval": 1,
    "reg_step": 0.25,
    "stabilize_iters": 1,
    "seeds": 1,
    "methods": ["assl", "l1", "scratch"],
}


def parse_args(
    p: argparse.ArgumentParser, argv: list[str] | None, smoke: dict | None = None, quick: dict | None = None
) -> argparse.Namespace:
    """Parse with ``--quick`` / ``--smoke`` as defaults (``quick`` and ``smoke``: a script's own
    additions to them): flags given explicitly still win."""
    pre, _ = p.parse_known_args(argv)
    if pre.quick:
        p.set_defaults(**{**QUICK, **(quick or {})})
    if pre.smoke:
        p.set_defaults(**{**SMOKE, **(smoke or {})})
    return p.parse_args(argv)


def configure(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``; return the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def describe(args: argparse.Namespace, device: torch.device) -> str:
    """One line on the model, budget, hardware and split, for the header of the output."""
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return (
        f"LEDSR {args.blocks}x{args.feats} x{args.scale}, ratio {args.ratio}, {what}, torch {torch.__version__}, "
        f"{args.seeds} seeds, scored on the {args.eval_split} images; ASSL: {args.penalty_form} penalty, "
        f"schedule {args.schedule}"
    )
