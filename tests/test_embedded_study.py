"""End to end on the embedded default: the README's first command, resume, determinism, failures.

Every test runs the real ``pbt`` CLI in a subprocess with real worker processes and reads the
study back through ``pbt status --json``, the interface scripts rely on.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from helpers import toy_data

from pbt.testing import kill_group, pbt, pbt_background, status, wait_for, write_study

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def assert_complete_and_once(data: dict) -> None:
    trials = data["trials"]
    ids = [t["id"] for t in trials]
    assert len(ids) == len(set(ids)), "a trial is recorded twice"
    assert [t["number"] for t in trials] == list(range(len(trials)))
    by_id = {t["id"]: t for t in trials}
    for t in trials:
        assert t["status"] in ("completed", "failed", "stopped"), t
        node, hops = t, 0
        while node["parent"] is not None:  # every lineage reaches generation 0
            node = by_id[node["parent"]]
            hops += 1
        assert node["generation"] == 0 and hops <= t["generation"]


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


def test_same_seed_same_study_whatever_the_number_of_workers(tmp_path):
    study = write_study(tmp_path / "s.yaml", toy_data(budget={"total_steps": 240}))
    runs = []
    for workers in ("1", "3"):
        storage = str(tmp_path / f"w{workers}")
        proc = pbt("run", str(study), "--storage", storage, "--workers", workers, "-q")
        assert proc.returncode == 0, proc.stderr
        runs.append(status("toy", storage))
    key = [(t["id"], t["params"], t["parent"], t["objective"]) for t in runs[0]["trials"]]
    assert key == [(t["id"], t["params"], t["parent"], t["objective"]) for t in runs[1]["trials"]]


def test_a_killed_controller_resumes_without_rerunning_or_duplicating(tmp_path):
    data = toy_data(budget={"total_steps": 320}, trainer={"config": {"lr": 0.01, "sleep_per_step": 0.02}},
                    execution={"checkpoint_every": 2})
    study = write_study(tmp_path / "s.yaml", data)
    reference = tmp_path / "reference"
    assert pbt("run", str(study), "--storage", str(reference), "-q").returncode == 0
    storage = tmp_path / "runs"
    proc = pbt_background("run", str(study), "--storage", str(storage), "-q")
    journal = storage / "toy" / "journal"
    wait_for(lambda: journal.exists() and len(list(journal.iterdir())) > 15, 60, what="some progress")
    kill_group(proc)  # SIGKILL the controller and its workers mid-study
    before = status("toy", str(storage))
    done_before = {t["id"]: t for t in before["trials"] if t["status"] == "completed"}
    assert done_before and len(done_before) < len(before["trials"]) + 40
    proc = pbt("run", str(study), "--storage", str(storage), "-q")
    assert proc.returncode == 0, proc.stderr
    after = status("toy", str(storage))
    assert_complete_and_once(after)
    for t in done_before.values():  # finished work is never redone
        assert after["trials"][t["number"]]["attempts"] == t["attempts"]
    # In-flight trials resume from their last in-trial checkpoint: at least as far as they had
    # reported (a report follows every checkpoint), so a kill loses < checkpoint_every steps.
    for t in before["trials"]:
        if t["status"] in ("pending", "running") and t["steps_done"] > 0:
            assert (after["trials"][t["number"]]["resumed_from_step"] or 0) >= t["steps_done"], t["id"]
    # Deterministic ordering: the interrupted study is the uninterrupted one.
    ref = status("toy", str(reference))
    assert [(t["params"], t["parent"]) for t in after["trials"]] == [(t["params"], t["parent"]) for t in ref["trials"]]
    assert after["best"]["objective"] == ref["best"]["objective"]


def test_a_second_controller_on_the_same_study_is_refused(tmp_path):
    data = toy_data(trainer={"config": {"lr": 0.01, "sleep_per_step": 0.05}})
    study = write_study(tmp_path / "s.yaml", data)
    storage = str(tmp_path / "runs")
    first = pbt_background("run", str(study), "--storage", storage, "-q")
    try:
        wait_for(lambda: (tmp_path / "runs" / "toy" / "spec.json").exists(), 30, what="the first controller")
        second = pbt("run", str(study), "--storage", storage, "-q")
        assert second.returncode == 3
        assert "already driven by another controller" in second.stderr
        assert first.poll() is None  # the first one is untouched
    finally:
        kill_group(first)


def test_failing_trials_are_recorded_with_their_reason_and_the_study_goes_on(tmp_path):
    data = toy_data(trainer={"config": {"lr": 0.01, "fail_above": 0.8, "nan_above": 0.6}},
                    execution={"max_attempts": 2})
    study = write_study(tmp_path / "s.yaml", data)
    proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "-q")
    assert proc.returncode == 0, proc.stderr
    data = status("toy", str(tmp_path / "runs"))
    assert_complete_and_once(data)
    failed = [t for t in data["trials"] if t["status"] == "failed"]
    raised = [t for t in failed if "told to fail" in t["error"]]
    nan = [t for t in failed if "not finite" in t["error"]]
    assert raised and nan
    assert all(t["attempts"] == 2 and "Traceback" in t["error"] for t in raised)  # bounded retries
    assert all(t["attempts"] == 1 for t in nan)  # NaN is deterministic: not retried
    assert data["best"]["params"]["h0"] <= 0.6  # failures never won
    assert all(t["parent"] not in {f["id"] for f in failed} for t in data["trials"])


def test_a_worker_killed_mid_trial_costs_one_attempt_not_the_trial(tmp_path):
    data = toy_data(budget={"total_steps": 64}, trainer={"config": {"lr": 0.01, "sleep_per_step": 0.2}},
                    algorithm={"options": {"steps_per_trial": 8}}, execution={"checkpoint_every": 1})
    study = write_study(tmp_path / "s.yaml", data)
    storage = str(tmp_path / "runs")
    proc = pbt_background("run", str(study), "--storage", storage, "--workers", "2", "-q")
    try:
        def a_trial_in_progress():
            if not (tmp_path / "runs" / "toy" / "spec.json").exists():
                return None
            running = [t for t in status("toy", storage)["trials"]
                       if t["status"] == "running" and 1 <= t["steps_done"] <= 4 and t["worker"]]
            return running[0] if running else None

        victim = wait_for(a_trial_in_progress, 60, interval=0.3, what="a trial in progress")
        pid = int(re.search(r"pid (\d+)", victim["worker"]).group(1))
        os.kill(pid, signal.SIGKILL)
        assert proc.wait(timeout=120) == 0
    finally:
        kill_group(proc)
    data = status("toy", storage)
    assert_complete_and_once(data)
    assert all(t["status"] == "completed" for t in data["trials"])
    again = data["trials"][victim["number"]]
    assert again["attempts"] == 2
    # checkpoint_every=1: the second attempt starts where the killed one had got to.
    assert again["resumed_from_step"] >= victim["steps_done"]


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
