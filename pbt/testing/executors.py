"""Behavioural suite for executors: what a study needs from whatever runs its trials.

:class:`ExecutorContract` holds the scenarios that must come out the same whichever executor
runs the trials: a study runs to the end with every trial recorded once and the result its seed
determines; a worker killed mid-trial costs an attempt, not the trial, and not more than a
checkpoint interval of work; a killed controller resumes without rerunning or duplicating
anything; trainers that raise, hang or diverge fail with their reason after bounded retries; a
second controller is refused. Every scenario runs the real ``pbt`` CLI with real worker
processes, through a :class:`StudyRunner`, and reads the study back through ``pbt status
--json``. pbt runs the suite over :class:`EmbeddedRunner` and :class:`CeleryRunner` (real
Celery workers on Redis); an executor-specific test stays beside its executor's tests.

To run it over your own deployment (another broker URL, your worker image), subclass it::

    import pytest
    from pbt.testing import ExecutorContract
    from pbt.testing.executors import CeleryRunner

    class TestMyWorkers(ExecutorContract):
        @pytest.fixture
        def runner(self, tmp_path):
            runner = CeleryRunner("redis://my-redis:6379/0", tmp_path)
            yield runner
            runner.close()

This module imports pytest: it is part of the test kit, never imported by pbt.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pbt.testing.processes import Workers, kill_group, pbt, pbt_background, status, wait_for, write_study
from pbt.trial import Trial, TrialStatus

__all__ = [
    "TOY",
    "CeleryRunner",
    "EmbeddedRunner",
    "ExecutorContract",
    "StudyRunner",
    "assert_complete_and_once",
    "in_progress",
    "records",
    "toy_study",
]

#: The toy study every scenario starts from (the quadratic problem of the PBT paper: fast).
TOY: dict[str, Any] = {
    "name": "toy",
    "objective": {"metric": "q", "mode": "max"},
    "parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0}, "h1": {"type": "float", "low": 0.0, "high": 1.0}},
    "algorithm": {"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4}},
    "budget": {"total_steps": 160},
    "trainer": {"path": "pbt.trainers.toy:ToyTrainer", "config": {"lr": 0.01}},
    "execution": {"parallelism": 4},
    "storage": "runs",
    "seed": 0,
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def toy_study(**over: Any) -> dict[str, Any]:
    """:data:`TOY` with ``over`` merged in (nested mappings are merged, other values replaced)."""
    return _merge(json.loads(json.dumps(TOY)), over)


def assert_complete_and_once(data: dict[str, Any]) -> None:
    """Every trial of ``pbt status --json`` output ended, is recorded once, and has a whole lineage."""
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


def records(study: str, storage: str) -> list[Trial]:
    """The study's trial records, read in this process (for polling; ``pbt status`` is slower)."""
    from pbt.errors import NotFoundError
    from pbt.storage.study_store import open_study_store

    try:
        return open_study_store(storage, study).load_trials()
    except NotFoundError:
        return []


def in_progress(study: str, storage: str, runner: StudyRunner, max_step: int, min_step: int = 1,
                exclude: frozenset[str] = frozenset(), worker: str | None = None) -> Trial | None:
    """A trial one of ``runner``'s live workers is in the middle of: it has reported progress
    (at least ``min_step``), is not near its end (at most ``max_step``), and is not excluded."""
    for t in records(study, storage):
        if t.status is not TrialStatus.RUNNING or not t.worker or t.id in exclude:
            continue
        if not min_step <= t.steps_done <= max_step or not runner.owns(t):
            continue
        if worker is None or t.worker.startswith(worker):
            return t
    return None


