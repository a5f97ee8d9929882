"""Glob patterns on dotted module names, with the authors' semantics.

``fnmatch`` rules, case-sensitive, ``*`` crosses dots: ``*body.2`` matches
``model.body.3.body.2``, ``*mean*`` matches ``model.sub_mean``. A pattern matches the whole name
and nothing more: ``blocks.a`` does not match ``blocks.a/b`` (a ``ModuleDict`` key may hold a
``/``), and a ``/`` or ``\\`` in a pattern or a name is an ordinary character. A pattern that matches nothing
is an error, because a typo in a skip list silently prunes the layer it meant to protect.

Where a pattern is expected, a module object of the model may stand instead (as in
Torch-Pruning's ``ignored_layers``): :func:`named` turns it into its qualified name at once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

from fnmatch2 import fnmatchcase2
from torch import nn

from .errors import ArgumentTypeError, PatternError

__all__ = ["PatternError", "fullmatch", "match", "match_each", "named", "patterns_of"]


# fnmatch2 reads "/" and "\\" as path separators and lets a pattern match a leading part of a
# path; module names are not paths, so both become private-use characters on both sides first
_LITERAL = str.maketrans({"/": "\ue000", "\\": "\ue001"})


def fullmatch(name: str, pattern: str) -> bool:
    """Whether the glob ``pattern`` matches the whole of ``name`` (case-sensitive, ``*`` crosses dots)."""
    return fnmatchcase2(name.translate(_LITERAL), pattern.translate(_LITERAL))


def _as_list(patterns: str | Iterable[str], what: str) -> list[str]:
    if isinstance(patterns, str):
        return [p.strip() for p in patterns.split(",") if p.strip()]
    if not isinstance(patterns, Iterable):
        raise ArgumentTypeError(
            f"{what} must be a glob, a comma-separated string of globs or a list of globs, got "
            f"{type(patterns).__name__}{' (use () for none)' if patterns is None else ''}"
        )
    out = list(patterns)
    for p in out:
        if not isinstance(p, str):
            raise ArgumentTypeError(f"{what} patterns must be strings, got {p!r}")
    return out


def _close(pattern: str, names: Sequence[str], n: int = 3) -> list[str]:
    """Names that look like ``pattern``: whole names or any of their dotted parts."""
    core = pattern.strip("*?[]") or pattern

    def score(name: str) -> float:
        parts = [name, *name.split(".")]
        return max(difflib.SequenceMatcher(None, core, part).ratio() for part in parts)

    scored = sorted(((score(name), name) for name in names), key=lambda t: -t[0])
    return [name for s, name in scored[:n] if s >= 0.5]


def _no_match(pattern: str, names: Sequence[str], known: Sequence[str] | None, what: str) -> str:
    pool = list(dict.fromkeys([*names, *(known or ())]))
    close = _close(pattern, pool)
    if close:
        hint = f"Close names: {', '.join(close)}."
    else:
        hint = f"Its layers include {', '.join(list(names)[:5])}{' ...' if len(names) > 5 else ''}."
    target = "module of the model" if known else "prunable layer"
    return (
        f"{what} pattern {pattern!r} matches no {target}. {hint} Patterns are fnmatch globs on dotted module "
        f"names (case-sensitive, '*' crosses dots)."
    )


def match_each(
    patterns: str | Iterable[str], names: Sequence[str], *, what: str, known: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """The names each pattern matches, in ``names`` order.

    Args:
        patterns: Globs, or one comma-separated string of globs (as on the authors' command line).
        names: Dotted module names to match against.
        what: What the patterns are for, used in error messages (``"skip"``).
        known: Every name a pattern may name (all modules of the model): a pattern that matches
            some of these but none of ``names`` maps to an empty list instead of raising.

    Raises:
        PatternError: A pattern matches none of ``names`` (nor of ``known``); the message lists
            close names.
        TypeError: ``patterns`` is not a string or an iterable of strings.
    """
    out: dict[str, list[str]] = {}
    for p in _as_list(patterns, what):
        hits = [n for n in names if fullmatch(n, p)]
        if not hits and not (known and any(fullmatch(n, p) for n in known)):
            raise PatternError(_no_match(p, names, known, what))
        out[p] = hits
    return out


def match(patterns: str | Iterable[str], names: Sequence[str], *, what: str) -> list[str]:
    """The names any of ``patterns`` matches, in ``names`` order (see :func:`match_each`)."""
    hit = {n for hits in match_each(patterns, names, what=what).values() for n in hits}
    return [n for n in names if n in hit]


def patterns_of(patterns: str | Iterable[str], what: str) -> list[str]:
    """The globs of ``patterns`` (a comma-separated string or a list), checked to be strings.

    Raises:
        TypeError: Not a string or an iterable of strings.
    """
    return _as_list(patterns, what)


def named(patterns: Any, model: nn.Module, what: str) -> Any:
    """``patterns`` with every module object in it replaced by its qualified name in ``model``.

    ``patterns`` is what :func:`match_each` takes, where a module may stand for a pattern: one
    module, or a list of globs and modules. The name is escaped, so it matches that module alone
    (``[``, ``*`` and ``?`` in a ``ModuleDict`` key are literal). Anything else is returned as
    it is, for :func:`match_each` to check.

    Raises:
        PatternError: A module is not inside ``model``, or is ``model`` itself (named, with
            where to look).
    """
    if isinstance(patterns, nn.Module):
        patterns = [patterns]
    elif isinstance(patterns, str) or not isinstance(patterns, Iterable):
        return patterns
    items = list(patterns)
    if not any(isinstance(p, nn.Module) for p in items):
        return items
    names: dict[int, str] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        names.setdefault(id(m), name)
    out = []
    for p in items:
        if not isinstance(p, nn.Module):
            out.append(p)
            continue
        name = names.get(id(p))
        what_it_is = _brief(p)
        if name is None:
            raise PatternError(
                f"{what}: the module {what_it_is} is not inside the {type(model).__name__} being pruned. Give a "
                f"module of that model (e.g. model.head[0], not a copy of it or a layer of another instance), "
                f"or its name as a glob"
            )
        if not name:
            raise PatternError(f"{what}: {what_it_is} is the model itself; name the layers inside it")
        out.append(re.sub(r"([*?\[])", r"[\1]", name))
    return out


def _brief(m: nn.Module) -> str:
    """The first line of a module's repr, shortened: enough to recognize it in a message."""
    lines = repr(m).splitlines() or [type(m).__name__]
    text = lines[0] + ("...)" if len(lines) > 1 else "")
    return text if len(text) <= 80 else text[:76] + "...)"
