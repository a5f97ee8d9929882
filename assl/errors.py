"""The library's exceptions: one base class, subclasses of the builtin they refine."""

from __future__ import annotations

__all__ = ["ASSLError", "CheckpointError", "PlanError", "TraceError"]


class ASSLError(Exception):
    """Base class of every error the library raises on purpose."""


class TraceError(ASSLError, ValueError):
    """The model could not be traced with the given example inputs."""


class PlanError(ASSLError, ValueError):
    """A pruning plan does not fit the traced graph (unknown layer, bad index, all channels)."""


class CheckpointError(ASSLError, ValueError):
    """A file is not an ``assl.save`` file, or does not fit the model it is loaded into."""
