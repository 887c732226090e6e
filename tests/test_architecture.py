"""Module dependencies follow the agreed layers: no upward import, no cycle (contracts in pyproject.toml).

The contracts live in ``[tool.importlinter]`` in ``pyproject.toml``; this test runs import-linter
over this checkout, so a violation fails the suite with import-linter's report, which names each
offending import and its line. Function-level imports count.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import importlinter

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` over the ``pbt`` package found in ``root`` (not an installed copy), without a cache."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    command = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    return subprocess.run(
        [sys.executable, "-c", command, "--no-cache", "--no-logo", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_import_contracts_are_kept() -> None:
    result = lint_imports()
    report = result.stdout + result.stderr
    assert result.returncode == 0, f"import-linter {importlinter.__version__} found broken contracts:\n{report}"
    assert "0 broken" in report and "kept" in report, report  # it really checked something
