"""Every ```python block of README.md and docs/*.md runs as written.

Each block is self-contained (its model and data are defined inline) and runs in a fresh
namespace, in a temporary working directory so that the files it writes go away. Blocks check
their own results with ``assert``, and run clean: an ``assl.ASSLWarning`` is an error there, as
under ``python -W error::assl.ASSLWarning`` (a block that shows a warning catches it itself).
A block that imports an optional framework (Lightning) is skipped where that framework is not
installed. Shell commands, outputs and code that needs
data the repository does not ship are fenced as ```bash or ```text and are not run.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

import assl  # this checkout's, imported before the blocks change directory

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
OPTIONAL = {"lightning": re.compile(r"^\s*(?:import|from) lightning\b", re.MULTILINE)}


def _blocks() -> list:
    params = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        for index, m in enumerate(FENCE.finditer(text)):
            line = text.count("\n", 0, m.start(1)) + 1
            name = path.relative_to(ROOT).as_posix()
            params.append(pytest.param(name, line, m.group(1), id=f"{name}-{index}"))
    return params


BLOCKS = _blocks()


def test_blocks_are_found():
    files = {p.values[0] for p in BLOCKS}
    assert {"README.md", "docs/pruner.md", "docs/graph.md"} <= files


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_block_says_its_language(path):
    """An untagged fence is neither run nor clearly not Python: tag it python, bash or text."""
    opening, inside = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            if not inside and line.strip() == "```":
                opening.append(number)
            inside = not inside
    assert not inside, "a fence is not closed"
    assert not opening, f"fences without a language on lines {opening}"


@pytest.mark.parametrize(("name", "line", "code"), BLOCKS)
def test_block_runs(name, line, code, tmp_path, monkeypatch):
    for package, imports in OPTIONAL.items():
        if imports.search(code):
            pytest.importorskip(package)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    # the file name and the block's first line appear in any traceback
    compiled = compile("\n" * (line - 1) + code, str(ROOT / name), "exec")
    namespace: dict = {"__name__": "docs_block"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", assl.ASSLWarning)  # the examples people copy first run clean
        exec(compiled, namespace)  # a block that fails raises here, with its file and line
    assert set(namespace) - {"__name__", "__builtins__"}, "the block defined nothing"
