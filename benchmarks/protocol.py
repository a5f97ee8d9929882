"""The equal-steps protocol's command line, shared by every quality benchmark and study.

One dense model per seed; for every ratio each method starts from a copy of it and gets the same
number ``T = prune_iters + finetune_iters`` of optimizer steps after it (scratch: the dense
steps as well). The flags here are the protocol's and ASSL's; a task adds its own
(:mod:`benchmarks.tasks`) and sets the defaults that suit it. ``--quick`` and ``--smoke`` set
defaults that flags given explicitly override.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from . import cli
from .methods import METHODS
from .tasks import task_module


def _floor(text: str) -> float | str | None:
    """``--min_scale_lr``: ``auto``, ``none`` or a number."""
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    return float(text)


def parser(name: str, task: str, description: str | None, *, methods: bool = True) -> argparse.ArgumentParser:
    """The flags of benchmark ``name``: the protocol's, ASSL's schedule and task ``task``'s, with the task's defaults.

    ``methods=False`` leaves out ``--methods`` and ``--tp_reg`` (for a study that runs ASSL only).
    """
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU-sized: minutes")
    p.add_argument("--smoke", action="store_true", help="seconds: used by the test suite")
    p.add_argument(
        "--ratios", "--ratio", dest="ratios", type=float, nargs="+", help="fractions of each group's channels removed"
    )
    p.add_argument("--seeds", type=int, default=3, help="dense models (seeds 0, 1, ...), each pruned by every method")
    p.add_argument(
        "--first_seed", type=int, default=0, help="the first seed: --seeds 2 --first_seed 3 runs seeds 3 and 4"
    )
    p.add_argument("--lr", type=float, help="Adam's learning rate, for every method and stage")
    p.add_argument(
        "--lr_schedule",
        choices=("constant", "finetune", "whole"),
        help="constant; a cosine to zero over each method's last phase (fine-tuning; scratch's and the dense "
        "model's whole training); or one cosine over all steps after the dense model",
    )
    p.add_argument("--dense_iters", type=int, help="steps of the dense model")
    p.add_argument(
        "--prune_iters", type=int, help="ASSL's schedule (Schedule.for_steps(prune_iters)) and TP's regularization"
    )
    p.add_argument("--finetune_iters", type=int, help="fine-tuning steps after ASSL and TP (one-shot methods get both)")
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        help="weight of a distillation term from the dense model (assl.Teacher, mean squared distance) in the "
        "loss of every method's steps after the dense model: ASSL's and TP's pruning, all fine-tuning, "
        "scratch's whole training (0: off)",
    )
    p.add_argument(
        "--distill_kind",
        default="mse",
        choices=("mse", "l1", "kl"),
        help="the distance of the distillation term: mean squared, mean absolute, or KL divergence of the "
        "softmax over the classes (for classifiers)",
    )
    p.add_argument(
        "--optimizer",
        default="adam",
        choices=("adam", "adamw", "sgd"),
        help="the optimizer of every method's steps after the dense model (adamw: weight decay 0.01; sgd: "
        "momentum 0.9), at --method_lr (and --scale_lr); the dense model trains with Adam at --lr",
    )
    p.add_argument(
        "--method_lr",
        type=float,
        default=None,
        help="the learning rate of every method's steps after the dense model (default: --lr); with "
        "--optimizer sgd, one SGD is used with (e.g. 0.05), while the dense model keeps Adam's --lr",
    )
    p.add_argument(
        "--clip",
        type=float,
        default=0.0,
        help="clip the gradient norm of every method's steps after the dense model to this value "
        "(torch.nn.utils.clip_grad_norm_; 0: no clipping)",
    )
    p.add_argument("--eval_every", type=int, default=0, help="score every this many steps for a curve (0: never)")
    if methods:
        p.add_argument("--methods", nargs="+", choices=list(METHODS), help="tp_* need torch-pruning installed")
        p.add_argument("--tp_reg", type=float, default=None, help="Torch-Pruning's reg (default: the pruner's own)")
    p.add_argument("--threads", type=int, help="torch threads (0: leave torch's default)")
    p.add_argument(
        "--dense_cache",
        default=None,
        help="folder to keep the trained dense models in and reuse them from (keyed by every setting they depend on)",
    )
    add_assl_flags(p)
    task_module(task).add_flags(p)
    cli.add_output(p, name)
    p.set_defaults(**task_module(task).DEFAULTS)
    return p


def add_assl_flags(p: argparse.ArgumentParser) -> None:
    """ASSL's schedule, penalty and learning rate of the scales."""
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
    p.add_argument(
        "--no_guard_kept",
        dest="guard_kept",
        action="store_false",
        help="let the kept units' normalization weights and biases take the task's gradient as it is while the "
        "penalty acts (Schedule(guard_kept=False); the default guards them)",
    )
    p.add_argument(
        "--min_scale_lr",
        type=_floor,
        default="auto",
        help="Schedule(min_scale_lr=...): under Adam and AdamW the parameters ASSL's penalty acts on learn at "
        "least at this rate while it prunes; 'auto' (the default): 1 / the schedule's steps; 'none': the "
        "optimizer's rate",
    )
    p.add_argument(
        "--scale_lr",
        type=float,
        default=None,
        help="a learning rate of their own for the parameters ASSL's penalty acts on while it prunes (default: "
        "--method_lr); a --lr_schedule scales it with the others",
    )
    p.add_argument(
        "--pace_tol",
        type=float,
        default=0.0,
        help="a recovery-paced penalty (benchmarks.pace): its growth slows to --pace_slow while the task loss "
        "is above 1 + this times its level before the fade (0: the schedule's own pace)",
    )
    p.add_argument("--pace_slow", type=float, default=0.25, help="the paced penalty's clock rate while slowed")
    p.add_argument(
        "--grad_guard",
        type=float,
        default=0.0,
        help="during the fade, scale the gradients down to this many times their median norm before it "
        "whenever they exceed it (benchmarks.pace.GradGuard; ASSL only; 0: off)",
    )
    p.add_argument(
        "--min_width",
        type=float,
        default=None,
        help="the share of its units every group keeps under learned widths (assl_learned*, scratch_learned; "
        "default: Budget's 1/8)",
    )
    flags = p.add_argument_group("the schedule's numbers with --schedule flags (and --reg_interval for tp_growingreg)")
    flags.add_argument("--align_iters", type=int, default=500)
    flags.add_argument("--reg_interval", type=int, default=4)
    flags.add_argument("--reg_step", type=float, default=0.005)
    flags.add_argument("--reg_limit", type=float, default=0.5)
    flags.add_argument("--stabilize_iters", type=int, default=1000)


