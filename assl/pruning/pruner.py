"""The Pruner: ASSL for the user's own training loop.

Data flows one way: model -> trace (groups) -> which units each group loses -> scales inserted
-> align / regularize / stabilize during training -> slim. The Pruner only wires the pieces of
``trace``, ``scales``, ``schedule``, ``alignment``, ``budget`` and ``slim``.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .._reparam import parametrizations_in_eval
from .._slim import slimmed_copy
from ..budgets.budget import Budget
from ..budgets.latency_plan import LatencyPlan, report_measured
from ..errors import ArgumentError, ASSLError, warn
from ..graph import Graph
from ..tracing import trace
from ._liveness import collapsed, levels, unsilenceable
from ._liveness import liveness as measure_liveness
from ._penalty import apply_penalty, check_optimizer, penalty_value, step_hooks
from ._pinned import shortfall
from ._report import SLIM_CHANGE_WARNING, Progress, report_change, report_collapse, summary_table, warn_early
from ._resolve import check_arguments, ratio_or_budget, resolve
from ._scale_lr import ScaleLR, resolve_floor
from ._scales import load_dense, remove_scale, removed_on_error
from ._selection import Scorer, Selection, claim, release
from ._state import STATE_VERSION, OptimizerWatch, check_state
from ._widths import LearnedWidths
from .schedule import Schedule

__all__ = ["SLIM_CHANGE_WARNING", "Progress", "Pruner"]

logger = logging.getLogger("assl")

_ORDER = (
    "create the Pruner on the bare model first, then wrap it (DistributedDataParallel) and build the "
    "optimizer over model.parameters(), which then include the scales"
)
_SLIMMED = "the Pruner already slimmed its model: fine-tune the slimmed module without it"
_TWICE = (
    "the Pruner is attached to an optimizer, whose step() calls pruner.step() itself: do not call it by hand "
    "as well (each step would count twice), or detach() first"
)


class Pruner:
    """Aligned Structured Sparsity Learning on any ``nn.Module``, driven by your training loop.

    Creating the Pruner traces the model, decides how many channels each group loses, and
    inserts a weight-normalized scale ``g`` on every producer that will lose channels (the
    model's output is unchanged). Then, each training step: add :meth:`alignment_loss` to the
    loss, call :meth:`step` after ``backward()`` and before ``optimizer.step()`` (or
    :meth:`attach` the optimizer once), stop when :attr:`done`, and call :meth:`slim`.

    Args:
        model: The model to prune (not wrapped in DistributedDataParallel yet).
        example_inputs: What the model is called with (see :func:`assl.trace`).
        ratio: Fraction of output channels to remove: one float for every layer, or a mapping
            ``{glob: ratio}`` (first matching pattern wins; layers no pattern matches keep
            everything; a group takes the ratio of its matched layers, which must agree).
        budget: Instead of ``ratio``, an :class:`assl.Budget`: parameters or MACs (solved for
            one ratio, or with ``widths="learned"`` shared among the groups by score when
            the chosen channels are fixed), or a latency on the example inputs' device (solved
            per group; :attr:`latency` tells the result). Give exactly one of ``ratio`` and ``budget``.
        skip: Globs of layers that keep all their output channels (e.g. ``["*mean*", "*tail*"]``),
            or the modules themselves (``[model.head[0]]``, turned into their names at once); a
            whole group stays when one of its layers is skipped.
        groups: Same-pruned groups as lists of globs (or comma-separated strings) or modules, e.g.
            ``[["model.head.0", "model.body.16", "*body.2"]]``. Checked against the trace; when
            omitted, the trace's coupled groups are used.
        steps: The number of optimizer steps to prune for: the schedule is
            ``Schedule.for_steps(steps, align=...)``, sized once the trace has told whether any
            group is aligned, so :attr:`done` turns True after exactly ``steps`` steps. The way
            to size pruning to your training.
        schedule: The phase lengths and penalty numbers (the paper's defaults: 160,430 steps).
            With ``steps``, only its options (penalty form, guard, scale-rate floor, alignment
            loss and weight, a ``reg_limit`` it sets): the pruner uses
            ``schedule.sized(steps, align=...)``, e.g. ``steps=2000, schedule=Schedule(guard_kept=False)``.
        round_to: Round every kept width up to a multiple of this (8 suits GPU kernels); with a
            latency budget, ``"auto"`` takes the step of the device's measured latency curve.
        extra_inputs: More input sets for forward code whose path depends on the input.
        approximate_norms: Allow pruning through GroupNorm/LayerNorm (inexact, see trace).

    Raises:
        ArgumentTypeError: The model is not an ``nn.Module`` (or is wrapped), or an argument's type.
        ArgumentError: A ratio outside [0, 1), both or neither of ``ratio`` and ``budget``,
            ``steps`` with a ``schedule`` that sets phase lengths, layers already scaled or carrying another living
            Pruner's channels, an unreachable budget, meta tensors, a normalization layer that
            cannot carry channels (not affine, a parametrized gamma, or a frozen one under the
            gradient-form penalty).
        PatternError: A pattern matches no module, or groups do not match the trace.
        TraceError: The model cannot be traced on the example inputs.
        ASSLError: Inserting the scales failed: they are removed again, the model is as it was.

    Example:
        >>> pruner = assl.Pruner(model, x, ratio=0.5, skip=["*tail*"], steps=2000)
        >>> optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
        >>> for lr, hr in loader:
        ...     loss = l1(model(lr), hr) + pruner.alignment_loss()
        ...     optimizer.zero_grad(); loss.backward(); pruner.step(); optimizer.step()
        ...     if pruner.done: break
        >>> small = pruner.slim()
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        *,
        ratio: float | Mapping[str, float] | None = None,
        budget: Budget | None = None,
        skip: str | nn.Module | Iterable[str | nn.Module] = (),
        groups: Sequence[str | nn.Module | Sequence[str | nn.Module]] | None = None,
        schedule: Schedule | None = None,
        round_to: int | str = 1,
        extra_inputs: Sequence[Any] = (),
        approximate_norms: bool = False,
        steps: int | None = None,
    ) -> None:
        target = ratio_or_budget(ratio, budget)
        self.schedule = check_arguments(model, schedule, round_to, _ORDER, steps=steps)
        self.model = model
        self.example_inputs = example_inputs
        self.approximate_norms = approximate_norms
        self.graph: Graph = trace(model, example_inputs, extra_inputs=extra_inputs, approximate_norms=approximate_norms)
        self.removed: dict[str, int]
        self.aligned: list[str]
        self.latency: LatencyPlan | None
        """What a latency budget chose (:class:`assl.LatencyPlan`); ``None`` for other targets."""
        self.removed, self.aligned, self.latency, options = resolve(
            self.graph, target, skip=skip, groups=groups, round_to=round_to, model=model, example_inputs=example_inputs
        )
        self._learned: LearnedWidths | None = None
        if options is not None and isinstance(target, Budget):
            self._learned = LearnedWidths(target, options, self.removed)
        for name, why in unsilenceable(model, self.graph, self.removed, example_inputs).items():
            warn(f"group {name} keeps all its channels: {why}")
            self.removed[name] = 0
            if self._learned is not None:
                self._learned.drop(name)
        if not any(self.removed.values()):
            raise ArgumentError(f"nothing to prune: no penalty can silence what could go\n{self.graph.summary()}")
        self.aligned = [name for name in self.aligned if self.removed[name]]
        # how loud each group is where read before any change: slim() tells when its kept channels fell silent
        self._start_levels = levels(model, self.graph, [g for g, n in self.removed.items() if n], example_inputs)
        if isinstance(target, (int, float)) and not isinstance(target, bool):
            short = shortfall(self.graph, self.removed, float(target))
            if short:  # the trace pins so much that the ratio asked means little
                warn(short)
        if steps is not None:
            self.schedule = (schedule or Schedule()).sized(steps, align=bool(self.aligned))
        self._step = 0
        self._hook: list[Any] = []
        self._slimmed = False
        self._hooked = False  # inside the attached optimizer's step
        self._closure_penalties: dict[str, float] | None = None  # of a step with a closure, until it ends
        self._unaligned_told = steps is not None  # the schedule's align steps that no group runs
        frozen = self.schedule.penalty_form == "shrink"
        with removed_on_error(model), parametrizations_in_eval(model):  # the only change, after every check
            self._selection = sel = Selection.build(model, self.graph, self.removed, frozen=frozen)
            if self._learned is None:
                for name in sel.layers:  # groups that are not aligned choose now; aligned ones after alignment
                    if self.phase != "align" or name not in self.aligned:
                        sel.choose(name, sel.scale_scores(name))
            elif self.phase != "align":  # learned widths: every group at once, now or after alignment
                self._choose_rest(sel.scale_scores)
        claim((c.module for c in sel.all_layers()), self)
        frozen_carriers = sorted({c.name for c in sel.all_layers() if c.kind == "norm" and not c.scale.requires_grad})
        if frozen_carriers:
            logger.info(
                "frozen normalization layers carry channels; the shrink drives them to zero: %s", frozen_carriers
            )
        scales = {id(c.scale): c.name for c in sel.all_layers() if c.kind == "g"}
        self._watch = OptimizerWatch(model.parameters, scales)
        floor = resolve_floor(self.schedule.min_scale_lr, self.total_steps)
        self._scale_lr = ScaleLR(sel.penalized_parameters, sel.all_layers, floor)
        info = (len(sel.layers), len(self.aligned), self.total_steps)
        logger.info("Pruner: %d groups lose channels (%d aligned), %d steps in all", *info)

    @property
    def approximate(self) -> bool:
        """Deprecated alias of :attr:`approximate_norms`."""
        warnings.warn(
            "Pruner.approximate is deprecated: use Pruner.approximate_norms, the name of the argument",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.approximate_norms

    # --- what the Pruner tells: read-only, callable at any time ------------------------------

    @property
    def phase(self) -> str:
        """``"align"``, ``"regularize"``, ``"stabilize"`` or ``"done"``."""
        return self.schedule.phase(self._step, bool(self.aligned))

    @property
    def penalty(self) -> float:
        """The penalty the next :meth:`step` applies to the chosen channels of aligned groups.

        Groups that are not aligned run the same growth from step 0, so they reach it earlier
        (under learned widths with an align phase, they wait for it as aligned groups do).
        """
        return self.schedule.penalty(self._step, bool(self.aligned))

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole schedule for this model (without an align phase when no
        group is aligned): :attr:`done` turns True after this many calls of :meth:`step`."""
        return self.schedule.bounds(bool(self.aligned))[2]

    def progress(self, *, liveness: bool = False) -> Progress:
        """A small record of where pruning stands; with ``liveness``, also how alive the chosen
        channels still are (one forward pass on the example inputs).

        Example:
            >>> bar.set_postfix(pruner.progress().postfix())
        """
        alive = max(self.liveness().values(), default=0.0) if liveness else None
        left = max(0, self.total_steps - self._step)
        return Progress(self.phase, self._step, left, self.penalty, alive)

    def scale_parameters(self) -> list[nn.Parameter]:
        """The scale Parameters the Pruner added (for a param group of their own)."""
        return [layer.scale for layer in self._selection.all_layers() if layer.kind == "g"]

    def penalized_parameters(self) -> list[nn.Parameter]:
        """The parameters the penalty acts on: the inserted scales ``g`` and the weights (gamma) of
        the normalization layers that carry pruned channels, and the biases that go with them."""
        return self._selection.penalized_parameters()

    def unit_scales(self, group: str) -> torch.Tensor:
        """``|scale|`` of each unit of ``group``, one row per carrier (:meth:`carriers` order).

        A unit's value is the mean over the channels it stands for (one channel for plain
        convolutions). A detached copy: read it to see how the schedule is going, e.g. what is
        left of the chosen units (:meth:`chosen`) before :meth:`slim`.

        Raises:
            ValueError: ``group`` loses no channels (it has no scales).
        """
        return self._selection.unit_scales(group)

    def carriers(self, group: str) -> list[tuple[str, str]]:
        """Where the units of ``group`` are scaled: ``(module, kind)`` per row of :meth:`unit_scales`.

        ``kind`` is ``"g"`` for a weight-normalization scale the Pruner inserted on a producer, and
        ``"norm"`` for the weight (gamma) and bias (beta) of a normalization layer.
        """
        return [(c.name, c.kind) for c in self._selection.layers.get(group, [])]

    def chosen(self) -> dict[str, list[int]]:
        """Group name -> the units chosen for removal so far (the plan :meth:`slim` applies)."""
        return {k: list(v) for k, v in self._selection.chosen.items()}

    def alignment_agreement(self) -> dict[str, float]:
        """Per aligned group: how much its carriers agree on which units to keep, from 0 to 1.

        The mean over pairs of carriers of the share of one's kept units (its highest
        ``|scale|``) that the other keeps too; ``1 - removed / units`` is what chance gives.
        """
        return self._selection.agreement(self.aligned)

    def summary(self) -> str:
        """A table per pruned group: carriers, units, units removed, the agreement of aligned groups,
        mean ``|scale|`` of chosen vs kept units, and the chosen channels' liveness (``kept silent``
        where the kept channels fell silent too since the Pruner was created); under a latency
        budget, its target, prediction and measurements first."""
        head = f"phase {self.phase}, step {self._step}, penalty {self.penalty:.4g}"
        if self.latency is not None:
            head += f"\n{self.latency.describe()}\n{self.latency.describe_widths()}"
        if self._learned is not None:
            head += f"\n{self._learned.describe(self.graph)}"
        silent = collapsed(self.model, self._selection, self.example_inputs, self._start_levels)
        return summary_table(self._selection, self.aligned, self.liveness(), head, silent)

    def liveness(self) -> dict[str, float]:
        """Per group with chosen units: how much signal the chosen channels still carry.

        The RMS of the chosen channels over the RMS of the kept ones at the input of every layer
        that reads them (after any norm, affine, shift or standardization between the carrier and
        it), on the example inputs in eval mode. ``0``: removing them changes nothing; ``1``: as
        loud as the channels that stay.
        """
        return measure_liveness(self.model, self._selection, self.example_inputs)

    # --- the training-loop interface ---------------------------------------------------------

    @property
    def step_count(self) -> int:
        """Optimizer steps seen so far."""
        return self._step

    @property
    def done(self) -> bool:
        """Whether the schedule is over: time to :meth:`slim`."""
        return self.phase == "done"

    def alignment_loss(self) -> torch.Tensor:
        """The alignment term to add to the loss: non-zero only in the align phase.

        Raises:
            ASSLError: In the align phase, a scale is NaN or inf (the layer named).
        """
        if self.phase != "align" or self._slimmed:
            p = next(self._selection.all_layers()).scale
            return torch.zeros((), dtype=p.dtype, device=p.device)  # a new one: callers may add to it in place
        sel = self._selection
        sel.check_finite()
        return self.schedule.align_weight * sel.alignment_loss(self.aligned, self.schedule.align_loss)

    def step(self, grad_scale: float | torch.Tensor | None = None) -> None:
        """Apply the penalty to the gradients of the chosen channels and count one step.

        Call after ``backward()`` and before ``optimizer.step()``. With a GradScaler prefer
        :meth:`attach`: called by hand, the step is counted even when GradScaler then skips the
        optimizer step for inf/NaN gradients. By hand, call it after
        ``scaler.unscale_(optimizer)``, or pass the scale the gradients still carry as
        ``grad_scale``. With ``optimizer.step(closure)``, which recomputes the gradients, use
        :meth:`attach` instead.

        Raises:
            ASSLError: NaN or inf scales (the layer named); the optimizer stepped since the last
                call without updating the inserted scales (built before the Pruner) or with a
                closure; called while attached, or after :meth:`slim`. Nothing is changed then.
        """
        if self._slimmed:
            raise ASSLError(_SLIMMED)
        if self._hook and not self._hooked:
            raise ASSLError(_TWICE)
        if not self._hooked:
            self._watch.step()
        penalties = self._begin_step()
        form = self.schedule.penalty_form
        guard = self.schedule.guard_kept
        for name, carriers in self._selection.layers.items():
            apply_penalty(carriers, penalties[name], form, grad_scale, guard=guard)
        self._scale_lr.before()
        if not self._hooked:
            self._scale_lr.arm()  # the update comes from whichever optimizer steps next
        self._count()

    def _begin_step(self) -> dict[str, float]:
        """The checks and the choice that start a step; the penalty of each group at this step."""
        sel = self._selection
        sel.check_finite()
        if not self._unaligned_told and self._step == 0 and not self.aligned and self.schedule.align_iters:
            self._unaligned_told = True
            warn(
                f"no group of this model is aligned, so the schedule's {self.schedule.align_iters} align steps are "
                f"skipped: it is done after {self.total_steps} steps, not {self.schedule.total_steps}. "
                "Pruner(..., steps=n) sizes the schedule to exactly n steps for the groups the model has"
            )
        if self.phase != "align" and not sel.complete():
            self._choose_rest(sel.scale_scores)
            logger.info("alignment done at step %d: chosen %s", self._step, sel.describe())
        waits = self._learned is not None and bool(self.aligned)  # learned widths are fixed after alignment
        return {name: self.schedule.penalty(self._step, waits or name in self.aligned) for name in sel.layers}

    def _choose_rest(self, scorer: Scorer) -> None:
        """Choose the units of every group that has none chosen yet; under learned widths, first
        allocate how many each group loses (once, with the same scores)."""
        sel = self._selection
        if self._learned is not None and self._learned.allocated is None:
            self.removed.update(self._learned.allocate(self.graph, scorer, list(sel.layers)))
            logger.info("%s (step %d)", self._learned.describe(self.graph), self._step)
        sel.choose_all(scorer)

    def _count(self) -> None:
        phase = self.phase
        self._step += 1
        if self.phase != phase:
            logger.info("pruner phase %s -> %s at step %d (penalty %.4g)", phase, self.phase, self._step, self.penalty)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run :meth:`step` automatically before every ``optimizer.step()``.

        Works with ``GradScaler.step``: ordinary optimizers see unscaled gradients there, fused
        ones still scaled by ``optimizer.grad_scale`` (the penalty is scaled to match), and a
        fused step skipped for inf/NaN gradients is not counted.

        Works with ``optimizer.step(closure)`` (LBFGS, SAM-style optimizers), whose closure zeroes
        and recomputes the gradients, possibly several times: the chosen entries are shrunk before
        the step, the penalty reaches the gradients after every evaluation of the closure, and the
        step counts once, after the update. Under the gradient form the closure's loss then
        includes ``penalty/2 * x**2`` of the chosen entries, the term whose gradient is added.

        Raises:
            ValueError: The optimizer does not update the scales (built before the Pruner), or
                the Pruner is already attached.
        """
        if self._slimmed:
            raise ASSLError(_SLIMMED)
        check_optimizer(optimizer, self._selection.all_layers(), _ORDER)
        if self._hook:
            raise ArgumentError("the Pruner is already attached to an optimizer; call detach() first")
        self._hook = step_hooks(optimizer, _ByHook(self))
        self._watch.close()  # checked here; by-hand steps are refused while attached
        self._scale_lr.attach(optimizer)  # the optimizer's own hook scales its updates now

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        for h in self._hook:
            h.remove()
        self._hook = []
        self._scale_lr.attach(None)

    # --- results -----------------------------------------------------------------------------

    def plan(self) -> dict[str, list[int]]:
        """The plan :meth:`slim` applies; groups not chosen yet are chosen now from ``|g|``."""
        self._choose_rest(self._selection.scale_scores)
        return self.chosen()

    def slim(self) -> nn.Module:
        """Fold the scales and remove the chosen channels; return a plain, smaller module.

        The result is checked against the masked model on the example inputs. The model given
        to the Pruner is left as it is (with its scales); the returned module is a new one.
        How much the removal changed the output is logged; above ``SLIM_CHANGE_WARNING`` (5% of
        the largest output) it is an :class:`assl.ASSLWarning`: a sign that the schedule was too
        short or its penalty too weak to drive the chosen channels to zero. Slimming before
        :attr:`done` warns too.

        Raises:
            ASSLError: Called twice, NaN/inf scales, or a slimmed model that does not match the
                masked one (then nothing is returned and the model is untouched).
        """
        return self._slim(warn_change=True)

    def _slim(self, warn_change: bool) -> nn.Module:
        if self._slimmed:
            raise ASSLError("slim() was already called: the slimmed module it returned is the result")
        never = warn_change and self._step == 0
        if never:
            warn(
                "slim() before any step was counted: neither pruner.step() nor the step() of an attached optimizer "
                "ran, so the chosen channels were never penalized and removing them changes the output. Call "
                "pruner.step() after backward() (or pruner.attach(optimizer) once) in the training loop, or use "
                "prune_now() for one-shot pruning"
            )
        elif not self.done:
            warn_early(self.phase, self._step)
        self._selection.check_finite()
        small = slimmed_copy(self.model, self.graph, self.plan(), self.example_inputs, check=not self.approximate_norms)
        self._slimmed = True
        self.detach()
        self._watch.close()
        self._scale_lr.close()
        logger.info(
            "slimmed: %d -> %d parameters", self.graph.count_params(), sum(p.numel() for p in small.parameters())
        )
        if warn_change and not never:
            silent = collapsed(self.model, self._selection, self.example_inputs, self._start_levels)
            report_collapse(silent, self.schedule.guard_kept)
            report_change(self.model, small, self.example_inputs, self.liveness)
        if self.latency is not None:
            report_measured(self.latency, small, self.example_inputs)
        return small

    def prune_now(self, criterion: str = "l1") -> nn.Module:
        """The one-shot baseline: choose channels now and slim, no regularization.

        Args:
            criterion: ``"l1"`` (weight L1-norm of each filter) or ``"scale"`` (``|g|``), summed
                over the layers of each group relative to their mean, so a group's layers drop
                the same channels.
        """
        if criterion not in ("l1", "scale"):
            raise ArgumentError(f"criterion must be 'l1' or 'scale', got {criterion!r}")
        sel = self._selection
        with _unchanged_on_error(self), parametrizations_in_eval(self.model):  # after slim() too: _slim raises
            sel.chosen.clear()
            if self._learned is not None:
                self._learned.allocated = None  # allocated again, from this criterion's scores
            self._choose_rest(sel.l1_scores if criterion == "l1" else sel.scale_scores)
            self._step = self.schedule.bounds(bool(self.aligned))[2]
            self._unaligned_told = True  # one-shot pruning runs no schedule
            return self._slim(warn_change=False)  # one-shot pruning changes the output by design

    # --- persistence -------------------------------------------------------------------------

    def load_dense_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load dense weights (a ``state_dict`` of the model without scales) into the model.

        ``model.load_state_dict`` of such a state fails on the layers that carry scales (their
        weight lives in ``parametrizations.weight.original``); this loads it and restarts those
        scales at the loaded weights' norms, so the model computes what the dense weights do.
        Best done before training starts: the Pruner's chosen units stay as they are.

        Everything is checked before the first tensor is copied, and a load that fails anyway puts
        the model back: on any error the model is as it was.

        Raises:
            ASSLError: The Pruner already slimmed its model.
            CheckpointError: Not a mapping of names to tensors, a key missing or unexpected, a
                tensor of another shape, or NaN or inf in a floating tensor (each named).
        """
        if self._slimmed:
            raise ASSLError("the Pruner already slimmed its model: load the weights into the slimmed module")
        load_dense(self.model, state)

    def _config(self) -> dict[str, Any]:
        """What a saved state must agree on with this Pruner to be resumed by it (under learned
        widths, the counts the alignment aims at, not the allocated ones)."""
        removed = dict(self.removed) if self._learned is None else dict(self._learned.aim)
        config = {"removed": removed, "aligned": list(self.aligned), "schedule": self.schedule.to_dict()}
        if self._learned is not None:
            config["widths"] = "learned"
        return config

    def state_dict(self) -> dict[str, Any]:
        """The Pruner's progress as plain data (the scales live in the model's state_dict); under
        learned widths also the allocated counts (``None`` before the allocation)."""
        state = {
            "version": STATE_VERSION,
            "step": self._step,
            "chosen": self.chosen(),
            **self._config(),
            "slimmed": self._slimmed,
        }
        if self._learned is not None:
            allocated = self._learned.allocated
            state["allocated"] = None if allocated is None else dict(allocated)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; load the model's and the optimizer's states as well.

        Raises:
            ValueError: A key missing, of the wrong type or from another configuration, or bad units
                (named; nothing is applied).
        """
        guard_acts = any(c.kind == "norm" and c.bias is not None for cs in self._selection.layers.values() for c in cs)
        check_state(state, self._config(), self.graph, guard_acts=guard_acts)
        self._step = int(state["step"])
        self._slimmed = bool(state["slimmed"])
        if self._learned is not None:
            allocated = state.get("allocated")
            self._learned.allocated = None if allocated is None else dict(allocated)
            self.removed.update(allocated if allocated is not None else self._learned.aim)
        self._selection.chosen.clear()
        for name, units in state["chosen"].items():
            self._selection.set(name, units)


