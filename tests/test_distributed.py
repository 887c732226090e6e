"""Distributed studies on real Redis with real ``celery worker`` processes, under fire.

:class:`pbt.testing.ExecutorContract` runs here over Celery (as in ``test_embedded_study.py``
over the embedded executor): the same seed gives the embedded study, workers are SIGKILLed
mid-trial, the controller is killed and restarted, trainers raise, hang and diverge, a second
controller is refused. What only a broker can go through follows: Redis restarted with nothing
on disk, a worker SIGTERMed as on spot preemption, a password-protected TLS Redis. Every time the
study must finish with each trial recorded exactly once and in-flight work resumed from its
checkpoints.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis
from helpers import toy_data

from pbt.testing import (
    ExecutorContract,
    RedisServer,
    Workers,
    kill_group,
    pbt,
    pbt_background,
    status,
    wait_for,
    write_study,
)
from pbt.testing.executors import CeleryRunner, assert_complete_and_once

pytestmark = pytest.mark.slow

FAST = CeleryRunner.FAST
WORKER_ENV = CeleryRunner.WORKER_ENV


class TestCeleryExecutor(ExecutorContract):
    @pytest.fixture
    def runner(self, redis_url: str, tmp_path: Path):
        runner = CeleryRunner(redis_url, tmp_path, workers=2)
        yield runner
        runner.close()


@pytest.fixture
def workers(redis_url, tmp_path):
    pool = Workers(redis_url, tmp_path, WORKER_ENV)
    yield pool
    pool.stop_all()


def study_file(tmp_path, workers: Workers, name="toy", **over):
    data = toy_data(name=name, **over)
    data["execution"] = {**data["execution"], **FAST, "queue": workers.queue, **over.get("execution", {})}
    data["broker"] = workers.broker
    return write_study(tmp_path / f"{name}.yaml", data)


def running(study: str, storage: str, max_step: int, on: Workers | None = None, min_step: int = 1, worker=None):
    """A trial a (live) worker is in the middle of: reported progress, not near its end."""
    if not Path(storage, study, "spec.json").exists():
        return None
    for t in status(study, storage)["trials"]:
        if t["status"] != "running" or not t["worker"] or not min_step <= t["steps_done"] <= max_step:
            continue
        if on is not None and not any(t["worker"].startswith(name) for name in on.procs):
            continue
        if worker is None or t["worker"].startswith(worker):
            return t
    return None


def test_redis_restart_loses_queued_and_unacked_messages_and_the_study_still_completes(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    pool = Workers(server.url, tmp_path, WORKER_ENV)
    try:
        pool.start(2)
        study = study_file(tmp_path, pool, budget={"total_steps": 192}, execution={"checkpoint_every": 2},
                           trainer={"config": {"lr": 0.01, "sleep_per_step": 0.05}})
        storage = str(tmp_path / "runs")
        controller = pbt_background("run", str(study), "--storage", storage, "-q", log=tmp_path / "controller.log")
        try:
            wait_for(lambda: running("toy", storage, 99), 60, interval=0.2, what="trials running")
            server.restart(down_for=1.0)  # nothing persisted: queue, unacked, heartbeats, lease all gone
            # Running again (or, on a loaded machine, already finished between two looks).
            wait_for(lambda: controller.poll() is not None or running("toy", storage, 99), 60, interval=0.2,
                     what="trials running again")
            if controller.poll() is None:
                redis.Redis.from_url(server.url).flushall()  # and once more, without a restart
            assert controller.wait(timeout=240) == 0, (tmp_path / "controller.log").read_text()[-3000:]
        finally:
            kill_group(controller)
        data = status("toy", storage)
        assert_complete_and_once(data)
        assert all(t["status"] == "completed" for t in data["trials"])
        assert sum(t["steps_done"] for t in data["trials"]) == 192
    finally:
        pool.stop_all()
        server.stop()


def test_sigterm_saves_the_trial_and_hands_it_to_another_worker(tmp_path, workers):
    first, _ = workers.start(2)
    study = study_file(tmp_path, workers, budget={"total_steps": 64}, algorithm={"options": {"steps_per_trial": 16}},
                       trainer={"config": {"lr": 0.01, "sleep_per_step": 0.2}}, execution={"checkpoint_every": 4})
    storage = str(tmp_path / "runs")
    controller = pbt_background("run", str(study), "--storage", storage, "-q")
    try:
        victim = wait_for(lambda: running("toy", storage, 8, workers, min_step=4, worker=first), 60, interval=0.2,
                          what="a trial half-way through on the first worker")
        assert workers.kill(first, signal.SIGTERM) == 0  # warm shutdown: exits cleanly
        assert controller.wait(timeout=120) == 0
    finally:
        kill_group(controller)
    data = status("toy", storage)
    after = data["trials"][victim["number"]]
    assert after["status"] == "completed"
    assert after["resumed_from_step"] >= victim["steps_done"]  # it saved at the preemption point
    assert not after["worker"].startswith(first)
    assert "handed back" in workers.log(first)  # Reject(requeue=True), logged by Celery


def test_a_password_protected_tls_redis_works_and_its_password_is_never_shown(tmp_path):
    secret = "pbt-redis-SECRET-7f3a"
    server = RedisServer(tmp_path, password=secret, tls=True)
    server.start()
    pool = Workers(server.url, tmp_path, WORKER_ENV)
    try:
        pool.start(1)
        study = study_file(tmp_path, pool, budget={"total_steps": 64})
        storage = tmp_path / "runs"
        proc = pbt("run", str(study), "--storage", str(storage), timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "rediss://:***@127.0.0.1" in proc.stderr  # the controller says where, not how
        shown = proc.stdout + proc.stderr + "".join(pool.log(n) for n in pool.procs)
        shown += "".join(p.read_text() for p in storage.rglob("*.json"))  # spec, journal, state
        assert secret not in shown
        assert_complete_and_once(status("toy", str(storage)))
    finally:
        pool.stop_all()
        server.stop()
