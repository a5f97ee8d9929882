"""Glob patterns on dotted module names, with the authors' semantics.

``fnmatch`` rules, case-sensitive, ``*`` crosses dots: ``*body.2`` matches
``model.body.3.body.2``, ``*mean*`` matches ``model.sub_mean``. A pattern that matches nothing
is an error, because a typo in a skip list silently prunes the layer it meant to protect.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from fnmatch2 import fnmatchcase2

from .errors import ASSLError

__all__ = ["PatternError", "match", "match_each"]


class PatternError(ASSLError, ValueError):
    """A glob pattern matches no layer, or layers are grouped in a way the model does not allow."""


def _as_list(patterns: str | Iterable[str], what: str) -> list[str]:
    if isinstance(patterns, str):
        return [p for p in patterns.split(",") if p]
    out = list(patterns)
    for p in out:
        if not isinstance(p, str):
            raise TypeError(f"{what} patterns must be strings, got {p!r}")
    return out


def match_each(patterns: str | Iterable[str], names: Sequence[str], *, what: str) -> dict[str, list[str]]:
    """The names each pattern matches, in ``names`` order.

    Args:
        patterns: Globs, or one comma-separated string of globs (as on the authors' command line).
        names: Dotted module names to match against.
        what: What the patterns are for, used in error messages (``"skip"``).

    Raises:
        PatternError: A pattern matches none of ``names``; the message lists close names.
    """
    out: dict[str, list[str]] = {}
    for p in _as_list(patterns, what):
        hits = [n for n in names if fnmatchcase2(n, p)]
        if not hits:
            close = difflib.get_close_matches(p.strip("*"), list(names), n=3, cutoff=0.5)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise PatternError(
                f"{what} pattern {p!r} matches no prunable layer.{hint} Patterns are fnmatch globs on "
                f"dotted module names (case-sensitive, '*' crosses dots), e.g. '*tail*' or 'body.*.conv1'."
            )
        out[p] = hits
    return out


def match(patterns: str | Iterable[str], names: Sequence[str], *, what: str) -> list[str]:
    """The names any of ``patterns`` matches, in ``names`` order (see :func:`match_each`)."""
    hit = {n for hits in match_each(patterns, names, what=what).values() for n in hits}
    return [n for n in names if n in hit]
