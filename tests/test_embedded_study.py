"""End to end on the embedded default: the executor contract, the README's first command, the CLI.

Every test runs the real ``pbt`` CLI in a subprocess with real worker processes and reads the
study back through ``pbt status --json``, the interface scripts rely on. The scenarios every
executor shares (determinism, killed workers and controllers, failing trainers, one controller
per study) are :class:`pbt.testing.ExecutorContract`, run here over the embedded executor and in
``test_distributed.py`` over Celery.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import toy_data

from pbt.testing import ExecutorContract, pbt, status, write_study
from pbt.testing.executors import EmbeddedRunner, assert_complete_and_once

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


class TestEmbeddedExecutor(ExecutorContract):
    @pytest.fixture
    def runner(self, tmp_path: Path) -> EmbeddedRunner:
        return EmbeddedRunner(tmp_path)


def test_readme_quick_start_runs_the_toy_study(tmp_path):
    started = time.time()
    proc = pbt("run", "examples/toy.yaml", "--storage", str(tmp_path / "runs"), timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert time.time() - started < 60
    # The result goes to stdout (progress and notices to stderr), in lines as wide as they need.
    assert "best trial" in proc.stdout and "hyperparameter schedule of the best lineage:" in proc.stdout
    assert "best trial" not in proc.stderr
    assert "next: pbt status toy --storage" in proc.stdout and "pbt report toy --storage" in proc.stdout
    data = status("toy", str(tmp_path / "runs"))
    assert_complete_and_once(data)
    assert data["best"]["objective"] > 1.19  # Q* = 1.2
    assert sum(t["steps_done"] for t in data["trials"]) == 2000  # exactly the step budget
    assert data["state"]["finished"] is True

    # Run again: nothing new to do, and it says so (and how to extend the study).
    again = pbt("run", "examples/toy.yaml", "--storage", str(tmp_path / "runs"), timeout=120, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert "study toy had already finished (the step budget is spent)" in again.stderr
    assert "raise budget.total_steps" in again.stderr and "examples/toy.yaml" in again.stderr
    assert f"best trial {data['best']['id']}" in again.stdout
    assert len(status("toy", str(tmp_path / "runs"))["trials"]) == len(data["trials"])


def test_cli_help_and_exit_codes(tmp_path):
    for args in (["--help"], ["run", "--help"], ["status", "--help"]):
        proc = pbt(*args)
        assert proc.returncode == 0 and "Usage" in proc.stdout
    bad = write_study(tmp_path / "bad.yaml", toy_data(parameters={"h0": {"type": "float", "low": 2, "high": 1}}))
    proc = pbt("run", str(bad), "--storage", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert "parameters.h0" in proc.stderr and "must be < high" in proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing ran
    proc = pbt("status", "nosuchstudy", "--storage", str(tmp_path / "runs"))
    assert proc.returncode == 1 and "no study 'nosuchstudy'" in proc.stderr
