"""Install plugin distributions with pip for a test, without touching the venv.

Each set goes into its own ``pip install --target`` directory that the test puts on the
console script's PYTHONPATH: entry points are found there as in site-packages, but other
tests (and other people's runners on this venv) never see these plugins, and a test
plugin that breaks start-up on purpose can't break anything else.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def can_build_offline() -> bool:
    """Whether this interpreter can build a wheel without pip fetching build tools.

    setuptools builds wheels itself from 70.1 on; before that it needs ``wheel``.
    """
    return any(
        importlib.util.find_spec(name) is not None
        for name in ("wheel", "setuptools.command.bdist_wheel")
    )


def pip_install(sources: Sequence[Path], target: Path, scratch: Path) -> Path:
    """``pip install --no-deps`` each source tree into ``target``; return ``target``.

    The trees are copied to ``scratch`` first, so that building leaves no ``build/`` or
    ``*.egg-info`` in the repository.
    """
    copies = []
    for source in sources:
        copy = scratch / source.name
        shutil.copytree(
            source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
        )
        copies.append(str(copy))
    command = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-input",
        "--disable-pip-version-check", "--quiet", "--target", str(target),
    ]
    if can_build_offline():
        command += ["--no-build-isolation", "--no-index"]
    done = subprocess.run(
        [*command, *copies], capture_output=True, text=True, timeout=300, cwd=scratch
    )
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return target


def python_path(*directories: Path) -> str:
    """PYTHONPATH for the console script: these directories, then the repository."""
    return os.pathsep.join([*(str(d) for d in directories), str(ROOT)])