def _remove(pruner: Pruner) -> None:
    """Take the Pruner's scales out of its model and forget its claims: the model is as before the
    Pruner, as long as no step changed it. For an integration whose run is refused before training."""
    pruner.detach()
    pruner._watch.close()
    pruner._scale_lr.close()
    for m in pruner.model.modules():
        remove_scale(m)
    release(pruner)
    pruner._slimmed = True  # nothing more to do with it


@contextlib.contextmanager
def _unchanged_on_error(pruner: Pruner) -> Iterator[None]:
    """Put the Pruner's step count and chosen units back if the block fails."""
    sel = pruner._selection
    step, chosen, removed = pruner._step, dict(sel.chosen), dict(pruner.removed)
    allocated = pruner._learned.allocated if pruner._learned is not None else None
    try:
        yield
    except BaseException:
        pruner._step = step
        pruner.removed.update(removed)
        if pruner._learned is not None:
            pruner._learned.allocated = allocated
        for name in sel.layers:
            sel.set(name, chosen.get(name, []))
            if name not in chosen:
                del sel.chosen[name]
        raise


class _ByHook:
    """How the attached optimizer's hooks call the Pruner's step; calls by hand are refused meanwhile."""

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner

    def __call__(self, grad_scale: float | torch.Tensor | None) -> None:
        with self._inside():
            self.pruner.step(grad_scale)

    def begin(self) -> None:
        p = self.pruner
        with self._inside():
            penalties = p._begin_step()
            for name, carriers in p._selection.layers.items():
                apply_penalty(carriers, penalties[name], p.schedule.penalty_form, grads=False)
            p._scale_lr.before()
        p._closure_penalties = penalties

    def after_closure(self, loss: Any) -> Any:
        p, penalties = self.pruner, self.pruner._closure_penalties
        if penalties is None:
            return loss
        form = p.schedule.penalty_form
        extra = []
        for name, carriers in p._selection.layers.items():
            apply_penalty(carriers, penalties[name], form, data=False, guard=p.schedule.guard_kept)
            if form == "gradient":
                extra.append(penalty_value(carriers, penalties[name]))
        terms = [t for t in extra if t is not None]
        if terms and isinstance(loss, torch.Tensor):
            loss = loss + torch.stack([t.to(loss.device) for t in terms]).sum().to(loss.dtype)
        return loss

    def after(self, optimizer: torch.optim.Optimizer) -> None:
        self.pruner._scale_lr.after(optimizer)

    def end(self) -> None:
        p = self.pruner
        if p._closure_penalties is not None:
            p._closure_penalties = None
            p._count()

    @contextlib.contextmanager
    def _inside(self) -> Iterator[None]:
        self.pruner._hooked = True
        try:
            yield
        finally:
            self.pruner._hooked = False
