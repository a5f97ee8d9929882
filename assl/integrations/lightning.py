"""ASSL in a PyTorch Lightning ``Trainer``: the :class:`ASSLPruning` callback.

``pip install "assl[lightning]"``; ``import assl`` never imports Lightning, only this module does.
How the callback fits the Trainer's loop (Lightning 2.x):

* ``setup`` of a fit: the :class:`~assl.Pruner` is created on the bare network, before the strategy
  wraps it in DistributedDataParallel and before ``configure_optimizers`` runs, so the optimizers
  it returns include the scales (``on_fit_start`` refuses optimizers that do not). ``validate``,
  ``test`` and ``predict`` insert nothing. A fit that fails before the first pruning step (a
  refused optimizer, an error in the first batch) takes the scales out again: the module is as
  it was, its state dict loads into a fresh instance, and a corrected retry starts afresh.
* The penalty: Lightning's automatic optimization runs ``training_step`` and ``backward`` inside
  ``optimizer.step(closure)``, so an optimizer step pre-hook (:meth:`Pruner.attach`) would run
  before this step's backward. :meth:`Pruner.step` runs in ``on_before_optimizer_step`` instead,
  after the closure (DDP has averaged the gradients). Under a GradScaler (``"16-mixed"``)
  Lightning runs the closure first and steps through ``scaler.step``: there the Pruner is
  attached, so that a step GradScaler skips for inf/NaN gradients is not counted.
* The alignment term is added to the loss ``training_step`` returns, so Lightning's division by
  ``accumulate_grad_batches``, the AMP loss scale and DDP's averaging treat it exactly as
  ``loss + pruner.alignment_loss()`` in a plain loop.
* Once the schedule is done, the slimmed network replaces the dense one, DDP wraps it again and
  ``configure_optimizers`` runs again; training goes on as fine-tuning, or the Trainer stops.
* Checkpoints hold the Pruner's progress and, once slimmed, the slimmed sizes: resuming a slimmed
  checkpoint shrinks the fresh network before Lightning loads the weights. Outside the Trainer,
  :func:`load_slimmed` does the same, and so does ``LightningModule.load_from_checkpoint`` for a
  module whose ``on_load_checkpoint`` calls :func:`shrink_to_checkpoint`.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

try:
    import lightning.pytorch as pl
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from lightning.pytorch.plugins.io import TorchCheckpointIO
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy, Strategy
    from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
except ImportError as e:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "assl.integrations.lightning needs PyTorch Lightning 2.x (the `lightning` package): "
        'pip install "assl[lightning]"'
    ) from e

from ..budgets.budget import Budget
from ..errors import ArgumentError, ASSLWarning
from ..pruning._resolve import checked_schedule, ratio_or_budget
from ..pruning.pruner import Pruner
from ..pruning.pruner import _remove as remove_pruner
from ..pruning.schedule import PHASES, Schedule
from ._common import STATE_VERSION, check_state, device_of, find_optimizer, put_in_place, restore, sizes

__all__ = ["ASSLPruning", "load_slimmed", "shrink_to_checkpoint"]

ON_DONE = ("finetune", "stop")
_PATCHED = ("training_step", "on_load_checkpoint")
_NO_SCALES = (
    "ASSLPruning: no optimizer from configure_optimizers updates the scales the Pruner inserted into {}: build the "
    "optimizer inside configure_optimizers from self.parameters(). The callback inserts the scales in its setup "
    "hook, so an optimizer created before (in __init__, or outside the LightningModule) misses them"
)


class ASSLPruning(pl.Callback):
    """Aligned Structured Sparsity Learning inside a Lightning ``Trainer``: prune, slim, fine-tune.

    Add it to ``Trainer(callbacks=[...])``; the LightningModule stays as it is, as long as it
    builds its network in ``__init__`` and its optimizers in ``configure_optimizers`` (from
    ``self.parameters()``). Size the schedule in optimizer steps (``trainer.global_step``):
    ``steps=n``; with ``accumulate_grad_batches=k`` that is ``k * n`` batches.

    Logged through ``pl_module.log`` at every training batch until slimming: ``assl/phase`` (0
    align, 1 regularize, 2 stabilize, 3 done), ``assl/penalty`` and ``assl/steps_left``;
    ``assl/alive`` (the largest liveness, one forward pass on the example inputs) every
    ``liveness_every_n_steps`` optimizer steps; ``assl/params`` once, at slimming. The progress
    bar shows the phase as a word (``assl/phase=regularize``, then ``slimmed``), the penalty and
    ``alive``.

    Args:
        example_inputs: What the pruned network is called with (see :func:`assl.trace`).
        ratio: As for :class:`assl.Pruner`: a float or ``{glob: ratio}``.
        budget: As for :class:`assl.Pruner`: instead of ``ratio``, an :class:`assl.Budget`.
        skip: Globs of layers that keep all their channels, named relative to ``module``, or the
            layers themselves.
        groups: Same-pruned groups as lists of globs (see :class:`assl.Pruner`).
        steps: The number of optimizer steps to prune for, as for :class:`assl.Pruner`: the
            schedule is ``assl.Schedule.for_steps(steps)`` sized to the network's groups.
        schedule: The schedule in optimizer steps (the default is the paper's 160,430 steps);
            with ``steps``, only its options (penalty form, guard, scale-rate floor, alignment), as
            for :class:`assl.Pruner`.
        module: The submodule of the LightningModule to prune, as ``pl_module.get_submodule``
            reads it (``"model"``, ``"net.backbone"``); ``None`` prunes the LightningModule
            itself, traced through its ``forward``.
        on_done: ``"finetune"`` (go on training the slimmed network with fresh optimizers) or
            ``"stop"`` (slim, then stop the Trainer).
        liveness_every_n_steps: How often ``assl/alive`` is measured; 0 never.
        round_to: As for :class:`assl.Pruner`.
        extra_inputs: As for :class:`assl.Pruner`.
        approximate_norms: As for :class:`assl.Pruner`.

    Attributes:
        pruner: The :class:`assl.Pruner`, from ``setup`` on; ``None`` before, and after resuming
            from a checkpoint taken after slimming.
        slimmed: Whether the network has been slimmed.

    Raises:
        ValueError: From ``__init__``, a bad ``on_done``, ``module`` or ``liveness_every_n_steps``;
            during ``fit``, a ``module`` the LightningModule does not have, a strategy other than
            single-device or DDP, or no optimizer that updates the scales.
    """

    def __init__(
        self,
        example_inputs: Any,
        *,
        ratio: float | Mapping[str, float] | None = None,
        budget: Budget | None = None,
        skip: str | nn.Module | Iterable[str | nn.Module] = (),
        groups: Sequence[str | nn.Module | Sequence[str | nn.Module]] | None = None,
        schedule: Schedule | None = None,
        steps: int | None = None,
        module: str | None = None,
        on_done: str = "finetune",
        liveness_every_n_steps: int = 50,
        round_to: int = 1,
        extra_inputs: Sequence[Any] = (),
        approximate_norms: bool = False,
    ) -> None:
        if on_done not in ON_DONE:
            raise ArgumentError(f"on_done must be one of {ON_DONE}, got {on_done!r}")
        if module is not None and (not isinstance(module, str) or not module):
            raise ArgumentError(
                f"module must name a submodule, e.g. 'model', or be None (the whole module): {module!r}"
            )
        every = liveness_every_n_steps
        if not isinstance(every, int) or isinstance(every, bool) or every < 0:
            raise ArgumentError(f"liveness_every_n_steps must be an int >= 0, got {every!r}")
        self.example_inputs = example_inputs
        self.module = module
        self.on_done = on_done
        self.liveness_every_n_steps = every
        target = ratio_or_budget(ratio, budget)
        ratio, budget = (None, target) if isinstance(target, Budget) else (target, None)
        checked_schedule(schedule, steps)  # checked now, not at the fit
        options = {
            "ratio": ratio,
            "budget": budget,
            "skip": skip,
            "groups": groups,
            "schedule": schedule,
            "steps": steps,
            "round_to": round_to,
        }
        self._kwargs: dict[str, Any] = {**options, "extra_inputs": extra_inputs, "approximate_norms": approximate_norms}
        self.pruner: Pruner | None = None
        self.slimmed = False
        self._lm: pl.LightningModule | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._attached = False
        self._alive_step = -1
        self._final_state: dict[str, Any] | None = None
        self._undo: list[tuple[str, Any]] = []
        self._bar: Any = None

    # --- the network ---------------------------------------------------------------------------

    def _where(self) -> str:
        return f"the LightningModule's {self.module!r}" if self.module else "the LightningModule"

    def _target(self, pl_module: pl.LightningModule) -> nn.Module:
        """The network this callback prunes."""
        if self.module is None:
            if type(pl_module).forward is pl.LightningModule.forward:
                raise ArgumentError(
                    f"ASSLPruning traces the LightningModule's forward, which {type(pl_module).__name__} does not "
                    "define: define forward, or name the network to prune, e.g. ASSLPruning(..., module='model')"
                )
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError as e:
            children = [n for n, _ in pl_module.named_children()]
            raise ArgumentError(
                f"ASSLPruning(module={self.module!r}): {type(pl_module).__name__} has no such submodule (its children: "
                f"{children}). Build the network in __init__: the callback creates the Pruner in its setup hook, "
                "which runs before LightningModule.setup and configure_model"
            ) from e

    def alignment_loss(self) -> torch.Tensor:
        """The alignment term (0 outside the align phase). With automatic optimization the callback
        adds it to the loss itself; with manual optimization add it to the loss you backpropagate."""
        pruner = self.pruner
        if pruner is None or self.slimmed:
            return torch.zeros(())
        return pruner.alignment_loss()

    # --- setting up ----------------------------------------------------------------------------

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """For a fit, create the Pruner on the bare network, before the strategy wraps it and before
        the optimizers are configured; hook the alignment term and the restoring of slimmed
        checkpoints. Other stages insert no scales."""
        _check_strategy(trainer.strategy)
        if self._lm is not None and self._lm is not pl_module:
            raise ArgumentError(
                "this ASSLPruning callback already prunes another LightningModule: create one callback per module"
            )
        self._lm = pl_module
        target = self._target(pl_module)
        if stage == "fit" and self.pruner is None and not self.slimmed:
            inputs = move_data_to_device(self.example_inputs, device_of(target))
            with _on_rank_zero(trainer):
                self.pruner = Pruner(target, inputs, **self._kwargs)
            rank_zero_info(f"ASSLPruning: {self.pruner.total_steps} optimizer steps of pruning on {self._where()}")
        self._patch(pl_module)
        self._show_phase(trainer.progress_bar_callback)

    def _show_phase(self, bar: Any) -> None:
        """Add the phase, as a word, to what the progress bar shows (undone in ``teardown``); a
        logged metric would show as a float (``assl/phase=1.000``)."""
        if bar is None or self._bar is not None or "get_metrics" in vars(bar):
            return
        shown = bar.get_metrics

        def get_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
            items = dict(shown(trainer, pl_module))
            if self.slimmed:
                items["assl/phase"] = "slimmed"
            elif self.pruner is not None:
                items["assl/phase"] = self.pruner.phase
            return items

        bar.get_metrics = get_metrics
        self._bar = bar

    def _patch(self, pl_module: pl.LightningModule) -> None:
        """Wrap two methods on the instance (undone in ``teardown``): ``training_step``, to add the
        alignment term to its loss, and ``on_load_checkpoint``, to shrink the network before
        Lightning loads the weights of a slimmed checkpoint."""
        if self._undo:
            return
        step, load = pl_module.training_step, pl_module.on_load_checkpoint

        def training_step(*args: Any, **kwargs: Any) -> Any:
            return self._add_alignment(step(*args, **kwargs))

        def on_load_checkpoint(checkpoint: dict[str, Any]) -> None:
            load(checkpoint)  # the module's own hook first: it may rewrite the checkpoint
            self._restore_slimmed(pl_module, checkpoint)

        self._undo = [(name, pl_module.__dict__.get(name)) for name in _PATCHED]
        if pl_module.automatic_optimization:
            pl_module.__dict__["training_step"] = training_step
        elif self.pruner is not None and self.pruner.phase == "align":
            rank_zero_warn(
                "ASSLPruning: with manual optimization the callback cannot add the alignment term to your loss: "
                "add `callback.alignment_loss()` to the loss you pass to manual_backward"
            )
        pl_module.__dict__["on_load_checkpoint"] = on_load_checkpoint

    def _add_alignment(self, out: Any) -> Any:
        pruner = self.pruner
        if pruner is None or self.slimmed or pruner.phase != "align":
            return out
        if isinstance(out, torch.Tensor):
            return out + pruner.alignment_loss()
        if isinstance(out, Mapping) and isinstance(out.get("loss"), torch.Tensor):
            return {**out, "loss": out["loss"] + pruner.alignment_loss()}
        return out  # None: Lightning skips the step

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Find the optimizer that updates the scales, and put the example inputs where the network is."""
        pruner = self.pruner
        if pruner is None or self.slimmed:
            return
        inputs = move_data_to_device(self.example_inputs, device_of(pruner.model))
        pruner.example_inputs = trainer.precision_plugin.convert_input(inputs)
        pruner.detach()
        self._attached = getattr(trainer.precision_plugin, "scaler", None) is not None
        self._optimizer = find_optimizer(pruner, trainer.optimizers, self._attached, _NO_SCALES.format(self._where()))
        if 0 <= trainer.max_steps < pruner.total_steps:
            rank_zero_warn(
                f"ASSLPruning: the schedule takes {pruner.total_steps} optimizer steps but max_steps is "
                f"{trainer.max_steps}: the network will not be slimmed in this fit; size the schedule with "
                "ASSLPruning(..., steps=n)"
            )

    # --- training ------------------------------------------------------------------------------

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Apply the penalty after backward (gradients final and averaged), before the update."""
        if self.pruner is None or self.slimmed or self._attached:
            return
        if getattr(optimizer, "_optimizer", optimizer) is self._optimizer:  # a LightningOptimizer wraps it
            self.pruner.step()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log the progress; slim once the schedule is done."""
        pruner = self.pruner
        if pruner is None or self.slimmed:
            return
        step, every = pruner.step_count, self.liveness_every_n_steps
        measure = pruner.done or (every > 0 and step % every == 0 and step != self._alive_step)
        p = pruner.progress(liveness=measure)
        if measure:
            self._alive_step = step
        _log(pl_module, "assl/phase", PHASES.index(p.phase))  # the bar shows it as a word (_show_phase)
        _log(pl_module, "assl/penalty", p.penalty, prog_bar=True)
        _log(pl_module, "assl/steps_left", p.steps_left)
        if p.alive is not None:
            _log(pl_module, "assl/alive", p.alive, prog_bar=True)
        if pruner.done:
            self._slim(trainer, pl_module, pruner)

    def _slim(self, trainer: pl.Trainer, pl_module: pl.LightningModule, pruner: Pruner) -> None:
        """Put the slimmed network in place of the dense one and rebuild what held the old parameters."""
        dense = pruner.graph.count_params()
        with _on_rank_zero(trainer):
            small = pruner.slim()
        put_in_place(pl_module, pruner.model, small, pruner.graph.modules)
        self.slimmed = True
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy):  # the old wrapper reduces the old parameters
            strategy.model = pl_module
            strategy.configure_ddp()
        strategy.setup_optimizers(trainer)  # configure_optimizers, for the slimmed parameters
        strategy.setup_precision_plugin()
        params = sum(p.numel() for p in self._target(pl_module).parameters())
        then = "fine-tuning with new optimizers from configure_optimizers" if self.on_done == "finetune" else "stopping"
        rank_zero_info(
            f"ASSLPruning: slimmed {self._where()} at step {pruner.step_count}: {dense:,} -> {params:,} "
            f"parameters; {then}"
        )
        _log(pl_module, "assl/params", params)
        if self.on_done == "stop":
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Say so when the fit ended before the schedule did."""
        pruner = self.pruner
        if pruner is not None and not self.slimmed:
            rank_zero_warn(
                f"ASSLPruning: fit ended at step {pruner.step_count} of {pruner.total_steps} ({pruner.phase}), so "
                "the network is not slimmed: resume from a checkpoint with trainer.fit(..., ckpt_path=...)"
            )

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """As ``teardown``: a failed fit does not call it. A fit that fails before the first pruning
        step (a refused optimizer) takes the scales out again, so the module is as it was."""
        self.teardown(trainer, pl_module, "")
        pruner = self.pruner
        if pruner is not None and not self.slimmed and pruner.step_count == 0:
            remove_pruner(pruner)
            self.pruner = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Detach from the optimizer and give the LightningModule its own methods back."""
        if self.pruner is not None:
            self.pruner.detach()
        for name, before in self._undo:
            if before is None:
                pl_module.__dict__.pop(name, None)
            else:
                pl_module.__dict__[name] = before
        self._undo = []
        if self._bar is not None:
            vars(self._bar).pop("get_metrics", None)
            self._bar = None

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The Pruner's progress; once slimmed, the slimmed sizes of the network too."""
        if self._lm is None:
            return {}
        state: dict[str, Any] = {"version": STATE_VERSION, "module": self.module, "slimmed": self.slimmed}
        state["pruner"] = self.pruner.state_dict() if self.pruner is not None else self._final_state
        if self.slimmed:
            state["sizes"] = sizes(self._target(self._lm))
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the Pruner's progress (the network of a slimmed checkpoint is already restored).

        Raises:
            ValueError: The checkpoint comes from a callback that pruned another module.
        """
        if not state_dict:
            return
        check_state(state_dict, self.module)
        if state_dict["slimmed"]:  # the network was shrunk in on_load_checkpoint, before its weights loaded
            self._final_state = state_dict["pruner"]
        elif self.pruner is not None:
            self.pruner.load_state_dict(state_dict["pruner"])

    def _restore_slimmed(self, pl_module: pl.LightningModule, checkpoint: Mapping[str, Any]) -> None:
        if self.slimmed or not restore(pl_module, checkpoint, self.state_key, self.module):
            return
        if self.pruner is not None:  # its scales are folded now: the schedule is over
            self._final_state = self.pruner.state_dict()
            self.pruner = None
        self.slimmed = True


def shrink_to_checkpoint(pl_module: pl.LightningModule, checkpoint: Mapping[str, Any]) -> bool:
    """Shrink the network of a freshly built module to the sizes a slimmed checkpoint recorded.

    Call it from the LightningModule's ``on_load_checkpoint``, and
    ``MyModule.load_from_checkpoint(path)`` loads checkpoints taken after :class:`ASSLPruning`
    slimmed the network (Lightning builds the dense network, calls the hook, then loads the
    weights). A checkpoint taken before slimming, or without the callback, is left to Lightning.
    With the callback in a Trainer (resuming, validating) it does what the callback does anyway.

    Returns:
        Whether the network was shrunk.

    Raises:
        CheckpointError: The recorded sizes or tensors do not fit the network (it is left as it was).
        StateError: The checkpoint's callback state is of another version.

    Example:
        >>> class Classifier(pl.LightningModule):
        ...     def on_load_checkpoint(self, checkpoint):
        ...         shrink_to_checkpoint(self, checkpoint)
        >>> model = Classifier.load_from_checkpoint("last.ckpt")
    """
    state = checkpoint.get("callbacks", {}).get(ASSLPruning.__qualname__)
    module = state.get("module") if isinstance(state, Mapping) else None
    return restore(pl_module, checkpoint, ASSLPruning.__qualname__, module)


def load_slimmed(
    pl_module: pl.LightningModule, checkpoint: str | os.PathLike[str] | Mapping[str, Any]
) -> pl.LightningModule:
    """Load a checkpoint taken after :class:`ASSLPruning` slimmed the network into a fresh module.

    ``LightningModule.load_from_checkpoint`` builds the dense network, which the slimmed weights do
    not fit (unless the module's ``on_load_checkpoint`` calls :func:`shrink_to_checkpoint`); this
    shrinks it to the sizes the callback saved (with :func:`assl.load`), then loads the weights.
    For inference or export; to train on, resume with ``trainer.fit(..., ckpt_path=)``.

    Args:
        pl_module: A fresh instance of the LightningModule, built as for the run.
        checkpoint: The checkpoint's path, or the checkpoint dict.

    Returns:
        ``pl_module``, slimmed and loaded.

    Raises:
        ValueError: The checkpoint has no ASSLPruning state, or was taken before slimming.
    """
    ckpt = checkpoint if isinstance(checkpoint, Mapping) else TorchCheckpointIO().load_checkpoint(os.fspath(checkpoint))
    if not shrink_to_checkpoint(pl_module, ckpt):
        raise ArgumentError(
            "the checkpoint was not taken after ASSLPruning slimmed the network: resume it with "
            "trainer.fit(..., ckpt_path=...) and the callback, which slims when the schedule is done"
        )
    pl_module.load_state_dict(ckpt["state_dict"])
    return pl_module


# --- helpers -------------------------------------------------------------------------------------


def _check_strategy(strategy: Strategy) -> None:
    if isinstance(strategy, DeepSpeedStrategy) or not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)):
        raise ArgumentError(
            f"ASSLPruning works with single-device training and DDP (strategy='ddp', 'ddp_spawn', ...), not with "
            f"{type(strategy).__name__}: sharding splits the parameters whose channels the Pruner scales and removes"
        )


@contextlib.contextmanager
def _on_rank_zero(trainer: pl.Trainer) -> Iterator[None]:
    """The library's warnings (:class:`assl.ASSLWarning`) from rank 0 only: every rank would say the same."""
    if trainer.global_rank == 0:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ASSLWarning)
        yield


def _log(pl_module: pl.LightningModule, name: str, value: float, prog_bar: bool = False) -> None:
    pl_module.log(name, float(value), prog_bar=prog_bar, on_step=True, on_epoch=False, batch_size=1)
