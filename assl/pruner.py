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

from .budget import Budget
from .config import check_arguments, resolve
from .errors import ASSLError
from .graph import Graph
from .latency_budget import report_measured
from .liveness import unsilenceable
from .penalty import apply_penalty, check_optimizer, step_pre_hook
from .pinned import shortfall
from .readouts import Readouts
from .reparam import parametrizations_in_eval
from .report import SLIM_CHANGE_WARNING, report_change, warn_early
from .scales import removed_on_error, scaled_state_dict
from .schedule import Schedule
from .selection import Selection
from .slim import slimmed_copy
from .state import STATE_VERSION, ScaleWatch, check_state
from .tracing import trace

__all__ = ["SLIM_CHANGE_WARNING", "Pruner"]

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


class Pruner(Readouts):
    """Aligned Structured Sparsity Learning on any ``nn.Module``, driven by your training loop.

    Creating the Pruner traces the model, decides how many channels each group loses, and
    inserts a weight-normalized scale ``g`` on every producer that will lose channels (the
    model's output is unchanged). Then, each training step: add :meth:`alignment_loss` to the
    loss, call :meth:`step` after ``backward()`` and before ``optimizer.step()`` (or
    :meth:`attach` the optimizer once), stop when :attr:`done`, and call :meth:`slim`.

    Args:
        model: The model to prune (not wrapped in DistributedDataParallel yet).
        example_inputs: What the model is called with (see :func:`assl.trace`).
        ratio: Fraction of output channels to remove: one float for every layer, a mapping
            ``{glob: ratio}`` (first matching pattern wins; layers no pattern matches keep
            everything; a group takes the ratio of its matched layers, which must agree), or a
            :class:`assl.Budget`: parameters or MACs (solved for one ratio), or a latency on the
            example inputs' device (solved per group; :attr:`latency` tells the result).
        skip: Globs of layers that keep all their output channels (e.g. ``["*mean*", "*tail*"]``);
            a whole group stays when one of its layers is skipped.
        groups: Same-pruned groups as lists of globs (or comma-separated strings), e.g.
            ``[["model.head.0", "model.body.16", "*body.2"]]``. Checked against the trace; when
            omitted, the trace's coupled groups are used.
        schedule: The phase lengths and penalty numbers (the paper's defaults).
        round_to: Round every kept width up to a multiple of this (8 suits GPU kernels); with a
            latency budget, ``"auto"`` takes the step of the device's measured latency curve.
        extra_inputs: More input sets for forward code whose path depends on the input.
        approximate_norms: Allow pruning through GroupNorm/LayerNorm (inexact, see trace).

    Raises:
        TypeError: The model is not an ``nn.Module`` (or is wrapped), or an argument's type.
        ValueError: A ratio outside [0, 1), a pattern matching no module, groups that do not
            match the trace, layers already scaled, an unreachable budget, meta tensors.
        ASSLError: Inserting the scales failed: they are removed again, the model is as it was.

    Example:
        >>> pruner = assl.Pruner(model, x, ratio=0.5, skip=["*tail*"])
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
        ratio: float | Mapping[str, float] | Budget,
        skip: str | Iterable[str] = (),
        groups: Sequence[str | Sequence[str]] | None = None,
        schedule: Schedule | None = None,
        round_to: int | str = 1,
        extra_inputs: Sequence[Any] = (),
        approximate_norms: bool = False,
    ) -> None:
        self.schedule = check_arguments(model, schedule, round_to, _ORDER)
        self.model = model
        self.example_inputs = example_inputs
        self.approximate = approximate_norms
        self.graph: Graph = trace(model, example_inputs, extra_inputs=extra_inputs, approximate_norms=approximate_norms)
        self.removed, self.aligned, self.latency = resolve(
            self.graph, ratio, skip=skip, groups=groups, round_to=round_to, model=model, example_inputs=example_inputs
        )
        for name, why in unsilenceable(model, self.graph, self.removed, example_inputs).items():
            warnings.warn(f"group {name} keeps all its channels: {why}", stacklevel=2)
            self.removed[name] = 0
        if not any(self.removed.values()):
            raise ValueError(f"nothing to prune: no penalty can silence what could go\n{self.graph.summary()}")
        self.aligned = [name for name in self.aligned if self.removed[name]]
        if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
            short = shortfall(self.graph, self.removed, float(ratio))
            if short:  # the trace pins so much that the ratio asked means little
                warnings.warn(short, stacklevel=2)
        self._step = 0
        self._hook: Any = None
        self._slimmed = False
        self._hooked, self._watch = False, ScaleWatch()  # inside the optimizer's step pre-hook; frozen scales
        with removed_on_error(model), parametrizations_in_eval(model):  # the only change, after every check
            self._selection = sel = Selection.build(model, self.graph, self.removed)
            for name in sel.layers:  # groups that are not aligned choose now; aligned ones after alignment
                if self.phase != "align" or name not in self.aligned:
                    sel.choose(name, sel.scale_scores(name))
        info = (len(sel.layers), len(self.aligned), self.total_steps)
        logger.info("Pruner: %d groups lose channels (%d aligned), %d steps in all", *info)
        if not self.aligned and self.schedule.align_iters:
            logger.warning(
                "no group is aligned, so the schedule's %d align steps are skipped: it is done after %d steps, "
                "not %d (Schedule.for_steps(n, align=False) fills n steps)",
                self.schedule.align_iters,
                self.total_steps,
                self.schedule.total_steps,
            )

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
        """The alignment term to add to the loss: non-zero only in the align phase."""
        if self.phase != "align" or self._slimmed:
            p = next(self._selection.all_layers()).scale
            return torch.zeros((), dtype=p.dtype, device=p.device)  # a new one: callers may add to it in place
        return self.schedule.align_weight * self._selection.alignment_loss(self.aligned, self.schedule.align_loss)

    def step(self, grad_scale: float | torch.Tensor | None = None) -> None:
        """Apply the penalty to the gradients of the chosen channels and count one step.

        Call after ``backward()`` and before ``optimizer.step()``. With a GradScaler prefer
        :meth:`attach`: called by hand, the step is counted even when GradScaler then skips the
        optimizer step for inf/NaN gradients. By hand, call it after
        ``scaler.unscale_(optimizer)``, or pass the scale the gradients still carry as
        ``grad_scale``.
        """
        if self._slimmed:
            raise ASSLError(_SLIMMED)
        if self._hook is not None and not self._hooked:
            raise ASSLError(_TWICE)
        phase = self.phase
        sel = self._selection
        if phase != "align" and not sel.complete():
            sel.choose_all(sel.scale_scores)
            logger.info("alignment done at step %d: chosen %s", self._step, sel.describe())
        if self._step % self.schedule.reg_interval == 0:
            sel.check_finite()
            self._watch.check(sel.all_layers(), self._step)
        for name, carriers in sel.layers.items():  # free groups from step 0, aligned ones after alignment
            reg = self.schedule.penalty(self._step, name in self.aligned)
            apply_penalty(carriers, reg, self.schedule.penalty_form, grad_scale)
        self._step += 1
        if self.phase != phase:
            logger.info("pruner phase %s -> %s at step %d (penalty %.4g)", phase, self.phase, self._step, self.penalty)

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        """Run :meth:`step` automatically before every ``optimizer.step()``.

        Works with ``GradScaler.step``: ordinary optimizers see unscaled gradients there, fused
        ones still scaled by ``optimizer.grad_scale`` (the penalty is scaled to match), and a
        fused step skipped for inf/NaN gradients is not counted.

        Raises:
            ValueError: The optimizer does not update the scales (built before the Pruner), or
                the Pruner is already attached.
        """
        if self._slimmed:
            raise ASSLError(_SLIMMED)
        check_optimizer(optimizer, self._selection.all_layers(), _ORDER)
        if self._hook is not None:
            raise ValueError("the Pruner is already attached to an optimizer; call detach() first")
        self._hook = step_pre_hook(optimizer, _ByHook(self))

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # --- results -----------------------------------------------------------------------------

    def plan(self) -> dict[str, list[int]]:
        """The plan :meth:`slim` applies; groups not chosen yet are chosen now from ``|g|``."""
        self._selection.choose_all(self._selection.scale_scores)
        return self.chosen()

    def slim(self) -> nn.Module:
        """Fold the scales and remove the chosen channels; return a plain, smaller module.

        The result is checked against the masked model on the example inputs. The model given
        to the Pruner is left as it is (with its scales); the returned module is a new one.
        How much the removal changed the output is logged, as a warning above
        ``SLIM_CHANGE_WARNING`` (5% of the largest output): a sign that the schedule was too
        short or its penalty too weak to drive the chosen channels to zero.

        Raises:
            ASSLError: Called twice, NaN/inf scales, or a slimmed model that does not match the
                masked one (then nothing is returned and the model is untouched).
        """
        return self._slim(warn_change=True)

    def _slim(self, warn_change: bool) -> nn.Module:
        if self._slimmed:
            raise ASSLError("slim() was already called: the slimmed module it returned is the result")
        if not self.done:
            warn_early(self.phase, self._step)
        self._selection.check_finite()
        small = slimmed_copy(self.model, self.graph, self.plan(), self.example_inputs, check=not self.approximate)
        self._slimmed = True
        self.detach()
        logger.info(
            "slimmed: %d -> %d parameters", self.graph.count_params(), sum(p.numel() for p in small.parameters())
        )
        if warn_change:
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
            raise ValueError(f"criterion must be 'l1' or 'scale', got {criterion!r}")
        sel = self._selection
        with _unchanged_on_error(self), parametrizations_in_eval(self.model):  # after slim() too: _slim raises
            sel.chosen.clear()
            sel.choose_all(sel.l1_scores if criterion == "l1" else sel.scale_scores)
            self._step = self.schedule.bounds(bool(self.aligned))[2]
            return self._slim(warn_change=False)  # one-shot pruning changes the output by design

    # --- persistence -------------------------------------------------------------------------

    def load_dense_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load dense weights (a ``state_dict`` of the model without scales) into the model.

        ``model.load_state_dict`` of such a state fails on the layers that carry scales (their
        weight lives in ``parametrizations.weight.original``); this loads it and restarts those
        scales at the loaded weights' norms, so the model computes what the dense weights do.
        Best done before training starts: the Pruner's chosen units stay as they are.

        Raises:
            ASSLError: The Pruner already slimmed its model.
            RuntimeError: From ``load_state_dict``, for keys that fit neither form.
        """
        if self._slimmed:
            raise ASSLError("the Pruner already slimmed its model: load the weights into the slimmed module")
        self.model.load_state_dict(scaled_state_dict(self.model, state))

    def _config(self) -> dict[str, Any]:
        """What a saved state must agree on with this Pruner to be resumed by it."""
        return {"removed": dict(self.removed), "aligned": list(self.aligned), "schedule": self.schedule.to_dict()}

    def state_dict(self) -> dict[str, Any]:
        """The Pruner's progress as plain data (the scales live in the model's state_dict)."""
        return {
            "version": STATE_VERSION,
            "step": self._step,
            "chosen": self.chosen(),
            **self._config(),
            "slimmed": self._slimmed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; load the model's and the optimizer's states as well.

        Raises:
            ValueError: A key missing, of the wrong type or from another configuration, or bad units
                (named; nothing is applied).
        """
        check_state(state, self._config(), self.graph)
        self._step = int(state["step"])
        self._slimmed = bool(state["slimmed"])
        self._selection.chosen.clear()
        for name, units in state["chosen"].items():
            self._selection.set(name, units)


@contextlib.contextmanager
def _unchanged_on_error(pruner: Pruner) -> Iterator[None]:
    """Put the Pruner's step count and chosen units back if the block fails."""
    sel = pruner._selection
    step, chosen = pruner._step, dict(sel.chosen)
    try:
        yield
    except BaseException:
        pruner._step = step
        for name in sel.layers:
            sel.set(name, chosen.get(name, []))
            if name not in chosen:
                del sel.chosen[name]
        raise


class _ByHook:
    """How the optimizer's step pre-hook calls :meth:`Pruner.step`; calls by hand are refused meanwhile."""

    def __init__(self, pruner: Pruner) -> None:
        self.pruner = pruner

    def __call__(self, grad_scale: float | torch.Tensor | None) -> None:
        self.pruner._hooked = True
        try:
            self.pruner.step(grad_scale)
        finally:
            self.pruner._hooked = False
