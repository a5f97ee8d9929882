"""The Pruner's progress as plain data, and the checks a saved state must pass to be resumed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["STATE_VERSION", "check_state"]

STATE_VERSION = 1


def check_state(state: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """Raise unless ``state`` comes from a Pruner configured as ``config`` describes.

    Raises:
        ValueError: Not a Pruner state, or another configuration (naming the key that differs).
    """
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"not a Pruner state (version {state.get('version')!r})")
    for key, mine in config.items():
        if state[key] != mine:
            raise ValueError(
                f"the saved Pruner has another {key} ({state[key]!r}) than this one ({mine!r}): create the "
                f"Pruner with the same model, ratio, skip, groups and schedule as the run you resume"
            )
