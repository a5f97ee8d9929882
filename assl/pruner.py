"""The Pruner: ASSL for the user's own training loop.

Data flows one way: model -> trace (groups) -> which units each group loses -> scales inserted
-> align / regularize / stabilize during training -> slim. The Pruner only wires the pieces of
``trace``, ``scales``, ``schedule``, ``alignment``, ``budget`` and ``slim``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from . import alignment
from .budget import Budget
from .config import resolve
from .errors import ASSLError
from .graph import ChannelGroup, Graph
from .scales import WeightScale, insert_scale, output_dim, scale_of
from .schedule import Schedule
from .slim import masked_copy, max_rel_err, slim, tolerance
from .trace import trace

__all__ = ["Pruner"]

logger = logging.getLogger("assl")

# slim() warns when removing the chosen channels changes the output by more than this (relative)
SLIM_CHANGE_WARNING = 0.05

_ORDER = (
    "create the Pruner on the bare model first, then wrap it (DistributedDataParallel) and build the "
    "optimizer over model.parameters(), which then include the scales"
)


class _Layer:
    """A scaled producer: its scale, bias, and the units of its scale entries and channels."""

    def __init__(self, name: str, module: nn.Module, ws: WeightScale, group: ChannelGroup) -> None:
        self.name = name
        self.ws = ws
        bias = getattr(module, "bias", None)
        self.bias: nn.Parameter | None = bias if isinstance(bias, nn.Parameter) else None
        units = group.channels(name)
        n = ws.scale.numel()
        # a grouped ConvTranspose scales out/groups columns; its groups are tied channel by channel
        self.scale_units = torch.as_tensor(units[:n], dtype=torch.long, device=ws.scale.device)
        self.channel_units = torch.as_tensor(units, dtype=torch.long, device=ws.scale.device)
        self.counts = torch.bincount(self.scale_units, minlength=group.size).clamp_min(1).to(ws.scale.dtype)
        self.size = group.size
        self.scale_idx = torch.zeros(0, dtype=torch.long)
        self.bias_idx = torch.zeros(0, dtype=torch.long)

    def unit_scores(self) -> torch.Tensor:
        """``|g|`` averaged over the channels of each unit (differentiable)."""
        g = self.ws.scale
        total = torch.zeros(self.size, dtype=g.dtype, device=g.device).index_add(0, self.scale_units, g.abs())
        return total / self.counts

    def choose(self, units: torch.Tensor) -> None:
        chosen = torch.zeros(self.size, dtype=torch.bool, device=self.scale_units.device)
        chosen[units.to(chosen.device)] = True
        self.scale_idx = chosen[self.scale_units].nonzero().flatten()
        self.bias_idx = chosen[self.channel_units].nonzero().flatten()


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
        ratio: Fraction of output channels to remove: one float for every layer, a mapping
            ``{glob: ratio}`` (first matching pattern wins; layers no pattern matches keep
            everything; a group takes the ratio of its matched layers, which must agree), or a
            :class:`assl.Budget` of parameters or MACs solved for one ratio.
        skip: Globs of layers that keep all their output channels (e.g. ``["*mean*", "*tail*"]``);
            a whole group stays when one of its layers is skipped.
        groups: Same-pruned groups as lists of globs (or comma-separated strings), e.g.
            ``[["model.head.0", "model.body.16", "*body.2"]]``. Checked against the trace; when
            omitted, the trace's coupled groups are used.
        schedule: The phase lengths and penalty numbers (the paper's defaults).
        round_to: Round every kept width up to a multiple of this (8 suits GPU kernels).
        extra_inputs: More input sets for forward code whose path depends on the input.
        approximate_norms: Allow pruning through GroupNorm/LayerNorm (inexact, see trace).

    Raises:
        TypeError: The model is already wrapped, or an argument has the wrong type.
        ValueError: A ratio outside [0, 1), a pattern matching nothing, groups that do not
            match the trace, layers already scaled, an unreachable budget.

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
        round_to: int = 1,
        extra_inputs: Sequence[Any] = (),
        approximate_norms: bool = False,
    ) -> None:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise TypeError(f"the model is already wrapped in {type(model).__name__}: {_ORDER}")
        if not isinstance(round_to, int) or round_to < 1:
            raise ValueError(f"round_to must be an int >= 1, got {round_to!r}")
        self.schedule = schedule if schedule is not None else Schedule()
        if not isinstance(self.schedule, Schedule):
            raise TypeError(f"schedule must be an assl.Schedule, got {type(self.schedule).__name__}")
        for name, m in model.named_modules():
            if scale_of(m) is not None:
                raise ValueError(f"`{name}` already has ASSL scales: a model is pruned by one Pruner at a time")

        self.model = model
        self.example_inputs = example_inputs
        self.approximate = approximate_norms
        self.graph: Graph = trace(model, example_inputs, extra_inputs=extra_inputs, approximate_norms=approximate_norms)
        self.removed, self.aligned = resolve(self.graph, ratio, skip=skip, groups=groups, round_to=round_to)
        if not any(self.removed.values()):
            raise ValueError(
                "nothing to prune: with this ratio, skip list and the channels the trace pins, no group loses a "
                f"channel.\n{self.graph.summary()}"
            )

        for g in self.graph.groups:  # scales start at ||W||: it must be finite
            for n in g.layers if self.removed[g.name] else ():
                weight = model.get_submodule(n).weight
                if isinstance(weight, torch.Tensor) and not bool(torch.isfinite(weight).all()):
                    raise ASSLError(f"the weight of `{n}` contains NaN or inf; the model is left as it is")
        # the only change to the model, after every check
        self._layers: dict[str, list[_Layer]] = {}
        for g in self.graph.groups:
            if self.removed[g.name]:
                self._layers[g.name] = [
                    _Layer(n, model.get_submodule(n), insert_scale(model.get_submodule(n)), g) for n in g.layers
                ]
        self._step = 0
        self._chosen: dict[str, list[int]] = {}
        self._hook: Any = None
        self._slimmed = False
        self._zero: torch.Tensor | None = None
        if self.phase != "align":
            self._choose_all(self._scale_scores)
        else:
            for name in self._layers:
                if name not in self.aligned:
                    self._choose(name, self._scale_scores(name))
        logger.info(
            "Pruner: %d groups lose channels (%d aligned), phase %s", len(self._layers), len(self.aligned), self.phase
        )

    # --- configuration ---------------------------------------------------------------------

    # --- choosing channels -------------------------------------------------------------------

    def _scale_scores(self, name: str) -> torch.Tensor:
        """Group score per unit: each layer's ``|g|`` per unit relative to its mean, summed."""
        self._check_finite(self._layers[name])
        with torch.no_grad():
            return sum(row / row.mean().clamp_min(1e-12) for row in self._unit_table(name))

    def _unit_table(self, name: str) -> torch.Tensor:
        """``|g|`` per unit of group ``name``, one row per layer (differentiable)."""
        return torch.stack([layer.unit_scores() for layer in self._layers[name]])

    def _l1_scores(self, name: str) -> torch.Tensor:
        with torch.no_grad():
            total = None
            for layer in self._layers[name]:
                m = self.model.get_submodule(layer.name)
                weight: torch.Tensor = m.weight  # type: ignore[assignment]
                w = weight.detach().transpose(0, output_dim(m)).flatten(1).abs().sum(1)
                row = torch.zeros(layer.size, dtype=w.dtype, device=w.device).index_add(0, layer.scale_units, w)
                row = row / layer.counts
                total = row / row.mean().clamp_min(1e-12) + (0 if total is None else total)
            assert total is not None
            return total

    def _choose(self, name: str, scores: torch.Tensor) -> None:
        g = self.graph.group(name)
        order = torch.argsort(scores.detach().cpu(), stable=True).tolist()
        chosen = g.pick(order, self.removed[name])
        if len(chosen) < self.removed[name]:
            logger.warning(
                "group %s: only %d of %d units can go without emptying a layer", name, len(chosen), self.removed[name]
            )
        self._chosen[name] = chosen
        units = torch.as_tensor(chosen, dtype=torch.long)
        for layer in self._layers[name]:
            layer.choose(units)

    def _choose_all(self, scorer: Any) -> None:
        for name in self._layers:
            if name not in self._chosen:
                self._choose(name, scorer(name))

    # --- the training-loop interface ---------------------------------------------------------

    @property
    def step_count(self) -> int:
        """Optimizer steps seen so far."""
        return self._step

    @property
    def phase(self) -> str:
        """``"align"``, ``"regularize"``, ``"stabilize"`` or ``"done"``."""
        return self.schedule.phase(self._step, bool(self.aligned))

    @property
    def done(self) -> bool:
        """Whether the schedule is over: time to :meth:`slim`."""
        return self.phase == "done"

    @property
    def penalty(self) -> float:
        """The penalty factor the next :meth:`step` applies to the chosen channels."""
        return self.schedule.penalty(self._step, bool(self.aligned))

    def scale_parameters(self) -> list[nn.Parameter]:
        """The scale Parameters the Pruner added (for a param group of their own)."""
        return [layer.ws.scale for layers in self._layers.values() for layer in layers]

    def penalized_parameters(self) -> list[nn.Parameter]:
        """The parameters the penalty acts on: the scales and the biases of the scaled layers.

        Adam moves a parameter by about its learning rate per step, so a short schedule can give
        these a larger learning rate of their own to drive the chosen channels to zero in time.
        """
        biases = [layer.bias for layers in self._layers.values() for layer in layers if layer.bias is not None]
        return [*self.scale_parameters(), *biases]

    def unit_scales(self, group: str) -> torch.Tensor:
        """``|g|`` of each unit of ``group``, one row per layer in ``graph.group(group).layers`` order.

        A unit's value is the mean over the channels it stands for (one channel for plain
        convolutions). A detached copy: read it to see how the schedule is going, e.g. what is
        left of the chosen units (:meth:`chosen`) before :meth:`slim`.

        Raises:
            ValueError: ``group`` loses no channels (it has no scales).
        """
        if group not in self._layers:
            raise ValueError(f"group {group!r} has no scales; groups that lose channels: {sorted(self._layers)}")
        with torch.no_grad():
            return self._unit_table(group).clone()

    def chosen(self) -> dict[str, list[int]]:
        """Group name -> the units chosen for removal so far (the plan :meth:`slim` applies)."""
        return {k: list(v) for k, v in self._chosen.items()}

    def alignment_loss(self) -> torch.Tensor:
        """The alignment term to add to the loss: non-zero only in the align phase."""
        if self.phase != "align" or self._slimmed:
            if self._zero is None:
                p = self.scale_parameters()[0]
                self._zero = torch.zeros((), dtype=p.dtype, device=p.device)
            return self._zero
        total = sum(alignment.alignment_loss(self._unit_table(name), self.removed[name]) for name in self.aligned)
        return self.schedule.align_weight * total  # type: ignore[return-value]

    def step(self, grad_scale: float | torch.Tensor | None = None) -> None:
        """Apply the penalty to the gradients of the chosen channels and count one step.

        Call after ``backward()`` and before ``optimizer.step()``. With a GradScaler prefer
        :meth:`attach`: called by hand, the step is counted even when GradScaler then skips the
        optimizer step for inf/NaN gradients. By hand, call it after
        ``scaler.unscale_(optimizer)``, or pass the scale the gradients still carry as
        ``grad_scale``.
        """
        if self._slimmed:
            raise ASSLError("the Pruner already slimmed its model: fine-tune the slimmed module without it")
        phase = self.phase
        if phase != "align" and len(self._chosen) < len(self._layers):
            self._choose_all(self._scale_scores)
            logger.info("alignment done at step %d: chosen %s", self._step, self._summary_chosen())
        reg = self.penalty
        if reg > 0:
            if (self._step - self.schedule.bounds(bool(self.aligned))[0]) % self.schedule.reg_interval == 0:
                self._check_finite()
            factor = reg if grad_scale is None else reg * grad_scale
            with torch.no_grad():
                for layers in self._layers.values():
                    for layer in layers:
                        _add_penalty(layer.ws.scale, layer.scale_idx, factor)
                        if layer.bias is not None:
                            _add_penalty(layer.bias, layer.bias_idx, factor)
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
        params = {id(p) for group in optimizer.param_groups for p in group["params"]}
        missing = [layer.name for ls in self._layers.values() for layer in ls if id(layer.ws.scale) not in params]
        if missing:
            raise ValueError(
                f"the optimizer does not update the scales of {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}: {_ORDER} (or add pruner.scale_parameters() as a param group)"
            )
        if self._hook is not None:
            raise ValueError("the Pruner is already attached to an optimizer; call detach() first")

        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            found_inf = getattr(opt, "found_inf", None)
            if isinstance(found_inf, torch.Tensor) and found_inf.item() > 0:
                return  # a fused step GradScaler will skip
            self.step(getattr(opt, "grad_scale", None))

        self._hook = optimizer.register_step_pre_hook(hook)

    def detach(self) -> None:
        """Undo :meth:`attach`."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # --- results -----------------------------------------------------------------------------

    def plan(self) -> dict[str, list[int]]:
        """The plan :meth:`slim` applies; groups not chosen yet are chosen now from ``|g|``."""
        self._choose_all(self._scale_scores)
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
            logger.warning(
                "slimming in phase %s (step %d): the chosen channels were not driven to zero, expect a larger drop",
                self.phase,
                self._step,
            )
        self._check_finite()
        plan = self.plan()
        small = copy.deepcopy(self.model)
        slim(small, self.graph, plan)
        if not self.approximate:
            masked = masked_copy(self.model, self.graph, plan)
            err = max_rel_err(masked, small, self.example_inputs)
            if not err <= tolerance(small):
                raise ASSLError(
                    f"the slimmed model differs from the masked model by {err:.3g} (relative) on the example "
                    f"inputs; the model is untouched. Please report this with the model's code."
                )
        self._slimmed = True
        self.detach()
        logger.info("slimmed: %d -> %d parameters", self.graph.count_params(), _params(small))
        if warn_change:
            self._report_change(small)
        return small

    def _report_change(self, small: nn.Module) -> None:
        """Log how much removing the chosen channels changed the output on the example inputs."""
        change = max_rel_err(self.model, small, self.example_inputs)
        if change > SLIM_CHANGE_WARNING:
            logger.warning(
                "slimming changed the output on the example inputs by %.3g (largest difference over the largest "
                "output): the penalty did not drive the chosen channels to zero (see summary(): |g| chosen vs "
                "kept); fine-tune longer, or raise Schedule.reg_limit or stabilize_iters",
                change,
            )
        else:
            logger.info("slimming changed the output on the example inputs by %.3g (relative)", change)

    def prune_now(self, criterion: str = "l1") -> nn.Module:
        """The one-shot baseline: choose channels now and slim, no regularization.

        Args:
            criterion: ``"l1"`` (weight L1-norm of each filter) or ``"scale"`` (``|g|``), summed
                over the layers of each group relative to their mean, so a group's layers drop
                the same channels.
        """
        if criterion not in ("l1", "scale"):
            raise ValueError(f"criterion must be 'l1' or 'scale', got {criterion!r}")
        self._chosen.clear()
        self._choose_all(self._l1_scores if criterion == "l1" else self._scale_scores)
        self._step = self.schedule.bounds(bool(self.aligned))[2]
        return self._slim(warn_change=False)  # one-shot pruning changes the output by design

    def summary(self) -> str:
        """A table per pruned group: layers, units, units removed, mean |g| of chosen vs kept."""
        rows = [("group", "layers", "channels", "remove", "aligned", "|g| chosen", "|g| kept")]
        for name, layers in self._layers.items():
            with torch.no_grad():
                s = self._unit_table(name).mean(0).cpu()
            chosen = self._chosen.get(name)
            mask = torch.zeros(s.numel(), dtype=torch.bool)
            if chosen:
                mask[chosen] = True
            fmt = lambda t: f"{t.mean():.4f}" if t.numel() else "-"  # noqa: E731
            rows.append(
                (
                    name,
                    str(len(layers)),
                    str(s.numel()),
                    str(self.removed[name]),
                    "yes" if name in self.aligned else "no",
                    fmt(s[mask]) if chosen else "-",
                    fmt(s[~mask]),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        head = f"phase {self.phase}, step {self._step}, penalty {self.penalty:.4g}"
        return "\n".join([head, *lines])

    # --- persistence -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The Pruner's progress as plain data (the scales live in the model's state_dict)."""
        return {
            "version": 1,
            "step": self._step,
            "chosen": self.chosen(),
            "removed": dict(self.removed),
            "aligned": list(self.aligned),
            "schedule": self.schedule.to_dict(),
            "slimmed": self._slimmed,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict`; load the model's and the optimizer's states as well.

        Raises:
            ValueError: The state comes from a Pruner with another configuration.
        """
        if state.get("version") != 1:
            raise ValueError(f"not a Pruner state (version {state.get('version')!r})")
        for key, mine in (
            ("removed", dict(self.removed)),
            ("aligned", list(self.aligned)),
            ("schedule", self.schedule.to_dict()),
        ):
            if state[key] != mine:
                raise ValueError(
                    f"the saved Pruner has another {key} ({state[key]!r}) than this one ({mine!r}): create the "
                    f"Pruner with the same model, ratio, skip, groups and schedule as the run you resume"
                )
        self._step = int(state["step"])
        self._slimmed = bool(state["slimmed"])
        self._chosen.clear()
        for name, units in state["chosen"].items():
            self._chosen[name] = [int(u) for u in units]
            for layer in self._layers[name]:
                layer.choose(torch.as_tensor(self._chosen[name], dtype=torch.long))

    # --- helpers -----------------------------------------------------------------------------

    def _check_finite(self, layers: Iterable[_Layer] | None = None) -> None:
        """Raise, naming the layer, if a scale (of ``layers``, default all) is NaN or inf."""
        for layer in layers if layers is not None else (la for ls in self._layers.values() for la in ls):
            if not bool(torch.isfinite(layer.ws.scale).all()):
                raise ASSLError(
                    f"the scales of `{layer.name}` contain NaN or inf: training diverged (lower the learning "
                    f"rate or the penalty); the model is left as it is"
                )

    def _summary_chosen(self) -> str:
        return ", ".join(f"{k}: {len(v)}" for k, v in self._chosen.items())


def _add_penalty(p: torch.Tensor, idx: torch.Tensor, factor: float | torch.Tensor) -> None:
    """``grad[idx] += factor * p[idx]``: the gradient of ``factor/2 * p^2`` on the chosen entries."""
    if idx.numel() == 0 or not p.requires_grad:
        return
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    idx = idx.to(p.device)
    p.grad.index_add_(0, idx, p.detach().index_select(0, idx) * factor)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
