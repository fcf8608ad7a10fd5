"""The code passes its own formatter and linter (pyproject.toml's [tool.ruff]): no
`# fmt: skip` needed, imports in order, lines within the configured length."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason="ruff is not installed (make setup installs it)")


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_passes():
    result = _ruff("check", "--output-format", "concise", ".")
    assert result.returncode == 0, f"fix with `ruff check --fix .` or by hand:\n{result.stdout}{result.stderr}"


def test_ruff_format_leaves_the_code_unchanged():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, f"run `ruff format .`:\n{result.stdout}{result.stderr}"


def test_no_formatter_escapes():
    escapes = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in [*ROOT.glob("nfstudy/**/*.py"), *ROOT.glob("experiments/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py")]
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if line.rstrip().endswith(("fmt: skip", "fmt: off")) and path.name != "test_lint.py"
    ]
    assert not escapes, f"formatter escapes left: {escapes}"
