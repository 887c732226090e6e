"""The README's study-file reference is generated from the models that validate study files.

If this fails, a field or default changed: run ``python scripts/config_reference.py --write``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_configuration_reference_matches_the_code():
    proc = subprocess.run([sys.executable, "scripts/config_reference.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_names_the_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test" in readme and "./scripts/test" in ci
    assert "pip install -e . && pbt run examples/toy.yaml" in readme
