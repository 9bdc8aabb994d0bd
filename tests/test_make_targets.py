"""`make test` leaves the slow tests out and `make test-slow` runs them: the Makefile's pytest
commands read with pyproject.toml's pytest settings (addopts `-m 'not slow'`, which a later `-m`
overrides), collected on a two-test file so nothing heavy is imported."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = ROOT / "Makefile"
PYPROJECT = ROOT / "pyproject.toml"
MARKED = """import pytest


@pytest.mark.slow
def test_slow():
    pass


def test_quick():
    pass
"""


def _pytest_command(target: str) -> list[str]:
    """The pytest command of a Makefile target's recipe, as argv with this interpreter."""
    lines = MAKEFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    (command,) = [c for c in recipe if " pytest" in c]
    return shlex.split(command.replace("$(BIN)/python", sys.executable))


def _collected(target: str, tmp_path: Path) -> set[str]:
    (tmp_path / "test_marked.py").write_text(MARKED)
    argv = _pytest_command(target) + [
        "--collect-only",
        "-c",
        str(PYPROJECT),
        "--rootdir",
        str(tmp_path),
        str(tmp_path / "test_marked.py"),
    ]
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return {line.split("::")[-1] for line in out.stdout.splitlines() if "::" in line}


def test_make_test_slow_selects_the_slow_tests_and_make_test_leaves_them_out(tmp_path):
    assert _collected("test-slow", tmp_path) == {"test_slow"}
    assert _collected("test", tmp_path) == {"test_quick"}