class StudyRunner(ABC):
    """One way of running a study's trials, as :class:`ExecutorContract` drives it.

    A runner writes study files for its executor, runs ``pbt run`` to the end or in the
    background, and knows its workers: which ones there are, and how to kill the one running
    a given trial. The class attributes describe what the executor promises.
    """

    #: In-flight trials keep running when the controller dies (it adopts them when it is back).
    survives_controller: ClassVar[bool] = False
    #: The transport may run an attempt again on its own (at-least-once delivery), so attempt
    #: counts are lower bounds rather than exact.
    redelivers: ClassVar[bool] = False
    #: What a trial's error says when ``execution.trial_timeout`` ended it.
    timeout_error: ClassVar[str] = "trial_timeout"
    #: The one-controller-per-study lock holds across storages (it lives in the broker).
    lease_spans_storages: ClassVar[bool] = False

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)

    def study(self, path: Path, data: dict[str, Any]) -> Path:
        """Write the study file at ``path``, with whatever this executor needs added."""
        return write_study(path, data)

    def env(self) -> dict[str, str]:
        return {}

    def args(self, workers: int | None) -> list[str]:
        """Extra ``pbt run`` arguments; ``workers``: how many, where the runner starts them."""
        return []

    def run(self, study: Path, storage: str, *, workers: int | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess:
        """``pbt run`` to the end, quietly."""
        return pbt("run", str(study), "--storage", storage, "-q", *self.args(workers), timeout=timeout,
                   env=self.env())

    def start(self, study: Path, storage: str, *, workers: int | None = None,
              log: Path | None = None) -> subprocess.Popen:
        """``pbt run`` in the background, in a process group of its own (see :func:`kill_group`)."""
        return pbt_background("run", str(study), "--storage", storage, "-q", *self.args(workers), env=self.env(),
                              log=log)

    @abstractmethod
    def worker_names(self) -> set[str]:
        """The names that the trials' ``worker`` fields start with, one per worker that ran."""

    @abstractmethod
    def owns(self, trial: Trial) -> bool:
        """Whether a live worker of this runner is the one running ``trial``."""

    def live_step(self, study: str, trial: Trial) -> int:
        """The step ``trial``'s attempt has reached, as freshly as the executor can tell."""
        return trial.steps_done

    @abstractmethod
    def kill_worker(self, trial: Trial) -> None:
        """SIGKILL the worker running ``trial``; leave as many workers as before (start one if needed)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Stop whatever the runner started."""


class EmbeddedRunner(StudyRunner):
    """Trials in ``pbt run``'s own worker processes (no broker)."""

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.last_workers = os.cpu_count() or 1

    def env(self) -> dict[str, str]:
        return {"PBT_BROKER_URL": ""}

    def args(self, workers: int | None) -> list[str]:
        self.last_workers = workers or os.cpu_count() or 1
        return ["--broker", "", *(["--workers", str(workers)] if workers else [])]

    def worker_names(self) -> set[str]:
        return {f"{socket.gethostname()}/embedded-{i}" for i in range(self.last_workers)}

    def owns(self, trial: Trial) -> bool:
        return bool(trial.worker and "/embedded-" in trial.worker)

    def kill_worker(self, trial: Trial) -> None:
        match = re.search(r"pid (\d+)", trial.worker or "")
        assert match, f"no pid in {trial.worker!r}"
        os.kill(int(match.group(1)), signal.SIGKILL)  # the executor replaces the process itself


class CeleryRunner(StudyRunner):
    """Trials on Celery workers (``celery -A pbt.tasks worker``, what ``pbt worker`` runs) on a
    queue of their own, through the Redis at ``broker``; ``workers`` of them start at once.

    Study files get short heartbeats and leases, so a killed worker is noticed in seconds.
    """

    survives_controller = True
    redelivers = True
    timeout_error = "TimeLimit"
    lease_spans_storages = True

    FAST: ClassVar[dict[str, float]] = {"heartbeat_seconds": 0.5, "lease_seconds": 4}
    WORKER_ENV: ClassVar[dict[str, str]] = {"PBT_VISIBILITY_TIMEOUT": "30", "PBT_UNACKED_RESTORE_INTERVAL": "2"}

    def __init__(self, broker: str, workdir: Path, workers: int = 2, env: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.pool = Workers(broker, self.workdir, {**self.WORKER_ENV, **(env or {})})
        if workers:
            self.pool.start(workers)

    @property
    def broker(self) -> str:
        return self.pool.broker

    def study(self, path: Path, data: dict[str, Any]) -> Path:
        data = {**data, "broker": self.broker,
                "execution": {**data.get("execution", {}), **self.FAST, "queue": self.pool.queue,
                              **data.get("execution", {})}}
        return write_study(path, data)

    def worker_names(self) -> set[str]:
        return set(self.pool.procs)

    def owns(self, trial: Trial) -> bool:
        return any((trial.worker or "").startswith(name) for name in self.pool.procs)

    def live_step(self, study: str, trial: Trial) -> int:
        import redis

        from pbt.tasks.channels import alive_key

        beat = redis.Redis.from_url(self.broker).get(alive_key(study, trial.id))
        return json.loads(beat)["step"] if beat else trial.steps_done

    def kill_worker(self, trial: Trial) -> None:
        owner = next(n for n in self.pool.procs if (trial.worker or "").startswith(n))
        self.pool.kill(owner)  # SIGKILL main process and pool child together
        self.pool.start(1)

    def close(self) -> None:
        self.pool.stop_all()


class ExecutorContract:
    """The scenarios every executor must get through the same way.

    **Required fixture** ``runner`` — a :class:`StudyRunner` for the executor under test, its
    workers (if it has its own) started, and stopped again after the test (yield it).

    Each test writes its study files and storage under ``tmp_path`` and gives its study a name
    of its own, so tests sharing one broker cannot meet.
    """

    @pytest.fixture
    def runner(self) -> StudyRunner:
        pytest.fail(f"{type(self).__name__} must define a `runner` fixture (see ExecutorContract)", pytrace=False)

    @pytest.fixture
    def study_name(self) -> str:
        """This test's study name: unique, so runs sharing a broker (and its leases) cannot meet."""
        return f"toy-{uuid.uuid4().hex[:8]}"

    def test_same_seed_same_study_whatever_runs_it(self, runner: StudyRunner, study_name: str, tmp_path: Path) -> None:
        """A study runs to the end, every trial recorded once, with the result its seed decides:
        the same as one embedded worker gets, whatever the executor and its number of workers."""
        data = toy_study(name=study_name, budget={"total_steps": 240})
        proc = runner.run(runner.study(tmp_path / "s.yaml", data), str(tmp_path / "runs"), workers=3)
        assert proc.returncode == 0, proc.stderr
        reference = EmbeddedRunner(tmp_path)
        ref = reference.run(reference.study(tmp_path / "ref.yaml", data), str(tmp_path / "ref"), workers=1)
        assert ref.returncode == 0, ref.stderr
        a, b = status(study_name, str(tmp_path / "runs")), status(study_name, str(tmp_path / "ref"))
        assert_complete_and_once(a)
        assert a["best"]["objective"] == b["best"]["objective"] and a["best"]["id"] == b["best"]["id"]
        key = [(t["id"], t["params"], t["parent"], t["objective"]) for t in a["trials"]]
        assert key == [(t["id"], t["params"], t["parent"], t["objective"]) for t in b["trials"]]
        assert {t["worker"].split(" ")[0] for t in a["trials"]} == runner.worker_names()  # every worker took trials

    def test_a_worker_killed_mid_trial_costs_an_attempt_not_the_trial(
        self, runner: StudyRunner, study_name: str, tmp_path: Path
    ) -> None:
        """Workers SIGKILLed mid-trial, three times: every trial still completes once, nothing is
        counted twice, and each victim's next attempt resumes from its last in-trial checkpoint
        (``checkpoint_every: 1``: no step that was reported is lost)."""
        budget = 128
        data = toy_study(name=study_name, budget={"total_steps": budget}, algorithm={"options": {"steps_per_trial": 8}},
                         trainer={"config": {"lr": 0.01, "sleep_per_step": 0.15}}, execution={"checkpoint_every": 1})
        storage = str(tmp_path / "runs")
        log = tmp_path / "controller.log"
        controller = runner.start(runner.study(tmp_path / "s.yaml", data), storage, workers=2, log=log)
        victims: list[tuple[Trial, int]] = []
        try:
            for _ in range(3):
                done = frozenset(v.id for v, _ in victims)
                victim = wait_for(lambda done=done: in_progress(study_name, storage, runner, 4, exclude=done), 60,
                                  interval=0.1, what="a trial in progress")
                step = runner.live_step(study_name, victim)
                runner.kill_worker(victim)
                victims.append((victim, step))
            assert controller.wait(timeout=180) == 0, log.read_text()[-3000:]
        finally:
            kill_group(controller)
        data = status(study_name, storage)
        assert_complete_and_once(data)
        assert all(t["status"] == "completed" for t in data["trials"])
        assert sum(t["steps_done"] for t in data["trials"]) == budget  # nothing counted twice
        for victim, step in victims:
            after = data["trials"][victim.number]
            assert after["attempts"] >= 2, after
            if not runner.redelivers:
                assert after["attempts"] == 2, after
            # The new attempt resumed from the last in-trial checkpoint: nothing reported was lost.
            assert after["resumed_from_step"] is not None and after["resumed_from_step"] >= step, (after, step)

    def test_a_killed_controller_resumes_without_rerunning_or_duplicating(
        self, runner: StudyRunner, study_name: str, tmp_path: Path
    ) -> None:
        budget = 160
        data = toy_study(name=study_name, budget={"total_steps": budget},
                         trainer={"config": {"lr": 0.01, "sleep_per_step": 0.04}}, execution={"checkpoint_every": 2})
        study = runner.study(tmp_path / "s.yaml", data)
        reference = tmp_path / "reference"
        assert runner.run(study, str(reference)).returncode == 0
        storage = str(tmp_path / "runs")
        controller = runner.start(study, storage)

        def going() -> bool:
            trials = records(study_name, storage)
            return len(trials) > 12 and any(t.status is TrialStatus.RUNNING and t.steps_done > 0 for t in trials)

        wait_for(going, 60, interval=0.2, what="the study to get going")
        kill_group(controller)  # SIGKILL the controller (and the workers it started, if any)
        before = status(study_name, storage)
        done_before = {t["id"]: t for t in before["trials"] if t["status"] == "completed"}
        assert done_before and len(done_before) < len(before["trials"]) + 40
        time.sleep(1)
        proc = runner.run(study, storage)
        assert proc.returncode == 0, proc.stderr
        after = status(study_name, storage)
        assert_complete_and_once(after)
        assert sum(t["steps_done"] for t in after["trials"]) == budget
        for t in done_before.values():  # finished work is never redone
            assert after["trials"][t["number"]]["attempts"] == t["attempts"]
        # In-flight trials resume from their last in-trial checkpoint: at least as far as they had
        # reported (a report follows every checkpoint), so a kill loses < checkpoint_every steps.
        # Where workers outlive the controller, an attempt may instead simply go on.
        for t in before["trials"]:
            if t["status"] in ("pending", "running") and t["steps_done"] > 0:
                again = after["trials"][t["number"]]
                went_on = runner.survives_controller and again["attempts"] == t["attempts"]
                assert went_on or (again["resumed_from_step"] or 0) >= t["steps_done"], (t, again)
        # Deterministic ordering: the interrupted study is the uninterrupted one.
        ref = status(study_name, str(reference))
        lineage = [(t["params"], t["parent"]) for t in after["trials"]]
        assert lineage == [(t["params"], t["parent"]) for t in ref["trials"]]
        assert after["best"]["objective"] == ref["best"]["objective"]

    def test_trainers_that_raise_hang_or_diverge_fail_with_their_reason(
        self, runner: StudyRunner, study_name: str, tmp_path: Path
    ) -> None:
        """Raised errors are retried up to max_attempts and keep their traceback; a hung trial is
        ended by trial_timeout and retried the same way; NaN is deterministic, so not retried;
        failures never win and never become parents; the study goes on."""
        data = toy_study(name=study_name, budget={"total_steps": 96},
                         trainer={"config": {"lr": 0.01, "fail_above": 0.85, "nan_above": 0.6, "hang_above": 0.95}},
                         execution={"max_attempts": 2, "trial_timeout": 2})
        proc = runner.run(runner.study(tmp_path / "s.yaml", data), str(tmp_path / "runs"))
        assert proc.returncode == 0, proc.stderr
        data = status(study_name, str(tmp_path / "runs"))
        assert_complete_and_once(data)
        failed = [t for t in data["trials"] if t["status"] == "failed"]
        raised = [t for t in failed if "told to fail" in t["error"]]
        nan = [t for t in failed if "not finite" in t["error"]]
        hung = [t for t in failed if runner.timeout_error in t["error"]]
        assert raised and nan and hung, {t["id"]: t["error"] for t in failed}
        assert all("Traceback" in t["error"] for t in raised)
        assert all(t["failures"] == 2 for t in failed if t not in nan)  # bounded retries
        if not runner.redelivers:
            assert all(t["attempts"] == 2 for t in raised + hung)
            assert all(t["attempts"] == 1 for t in nan)  # NaN is deterministic: not retried
        assert all(t["failures"] == 1 for t in nan)
        assert data["best"]["params"]["h0"] <= 0.6  # failures never won
        assert all(t["parent"] not in {f["id"] for f in failed} for t in data["trials"])
        assert any(t["status"] == "completed" for t in data["trials"])

    def test_a_second_controller_on_the_same_study_is_refused(
        self, runner: StudyRunner, study_name: str, tmp_path: Path
    ) -> None:
        data = toy_study(name=study_name, trainer={"config": {"lr": 0.01, "sleep_per_step": 0.2}})
        study = runner.study(tmp_path / "s.yaml", data)
        storage = str(tmp_path / "runs")
        first = runner.start(study, storage, log=tmp_path / "first.log")
        try:
            wait_for(lambda: Path(storage, study_name, "journal").exists(), 60, what="the first controller to start")
            elsewhere = [str(tmp_path / "elsewhere")] if runner.lease_spans_storages else []
            for where in [storage, *elsewhere]:
                second = runner.run(study, where, timeout=60)
                assert second.returncode == 3, (where, second.stderr)
                assert "already driven by another controller" in second.stderr and "pid" in second.stderr
            assert first.poll() is None  # the first one is untouched
        finally:
            kill_group(first)
