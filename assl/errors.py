"""The library's exceptions and its warning category.

Every error raised for the user's input derives from :class:`ASSLError` and from the builtin it
refines (``ValueError`` or ``TypeError``), so ``except assl.ASSLError`` catches all of them and
``except ValueError`` code written before keeps working. What the user must act on but that does
not stop the run is an :class:`ASSLWarning`, so ``-W error::assl.ASSLWarning`` and pytest's
filters work on it.
"""

from __future__ import annotations

__all__ = [
    "ASSLError",
    "ASSLWarning",
    "ArgumentError",
    "ArgumentTypeError",
    "CheckpointError",
    "PatternError",
    "PlanError",
    "StateError",
    "TraceError",
]


class ASSLError(Exception):
    """Base class of every error the library raises on purpose.

    Raised as such (not a subclass) when the model or the training run is in a state the library
    cannot go on from: a scale that became NaN, an optimizer that never updates the scales, a
    slimmed model that does not match the masked one.
    """


class ArgumentError(ASSLError, ValueError):
    """An argument has a value the library cannot use (a ratio of 2, a negative step count, ...)."""


class ArgumentTypeError(ASSLError, TypeError):
    """An argument has a type the library does not take (``skip=None``, a wrapped model, ...)."""


class TraceError(ASSLError, ValueError):
    """The model could not be traced with the given example inputs."""


class PlanError(ASSLError, ValueError):
    """A pruning plan does not fit the traced graph (unknown layer, bad index, all channels)."""


class PatternError(ASSLError, ValueError):
    """A glob pattern matches no layer, or layers are grouped in a way the model does not allow."""


class CheckpointError(ASSLError, ValueError):
    """A file or state dict is not one ``assl.save`` writes, or does not fit the model it is loaded into."""


class StateError(ASSLError, ValueError):
    """A saved Pruner or integration state cannot be resumed here (another version or configuration)."""


class ASSLWarning(UserWarning):
    """Something the user should act on: a skip that changes nothing, slimming that changed the output."""
