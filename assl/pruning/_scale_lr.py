"""A floor on the learning rate of the parameters the penalty acts on (``Schedule.min_scale_lr``).

Adam-type optimizers move every parameter by about the learning rate per step, whatever its
size. A channel's gain (an inserted scale, a normalization weight: about 1) then changes ten to a
hundred times more slowly, relative to its size, than the convolution weights around it (about
0.01-0.1), and over a short schedule it can barely move: at a learning rate of 1e-3, 200 steps
move it by 0.2 at most. Yet the kept channels' gains are what must grow to take over from the
channels that fade. With the floor, while the Pruner steps under Adam or AdamW, the penalized
parameters (:meth:`Pruner.penalized_parameters`) learn at least at the floor's rate: where their
param group's learning rate ``lr`` is lower, the optimizer's update of their kept entries is taken
``floor / lr`` times (``p = before + floor / lr * (p - before)``), exactly the update of a
learning rate ``floor``. The chosen entries keep the optimizer's own step: the penalty drives them
to zero, and what moves them there is what their momentum has left, which a larger step would only
keep alive longer. Only the update is read, so it composes with learning-rate schedulers,
GradScaler and fused or foreach implementations. ``"auto"`` is ``1 / steps`` for a schedule of
``steps`` steps, a reach of a gain's own size over the schedule, and at most 1e-2, where a step
of a gain of about 1 stops being small: 5e-3 for 200 steps, and below any usual learning rate (no
change) for the paper's 160,430. The reach 1 was chosen on validation data (LEDSR 4x32 at 75%
removal: reaches 0.6, 1, 2, 6 and 12 measured).

SGD's step follows the gradient, which for a gain is already large: there a floor only
overshoots (measured), so it acts under Adam and AdamW (and their subclasses) alone.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from ._penalty import chosen_entries
from ._selection import Carrier

__all__ = ["ADAPTIVE", "AUTO_CAP", "AUTO_REACH", "ScaleLR", "resolve_floor"]

logger = logging.getLogger("assl")

AUTO_REACH = 1.0
"""``"auto"``'s floor times the schedule's steps."""
AUTO_CAP = 1e-2
"""The highest floor ``"auto"`` takes (a schedule of fewer than 100 steps)."""
ADAPTIVE = (torch.optim.Adam, torch.optim.AdamW)
"""The optimizers (and their subclasses) the floor acts under."""


def resolve_floor(setting: float | str | None, steps: int) -> float | None:
    """The floor ``setting`` means for a schedule of ``steps`` steps (None: none)."""
    if setting is None:
        return None
    if setting == "auto":
        return min(AUTO_REACH / max(steps, 1), AUTO_CAP)
    return float(setting)


class ScaleLR:
    """Raises the update of ``params()`` to that of the learning rate ``floor`` (see the module).

    :meth:`before` records the parameters once the penalty has acted, right before the update;
    :meth:`after` scales the update of those the stepping optimizer holds. An attached Pruner calls
    :meth:`after` from its optimizer's post-hook; a Pruner stepped by hand :meth:`arm` s a global
    optimizer post-hook that calls it for whichever optimizer steps. An update that never comes (a
    step GradScaler skips) leaves nothing behind: the next :meth:`before` records again.
    """

    def __init__(
        self,
        params: Callable[[], Sequence[torch.Tensor]],
        carriers: Callable[[], Iterable[Carrier]],
        floor: float | None,
    ) -> None:
        self._params = params
        self._carriers = carriers
        self.floor = floor
        self._before: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._handle: Any = None
        self._choice: list[tuple[torch.Tensor, torch.Tensor]] = []  # the carriers' chosen positions, as computed
        self._chosen: dict[int, torch.Tensor] = {}
        self._told: set[int] = set()  # the optimizers already logged (once each: a scheduler moves the rate)
        self._idle = False  # attached to an optimizer the floor never scales: nothing to record

    def chosen(self) -> dict[int, torch.Tensor]:
        """The chosen entries of each penalized parameter (:func:`chosen_entries`), recomputed only when a
        carrier's choice was replaced (the positions are new tensors then; held here, their ids stay theirs)."""
        carriers = list(self._carriers())
        choice = [(c.scale_idx, c.bias_idx) for c in carriers]
        same = len(choice) == len(self._choice) and all(
            a is c and b is d for (a, b), (c, d) in zip(choice, self._choice)
        )
        if not same:
            self._choice, self._chosen = choice, chosen_entries(carriers)
        return self._chosen

    def before(self) -> None:
        """Record the parameters as they are before the update, and which of their entries are chosen."""
        if self.floor is not None and not self._idle:
            chosen = self.chosen()
            self._before = {id(p): (p.detach().clone(), chosen.get(id(p))) for p in self._params()}

    def after(self, optimizer: torch.optim.Optimizer) -> None:
        """Scale the update ``optimizer`` just made to the recorded parameters it holds."""
        if not self._before or self.floor is None:
            return
        adaptive = isinstance(optimizer, ADAPTIVE)
        with torch.no_grad():
            for group in optimizer.param_groups:
                lr = float(group["lr"])
                factor = self.floor / lr if adaptive and 0 < lr < self.floor else 1.0
                for p in group["params"]:
                    recorded = self._before.pop(id(p), None)
                    if recorded is None or factor == 1.0:
                        continue
                    self._tell(optimizer, lr)
                    before, chosen = recorded
                    update = p - before
                    if chosen is not None:
                        update.index_fill_(0, chosen.to(p.device), 0)
                    p.add_(update, alpha=factor - 1.0)

    def _tell(self, optimizer: torch.optim.Optimizer, lr: float) -> None:
        """Log once per optimizer that the floor raises the scales' rate."""
        if id(optimizer) not in self._told:
            self._told.add(id(optimizer))
            logger.info(
                "%s at lr %.3g: the scales learn at %.3g while pruning (Schedule.min_scale_lr; None keeps the "
                "optimizer's rate)",
                type(optimizer).__name__,
                lr,
                self.floor,
            )

    def arm(self) -> None:
        """Call :meth:`after` after every optimizer step anywhere (a Pruner stepped by hand)."""
        if self._handle is not None or self.floor is None:
            return
        me = weakref.ref(self)

        def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            scale_lr = me()
            if scale_lr is not None:
                scale_lr.after(opt)

        self._handle = register_optimizer_step_post_hook(post)
        weakref.finalize(self, self._handle.remove)

    def attach(self, optimizer: torch.optim.Optimizer | None) -> None:
        """The optimizer the Pruner is attached to, whose hook calls :meth:`after` (None: detached).

        The global hook of :meth:`arm` goes; under an optimizer the floor never scales (not
        :data:`ADAPTIVE`) the training step records nothing.
        """
        self._idle = optimizer is not None and not isinstance(optimizer, ADAPTIVE)
        if optimizer is not None:
            self.disarm()

    def disarm(self) -> None:
        """Remove the global hook of :meth:`arm`."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def close(self) -> None:
        """Stop: remove the global hook and forget what was recorded."""
        self.disarm()
        self._before = {}
