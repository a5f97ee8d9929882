"""The pruning schedule as plain numbers: align -> regularize -> stabilize -> done.

Steps are optimizer steps, counted from 0. With ``A = align_iters`` (0 when nothing is aligned),
``n`` the number of penalty increments it takes to pass ``reg_limit`` and ``R = n * reg_interval``:

* steps ``[0, A)``: **align**, the alignment loss is on for same-pruned groups; groups that are
  not aligned choose their channels at step 0 and are already penalized;
* steps ``[A, A + R)``: **regularize**, the penalty of aligned groups at step ``A + j`` is
  ``reg_step * (j // reg_interval + 1)``: it grows by ``reg_step`` every ``reg_interval`` steps
  and reaches ``n * reg_step > reg_limit`` in the last interval (groups that are not aligned run
  the same growth from step 0 and hold their final penalty after step ``R``);
* steps ``[A + R, A + R + stabilize_iters)``: **stabilize**, every penalty stays at ``n * reg_step``;
* from ``A + R + stabilize_iters`` on: **done** (the final penalty keeps applying if you go on).

What the penalty does to the chosen entries (scales, normalization weights and their biases)
is ``Schedule.penalty_form``:

* ``"shrink"`` (default): at every step the chosen entries take no gradient from the task and
  are multiplied by ``1 - penalty``. It acts the same under Adam, AdamW and SGD at any learning
  rate: after ``R`` steps of growth to ``p`` the chosen entries are ``exp(-R * p / 2)`` of what
  they were, and exactly that at any scale of the task loss.
* ``"gradient"`` (the paper's): ``grad += penalty * x`` on the chosen entries before the optimizer
  step, the gradient of ``penalty/2 * x**2`` (Wang et al., "Neural Pruning via Growing
  Regularization", ICLR 2021). Under Adam a parameter moves about one learning rate per step
  whatever the gradient's size, so it needs ``|x| / lr`` steps to reach zero, and then jitters
  at about ``lr``: fine for the paper's 160k steps, too slow for short schedules.

While the penalty acts, ``guard_kept`` (default ``True``) guards the units that stay: where a
group's units are carried by a normalization layer's weight and bias, the part of the kept units'
bias gradient that would lower a bias is dropped before the optimizer step. A normalization layer
after the group's readers makes only the ratio of the kept to the chosen channels matter, so the
task resists the fade by quieting the kept channels: with a normalized reader the task gradient
``g`` satisfies ``g_kept . w_kept = -g_chosen . w_chosen``, and since the chosen channels'
gradient pulls them back up, the kept ones are pushed down, their biases most harmfully (below
the activation's threshold they die). Under Adam that drift is slow; under SGD at a learning rate
of 0.02-0.05 it killed the activations after the kept channels at 85% removal and the network fell
to chance. The weights are not guarded (their common scale is a symmetry of the normalized
readers; guarding them too cost quality elsewhere), nor are inserted scales.

``min_scale_lr`` (default ``"auto"``: ``1 / steps``, at most 1e-2) makes the penalized parameters learn faster
under Adam and AdamW while the Pruner steps. The kept channels' gains must grow to take over from
the channels that fade, and Adam moves a gain of about 1 by about the learning rate per step, far
more slowly relative to its size than the weights around it: too slowly for a short schedule
(:mod:`assl.pruning._scale_lr`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ArgumentError
from ._alignment import ALIGN_LOSSES

__all__ = ["PENALTY_FORMS", "PHASES", "Schedule"]

PHASES = ("align", "regularize", "stabilize", "done")
PENALTY_FORMS = ("shrink", "gradient")

# the paper's phases, as fractions of its 160430 steps: align 17260, regularize 100020, stabilize 43150
_PAPER = (17260, 5001 * 20, 43150)
_SHRINK_DECAY = math.log(1e4)  # for_steps: the chosen entries fall to 1e-4 of their size in regularize
_SHRINK_CAP = 0.3  # for_steps: at most this share per step (faster removal only shocks the kept channels)
_MIN_STEPS = 10
_OPTIONS = ("align_weight", "align_loss", "penalty_form", "guard_kept", "min_scale_lr")  # what sized() keeps
_PHASES = ("align_iters", "reg_interval", "reg_step", "stabilize_iters")  # what for_steps() and sized() size


@dataclass(frozen=True)
class Schedule:
    """The numbers of the ASSL schedule.

    Size a schedule to your training with :meth:`for_steps`. The field defaults are the phase
    lengths and numbers of the authors' released commands for the paper (Zhang, Wang, Qin, Fu,
    "Aligned Structured Sparsity Learning for Efficient Image Super-Resolution", NeurIPS 2021):
    17260 alignment steps, a penalty growing by 1e-4 every 20 steps until it passes 0.5 (5001
    increments, 100020 steps), then 43150 steps at the final penalty: 160430 optimizer steps in
    all (143170 when no group is aligned, :attr:`total_steps`), with the ``"shrink"`` penalty;
    :meth:`paper` is that schedule with the paper's gradient-form penalty, to reproduce its runs.

    Attributes:
        align_iters: Steps of the alignment phase for same-pruned groups (0: no alignment; groups
            then choose their channels from the group-aggregated ``|g|`` at once).
        align_weight: Weight of the alignment loss added to the task loss.
        reg_interval: Steps between two growths of the penalty.
        reg_step: How much the penalty grows each time.
        reg_limit: The penalty grows until it passes this value.
        stabilize_iters: Steps of training at the final penalty.
        penalty_form: ``"shrink"`` or ``"gradient"`` (see the module's documentation).
        align_loss: ``"consensus"`` (pulls each layer's soft mask toward the group's mean mask;
            bounded by 0.25, so ``align_weight=1`` sits beside any task loss) or ``"authors"``
            (the paper's ``-mean(M Mᵀ)``, which does not align; see :mod:`assl.alignment`).
        guard_kept: While a group's penalty acts, the kept units' normalization biases may only
            rise: the part of their gradient that would lower them is dropped (see the module's
            documentation). ``False``: they take the task's gradient as it is (the paper's way,
            and :meth:`paper`'s).
        min_scale_lr: Under Adam and AdamW, while the Pruner steps, the parameters the penalty
            acts on (:meth:`Pruner.penalized_parameters`) learn at least at this rate: where their
            param group's is lower, the optimizer's update of them is scaled up to this rate's.
            ``"auto"``: ``1 / steps`` for a schedule of ``steps`` steps, at most 1e-2 (5e-3 for
            200 steps; no change for the paper's length at usual rates). ``None``: the optimizer's own rate (the
            paper's way, and :meth:`paper`'s). Other optimizers are never changed (see the
            module's documentation).

    Example:
        >>> Schedule.for_steps(2000).total_steps
        2000
        >>> Schedule(align_iters=100, reg_interval=2, reg_step=0.01, reg_limit=0.1, stabilize_iters=50)
    """

    align_iters: int = 17260
    align_weight: float = 1.0
    reg_interval: int = 20
    reg_step: float = 1e-4
    reg_limit: float = 0.5
    stabilize_iters: int = 43150
    penalty_form: str = "shrink"
    align_loss: str = "consensus"
    guard_kept: bool = True
    min_scale_lr: float | str | None = "auto"

    @classmethod
    def for_steps(cls, n: int, *, align: bool = True, **overrides: Any) -> Schedule:
        """A schedule of exactly ``n`` optimizer steps, its phases in the paper's proportions.

        Align, regularize and stabilize take about 11%, 62% and 27% of the steps; the penalty
        grows in up to 50 increments and reaches its limit inside regularize (steps it leaves over
        go to stabilize). With the ``"shrink"`` penalty the limit is sized so that the chosen
        entries fall to 1e-4 of their size by the end of regularize (at most 0.3 per step, reached
        below about 200 steps, where they end less small), and shrink further in stabilize.

        Args:
            n: The number of optimizer steps the Pruner may take before :meth:`Pruner.slim`.
            align: Whether the model has same-pruned groups that run the align phase; without
                them ``n`` is split between regularize and stabilize alone.
            overrides: Any field, e.g. ``align_weight`` or ``penalty_form``; a given
                ``reg_limit`` is kept and the increments are sized to it.

        Raises:
            ValueError: ``n`` below 10, too few steps for the phases; an unknown field, one it
                sizes itself, or a ``reg_limit`` that is not a finite number > 0.

        Example:
            >>> schedule = Schedule.for_steps(600)
            >>> schedule.align_iters, schedule.stabilize_iters, schedule.total_steps
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < _MIN_STEPS:
            raise ArgumentError(f"Schedule.for_steps needs an int n >= {_MIN_STEPS} (a few steps per phase), got {n!r}")
        bad = sorted((set(overrides) - set(cls.__dataclass_fields__)) | (set(overrides) & set(_PHASES)))
        if bad:
            raise ArgumentError(
                f"Schedule.for_steps sizes {sorted(_PHASES)} itself and takes only the other fields "
                f"({', '.join(sorted({*_OPTIONS, 'reg_limit'}))}), got {bad}"
            )
        total = sum(_PAPER)
        a = max(1, round(n * _PAPER[0] / total)) if align else 0
        s = max(1, round(n * _PAPER[2] / total))
        budget = n - a - s
        k = min(50, budget)
        interval = budget // k
        k = budget // interval
        form = overrides.get("penalty_form", "shrink")
        if "reg_limit" in overrides:
            limit = overrides.pop("reg_limit")
            if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
                raise ArgumentError(
                    f"Schedule.for_steps: reg_limit must be a finite number > 0 (the penalty grows until it passes "
                    f"it; for_steps sizes reg_step from it), got {limit!r}"
                )
        elif form == "shrink":
            limit = min(_SHRINK_CAP, 2 * _SHRINK_DECAY / (k * interval))
        else:
            limit = cls.reg_limit
        step = limit / (k - 0.5)  # k increments: (k - 1) * step <= limit < k * step
        return cls(
            align_iters=a,
            reg_interval=interval,
            reg_step=step,
            reg_limit=limit,
            stabilize_iters=n - a - k * interval,
            **overrides,
        )

    def sized(self, n: int, *, align: bool = True) -> Schedule:
        """This schedule's options with its phases sized to exactly ``n`` steps, as :meth:`for_steps` sizes them.

        The options kept are ``align_weight``, ``align_loss``, ``penalty_form``, ``guard_kept``,
        ``min_scale_lr`` and a ``reg_limit`` set away from its default; the phase lengths and the
        penalty's growth come from ``n``. ``Pruner(..., steps=n, schedule=s)`` prunes with
        ``s.sized(n, align=...)`` once the trace has told whether any group is aligned.

        Raises:
            ValueError: ``n`` as :meth:`for_steps` refuses it, or a phase field set away from its
                default (``n`` sizes them; give one or the other).

        Example:
            >>> Schedule(guard_kept=False).sized(2000).total_steps
            2000
        """
        fields = type(self).__dataclass_fields__
        set_ = [f"{k}={getattr(self, k)!r}" for k in _PHASES if getattr(self, k) != fields[k].default]
        if set_:
            raise ArgumentError(
                f"Schedule.sized: {n!r} steps size the phases, but this schedule sets {', '.join(set_)}: "
                "give the step count or the phase lengths, not both"
            )
        options = {k: getattr(self, k) for k in _OPTIONS}
        if self.reg_limit != fields["reg_limit"].default:
            options["reg_limit"] = self.reg_limit
        return type(self).for_steps(n, align=align, **options)

    @classmethod
    def paper(cls) -> Schedule:
        """The authors' schedule with their penalty and alignment loss, the kept units unguarded and the
        optimizer's own rate for the scales: 160430 steps, for their runs."""
        return cls(penalty_form="gradient", align_loss="authors", guard_kept=False, min_scale_lr=None)

    @property
    def total_steps(self) -> int:
        """Optimizer steps from the first to ``done`` when a group is aligned."""
        return self.bounds(True)[2]

    def __post_init__(self) -> None:
        for name in ("align_iters", "stabilize_iters"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ArgumentError(f"Schedule.{name} must be an int >= 0, got {v!r}")
        if not isinstance(self.reg_interval, int) or isinstance(self.reg_interval, bool) or self.reg_interval < 1:
            raise ArgumentError(f"Schedule.reg_interval must be an int >= 1, got {self.reg_interval!r}")
        for name in ("reg_step", "reg_limit", "align_weight"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ArgumentError(f"Schedule.{name} must be a finite number >= 0, got {v!r}")
        if self.reg_step <= 0:
            raise ArgumentError(f"Schedule.reg_step must be > 0, got {self.reg_step!r}")
        if self.align_loss not in ALIGN_LOSSES:
            raise ArgumentError(f"Schedule.align_loss must be one of {ALIGN_LOSSES}, got {self.align_loss!r}")
        if not isinstance(self.guard_kept, bool):
            raise ArgumentError(f"Schedule.guard_kept must be True or False, got {self.guard_kept!r}")
        f = self.min_scale_lr
        number = isinstance(f, (int, float)) and not isinstance(f, bool)
        if f is not None and f != "auto" and not (number and math.isfinite(float(f)) and float(f) > 0):
            raise ArgumentError(f"Schedule.min_scale_lr must be 'auto', None or a finite number > 0, got {f!r}")
        if self.penalty_form not in PENALTY_FORMS:
            raise ArgumentError(f"Schedule.penalty_form must be one of {PENALTY_FORMS}, got {self.penalty_form!r}")
        final = self.increments * self.reg_step
        if self.penalty_form == "shrink" and final >= 1:
            raise ArgumentError(
                f"Schedule: with penalty_form='shrink' the final penalty ({final:.4g}, increments x reg_step) is the "
                f"share of the chosen entries removed per step and must stay below 1: lower reg_limit or reg_step"
            )

    @property
    def increments(self) -> int:
        """How many times the penalty grows: the smallest ``n`` with ``n * reg_step > reg_limit``."""
        return math.floor(self.reg_limit / self.reg_step * (1 + 1e-12)) + 1

    def bounds(self, aligned: bool) -> tuple[int, int, int]:
        """First step of regularize, stabilize and done."""
        a = self.align_iters if aligned else 0
        r = a + self.increments * self.reg_interval
        return a, r, r + self.stabilize_iters

    def phase(self, step: int, aligned: bool) -> str:
        """The phase at ``step`` (``aligned``: whether any group runs the align phase)."""
        a, r, d = self.bounds(aligned)
        return PHASES[(step >= a) + (step >= r) + (step >= d)]

    def penalty(self, step: int, aligned: bool) -> float:
        """The penalty at ``step`` of a group that is ``aligned`` (its growth starts after align)."""
        a, r, _ = self.bounds(aligned)
        if step < a:
            return 0.0
        if step >= r:
            return self.increments * self.reg_step
        return ((step - a) // self.reg_interval + 1) * self.reg_step

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
