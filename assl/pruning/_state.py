"""The Pruner's progress as plain data, the checks a saved state must pass to be resumed, and the
watch that notices scales no optimizer updates."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..errors import ASSLError, PlanError, StateError
from ..graph import Graph

__all__ = ["STATE_VERSION", "ScaleWatch", "check_state", "check_version"]

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


def check_state(state: Mapping[str, Any], config: Mapping[str, Any], graph: Graph | None = None) -> None:
    """Raise unless ``state`` is a whole, valid Pruner state from a Pruner configured as ``config``.

    Checked, before anything is applied: every key present, the version, ``step`` a non-negative
    int, ``slimmed`` a bool, ``config``'s keys equal, and ``chosen`` a mapping from groups that
    lose channels to at most as many distinct units as they lose, each one in range and removable
    (checked against ``graph`` when given).

    Raises:
        StateError: Naming the key that is missing, of the wrong type, or differs.
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
    for key, mine in config.items():
        if state[key] != mine:
            raise StateError(
                f"the saved Pruner has another {key} ({state[key]!r}) than this one ({mine!r}): create the "
                f"Pruner with the same model, ratio, skip, groups and schedule as the run you resume"
            )
    _check_chosen(state["chosen"], config.get("removed", {}), graph)


def _check_chosen(chosen: Any, removed: Mapping[str, int], graph: Graph | None) -> None:
    if not isinstance(chosen, Mapping):
        raise StateError(f"state['chosen'] must be a dict of group name -> units, got {type(chosen).__name__}")
    for name, units in chosen.items():
        where = f"state['chosen'][{name!r}]"
        if not removed.get(name):
            pruned = sorted(k for k, v in removed.items() if v)
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


class ScaleWatch:
    """Notices inserted scales that no optimizer updates (an optimizer built before the Pruner).

    An optimizer that holds the scales ``g`` moves their entries the penalty leaves alone (the
    units not chosen) with the task's gradient. :meth:`check` keeps a copy of those entries the
    first time it is called and raises when, at a later call, they are still bit for bit the same
    although they had a non-zero gradient. Once they have moved it stops looking, so a step skipped
    later (GradScaler, a zero learning rate) is never mistaken for the problem. Normalization
    weights are the model's own Parameters, which an optimizer built before the Pruner holds: they
    are not watched.
    """

    def __init__(self) -> None:
        self._first: tuple[int, torch.Tensor, torch.Tensor] | None = None
        self._moved = False
        self._pushed = False  # a non-zero gradient reached the watched entries since the copy

    def check(self, carriers: Iterable[Any], step: int) -> None:
        """Compare the unchosen entries of the carriers' inserted scales with the first call's.

        Raises:
            ASSLError: They have not changed since then.
        """
        if self._moved:
            return
        values, free, grads = [], [], []
        with torch.no_grad():
            for c in carriers:
                if c.kind != "g":
                    continue
                flat = c.scale.detach().reshape(-1)
                mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
                mask[c.scale_idx.to(flat.device)] = False
                values.append(flat.clone())
                free.append(mask)
                grad = c.scale.grad
                grads.append(torch.zeros_like(flat) if grad is None else grad.detach().reshape(-1))
        if not values:
            return
        now, now_free = torch.cat(values), torch.cat(free)
        self._pushed |= bool(torch.cat(grads)[now_free].any())
        if self._first is None:
            self._first = (step, now, now_free)
            return
        since, first, first_free = self._first
        both = first_free & now_free
        if not torch.equal(first[both], now[both]):
            self._moved, self._first = True, None
            return
        if not self._pushed:  # no gradient to apply yet: nothing says an optimizer should have moved them
            return
        raise ASSLError(
            f"the scales have not changed in the {step - since} steps since step {since}: the optimizer does not "
            f"update them. Build the optimizer after creating the Pruner (over model.parameters(), which then "
            f"include the scales), or add pruner.scale_parameters() as a param group"
        )
