"""The library's exceptions and its warning category.

Every error raised for the user's input derives from :class:`ASSLError` and from the builtin it
refines (``ValueError`` or ``TypeError``), so ``except assl.ASSLError`` catches all of them and
``except ValueError`` code written before keeps working. What the user must act on but that does
not stop the run is an :class:`ASSLWarning`, so ``-W error::assl.ASSLWarning`` and pytest's
filters work on it. The library issues it through :func:`warn`, attributed to the user's line
that led to it; what is only information goes to the ``"assl"`` logger.
"""

from __future__ import annotations

import os
import sys
import warnings

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


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn(message: str) -> None:
    """Issue ``message`` as an :class:`ASSLWarning` attributed to the first caller outside the package.

    So the warning names the user's line (``pruner.slim()``, ``assl.Pruner(...)``), and filters
    by module or ``-W error::assl.ASSLWarning`` apply to it as to any warning.
    """
    frame, level = sys._getframe(1), 2  # level 2: the caller of warn()
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ASSLWarning, stacklevel=level)