def parse(
    p: argparse.ArgumentParser,
    argv: list[str] | None,
    task: str,
    *,
    quick: Mapping[str, Any] | None = None,
    smoke: Mapping[str, Any] | None = None,
) -> argparse.Namespace:
    """Parse with the task's presets (plus a script's own ``quick`` / ``smoke`` additions); check the values."""
    mod = task_module(task)
    a = cli.parse(p, argv, quick={**mod.QUICK, **(quick or {})}, smoke={**mod.SMOKE, **(smoke or {})})
    if any(not 0 < r < 1 for r in a.ratios):
        p.error(f"--ratios must lie in (0, 1), got {a.ratios}")
    if a.schedule == "for_steps" and a.prune_iters < 10:
        p.error("--prune_iters must be at least 10 (Schedule.for_steps needs a few steps per phase)")
    if not a.pace_tol >= 0 or not 0 < a.pace_slow <= 1:
        p.error(f"--pace_tol must be >= 0 and --pace_slow in (0, 1], got {a.pace_tol} and {a.pace_slow}")
    if not a.grad_guard >= 0:
        p.error(f"--grad_guard must be 0 (off) or a positive factor, got {a.grad_guard}")
    if a.grad_guard > 0 and a.pace_tol > 0:
        p.error("--grad_guard and --pace_tol are separate studies: give one of them")
    if a.min_width is not None and not 0 < a.min_width <= 1:
        p.error(f"--min_width must lie in (0, 1], got {a.min_width}")
    if not a.clip >= 0:
        p.error(f"--clip must be 0 (off) or a positive gradient norm, got {a.clip}")
    if not a.distill >= 0:
        p.error(f"--distill must be 0 (off) or a positive weight, got {a.distill}")
    return a
