"""The Pruner's progress as plain data, the checks a saved state must pass to be resumed, and the
watch that notices an optimizer that does not update the scales."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

from ..errors import ASSLError, PlanError, StateError
from ..graph import Graph
from ._penalty import closure_of

__all__ = ["STATE_VERSION", "OptimizerWatch", "check_state", "check_version"]

logger = logging.getLogger("assl")

STATE_VERSION = 1

_KEYS = ("version", "step", "chosen", "removed", "aligned", "schedule", "slimmed")


def check_version(state: object, what: str, version: int) -> None:
    """Raise unless ``state`` is a mapping whose ``"version"`` is ``version``; ``what`` names the kind of state.

    The one version check of the library's saved states: the Pruner's and the integrations'.

    Raises:
        StateError: Not a mapping, or another version (both named).
    """
    if not isinstance(state, Mapping):
        raise StateError(f"not {what}: that is a dict, got {type(state).__name__}")
    if state.get("version") != version:
        raise StateError(f"not {what} of version {version} (state['version'] is {state.get('version')!r})")


def check_state(
    state: Mapping[str, Any], config: Mapping[str, Any], graph: Graph | None = None, *, guard_acts: bool = True
) -> None:
    """Raise unless ``state`` is a whole, valid Pruner state from a Pruner configured as ``config``.

    Checked, before anything is applied: every key present, the version, ``step`` a non-negative
    int, ``slimmed`` a bool, ``config``'s keys equal, and ``chosen`` a mapping from groups that
    lose channels to at most as many distinct units as they lose, each one in range and removable
    (checked against ``graph`` when given).

    Raises:
        StateError: Naming the key that is missing, of the wrong type, or differs.

    A schedule saved before ``guard_kept`` existed ran unguarded: it agrees with this Pruner's
    when that is unguarded too, or when the guard has nothing to act on (``guard_acts`` false: no
    group is carried by a normalization layer with a bias).
    One saved before ``min_scale_lr`` existed ran at the optimizer's own rate: it agrees with
    ``min_scale_lr=None``.
    """
    check_version(state, "a Pruner state", STATE_VERSION)
    missing = [k for k in _KEYS if k not in state]
    if missing:
        raise StateError(f"not a whole Pruner state: key(s) {', '.join(map(repr, missing))} missing")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise StateError(f"state['step'] must be an int >= 0, got {step!r}")
    if not isinstance(state["slimmed"], bool):
        raise StateError(f"state['slimmed'] must be a bool, got {state['slimmed']!r}")
    widths = (state.get("widths", "uniform"), config.get("widths", "uniform"))
    if widths[0] != widths[1]:
        raise StateError(
            f"the saved Pruner has {widths[0]} widths, this one {widths[1]}: create the Pruner with the same "
            f"budget as the run you resume (Budget(widths=...) included)"
        )
    for key, mine in config.items():
        saved = state[key]
        if key == "schedule" and isinstance(saved, Mapping):
            # fields a schedule saved before they existed lacks: what that run did (unguarded, where the
            # guard acts; the optimizer's own rate for the scales)
            then = {"guard_kept": mine.get("guard_kept", False) if not guard_acts else False, "min_scale_lr": None}
            saved = {**then, **saved}
        if saved != mine:
            raise StateError(
                f"the saved Pruner has another {key} ({saved!r}) than this one ({mine!r}): create the "
                f"Pruner with the same model, ratio, skip, groups and schedule as the run you resume"
            )
    removed = config.get("removed", {})
    carried = {name for name, k in removed.items() if k}
    if widths[1] == "learned" and state.get("allocated") is not None:
        removed = _check_allocated(state["allocated"], removed)
    _check_chosen(state["chosen"], removed, carried, graph)


def _check_allocated(allocated: Any, aim: Mapping[str, int]) -> dict[str, int]:
    """``state['allocated']``: units lost per group that may lose units under learned widths."""
    if not isinstance(allocated, Mapping) or set(allocated) != {g for g, k in aim.items() if k}:
        raise StateError(
            f"state['allocated'] must map each group that may lose units ({sorted(g for g, k in aim.items() if k)}) "
            f"to the units it loses, got {allocated!r}"
        )
    for name, k in allocated.items():
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise StateError(f"state['allocated'][{name!r}] must be an int >= 0, got {k!r}")
    return {**dict.fromkeys(aim, 0), **allocated}


def _check_chosen(chosen: Any, removed: Mapping[str, int], carried: set[str], graph: Graph | None) -> None:
    if not isinstance(chosen, Mapping):
        raise StateError(f"state['chosen'] must be a dict of group name -> units, got {type(chosen).__name__}")
    for name, units in chosen.items():
        where = f"state['chosen'][{name!r}]"
        if name not in carried:
            pruned = sorted(carried)
            raise StateError(f"{where}: {name!r} is not a group that loses channels here; those are {pruned}")
        if not isinstance(units, Sequence) or isinstance(units, str):
            raise StateError(f"{where} must be a list of unit indices, got {type(units).__name__}")
        if any(not isinstance(u, int) or isinstance(u, bool) for u in units):
            raise StateError(f"{where} must hold ints, got {list(units)!r}")
        if len(units) > removed[name]:
            raise StateError(f"{where} lists {len(units)} units, but the group loses {removed[name]}")
        if graph is not None:
            try:
                graph.validate({name: units})
            except PlanError as e:
                raise StateError(f"{where}: {str(e).replace(f'plan[{name!r}] ', '')}") from None
        elif len(set(units)) != len(units) or any(u < 0 for u in units):
            raise StateError(f"{where} lists a unit twice or a negative one: {list(units)!r}")


class OptimizerWatch:
    """While the Pruner is stepped by hand, notices the optimizer mistakes that would leave it a no-op.

    * An optimizer that updates the model's weights but not the scales the Pruner inserted: one
      built before the Pruner, over the parameters the model had then. The unchosen scales would
      never learn, and with the gradient form nothing would be pruned.
    * ``optimizer.step(closure)`` after ``pruner.step()``: the closure zeroes and recomputes the
      gradients, wiping the penalty :meth:`Pruner.step` added (:meth:`Pruner.attach` applies it
      after every evaluation of the closure instead).

    The first ``pruner.step()`` arms it: global optimizer step hooks (``torch.optim``) record which
    optimizers step and what they hold; each later ``pruner.step()`` judges what stepped since, before
    it changes anything, and the watch ends once an optimizer that holds every scale has stepped
    without either mistake. What it judges is what the optimizers hold, never whether the values
    moved: a learning rate of 0 (a warmup), a step GradScaler skips or a frozen layer is no alarm.
    Optimizers that hold none of the model's parameters (a GAN's other network) are ignored, and
    scales spread over several optimizers are fine once each has stepped.
    """

    def __init__(self, params: Callable[[], Iterable[torch.Tensor]], scales: Mapping[int, str]) -> None:
        self._params = params  # the model's parameters, scales included
        self._scales = dict(scales)  # id of each inserted scale -> the layer it scales
        self._handles: list[Any] = []
        self._over = not self._scales  # nothing inserted: no optimizer can miss the scales
        self._model: set[int] = set()
        self._seen: set[int] = set()  # the scales an optimizer that stepped holds
        self._stepped = False  # an optimizer holding the model's parameters stepped since the last judgment
        self._pending = False  # pruner.step() ran since the last step of an optimizer holding scales
        self._closure = ""  # the optimizer that took a closure after pruner.step()

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def step(self) -> None:
        """Called by every ``pruner.step()`` by hand, before it changes anything.

        Raises:
            ASSLError: Since the last call, an optimizer updated the model but not all the scales
                and none updated the others, or an optimizer holding them was given a closure.
        """
        if self._over:
            return
        if not self._handles:
            self._arm()
        else:
            self._judge()
        self._pending = True

    def close(self) -> None:
        """Stop watching (an attached optimizer is checked by :meth:`Pruner.attach` itself)."""
        self._over = True
        for h in self._handles:
            h.remove()
        self._handles = []

    def _arm(self) -> None:
        self._model = {id(p) for p in self._params()}
        me = weakref.ref(self)

        def pre(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            watch = me()
            if watch is not None:
                watch._saw(opt, closure_of(args, kwargs) is not None)

        def post(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            watch = me()
            if watch is not None and any(id(p) in watch._scales for p in _held(opt)):
                watch._pending = False

        self._handles = [register_optimizer_step_pre_hook(pre), register_optimizer_step_post_hook(post)]
        for h in self._handles:
            weakref.finalize(self, h.remove)

    def _saw(self, opt: torch.optim.Optimizer, closure: bool) -> None:
        held = {id(p) for p in _held(opt)}
        if not held & self._model:
            return
        self._stepped = True
        scales = held & self._scales.keys()
        self._seen |= scales
        if scales and closure and self._pending:
            self._closure = type(opt).__name__

    def _judge(self) -> None:
        missing = [name for i, name in self._scales.items() if i not in self._seen]
        closure, stepped = self._closure, self._stepped
        self._closure, self._stepped = "", False
        if closure:
            raise ASSLError(
                f"{closure}.step(closure) ran after pruner.step(): the closure recomputes the gradients and wipes the "
                "penalty pruner.step() added to them. With a closure (LBFGS, SAM-style optimizers) use "
                "pruner.attach(optimizer) instead of calling pruner.step(): the penalty then follows every evaluation "
                "of the closure, and the step counts once"
            )
        if not missing:
            self.close()
        elif stepped:
            listed = ", ".join(f"`{n}`" for n in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise ASSLError(
                f"an optimizer stepped that updates the model but not the scales the Pruner inserted into {listed}, "
                "and no optimizer updates those: it was built before the Pruner. Build the optimizer after creating "
                "the Pruner (over model.parameters(), which then include the scales), or add "
                "pruner.scale_parameters() as a param group"
            )


def _held(opt: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for group in opt.param_groups:
        yield from group["params"]
