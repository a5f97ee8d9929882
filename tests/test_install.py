"""Installing as the README says gives a working ``import assl`` wherever the user runs Python.

``git clone`` puts the project in a folder named ``assl``, with the package in ``assl/assl``. A
script run from the folder above the clone sees the clone's root as an ``assl`` namespace package
(a folder without ``__init__.py`` on ``sys.path``); an editable install that resolves the package
through a finder placed after the path entries loses to it (``module 'assl' has no attribute
'Pruner'``). The project puts its root on ``sys.path`` instead, where the real package wins.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _clone(into: Path) -> Path:
    """The files an install reads, as a fresh clone has them, in a folder named ``assl``."""
    clone = into / "assl"
    clone.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, clone / name)
    shutil.copytree(ROOT / "assl", clone / "assl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return clone


def test_an_editable_install_imports_the_package_from_the_folder_above_the_clone(tmp_path):
    if importlib.util.find_spec("pip") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("needs pip and setuptools in this environment (the install runs without build isolation)")
    clone = _clone(tmp_path)
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)  # a throwaway environment; pip of this one installs into it
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    where = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    site = Path(where.stdout.strip())
    install = subprocess.run(
        # --ignore-installed: with --prefix, pip would otherwise uninstall this environment's assl first
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet",
         "--ignore-installed", "--prefix", str(env_dir), "-e", str(clone)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    # the dependencies (torch, numpy, ...) from this environment, after what the install put first
    deps = Path(torch.__file__).resolve().parents[1]
    (site / "zz_test_dependencies.pth").write_text(f"{deps}\n")
    probe = "import assl; print(assl.__file__); print(assl.Pruner.__name__)"
    for cwd in (tmp_path, clone):  # the folder above the clone (the trap), and the clone itself
        run = subprocess.run([str(python), "-c", probe], cwd=cwd, capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, f"from {cwd}: {run.stderr[-2000:]}"
        file, name = run.stdout.split()
        assert Path(file).resolve() == (clone / "assl" / "__init__.py").resolve() and name == "Pruner"
