"""Distributed studies on real Redis with real ``celery worker`` processes, under fire.

Workers are SIGKILLed mid-trial, the controller is killed and restarted, Redis is restarted
with nothing on disk, a worker gets SIGTERM as on spot preemption; every time the study must
finish with each trial recorded exactly once and in-flight work resumed from its checkpoints.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import redis
from helpers import toy_data
from test_embedded_study import assert_complete_and_once

from pbt.testing import RedisServer, Workers, kill_group, pbt, pbt_background, status, wait_for, write_study

pytestmark = pytest.mark.slow

FAST = {"heartbeat_seconds": 0.5, "lease_seconds": 4}
WORKER_ENV = {"PBT_VISIBILITY_TIMEOUT": "30", "PBT_UNACKED_RESTORE_INTERVAL": "2"}


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


def test_distributed_study_matches_the_embedded_run(tmp_path, workers):
    workers.start(2)
    study = study_file(tmp_path, workers, budget={"total_steps": 240})
    assert pbt("run", str(study), "--storage", str(tmp_path / "celery"), "-q").returncode == 0
    embedded = pbt("run", str(study), "--storage", str(tmp_path / "embedded"), "--broker", "", "-q",
                   env={"PBT_BROKER_URL": ""})
    assert embedded.returncode == 0, embedded.stderr
    a, b = status("toy", str(tmp_path / "celery")), status("toy", str(tmp_path / "embedded"))
    assert_complete_and_once(a)
    assert a["best"]["objective"] == b["best"]["objective"] and a["best"]["id"] == b["best"]["id"]
    assert [(t["params"], t["parent"]) for t in a["trials"]] == [(t["params"], t["parent"]) for t in b["trials"]]
    assert {t["worker"].split(" ")[0] for t in a["trials"]} == set(workers.procs)  # both workers took trials


def test_workers_sigkilled_mid_trial_lose_at_most_one_checkpoint_interval(tmp_path, workers):
    names = workers.start(2)
    study = study_file(tmp_path, workers, budget={"total_steps": 160},
                       algorithm={"options": {"steps_per_trial": 8}},
                       trainer={"config": {"lr": 0.01, "sleep_per_step": 0.15}},
                       execution={"checkpoint_every": 2})
    storage = str(tmp_path / "runs")
    controller = pbt_background("run", str(study), "--storage", storage, "-q", log=tmp_path / "controller.log")
    victims = []
    try:
        for _ in range(3):
            victim = wait_for(lambda: running("toy", storage, 4, workers), 60, interval=0.2, what="a trial in progress")
            owner = next(n for n in workers.procs if victim["worker"].startswith(n))
            beat = redis.Redis.from_url(workers.broker).get(f"pbt:toy:alive:{victim['id']}")
            step_at_kill = json.loads(beat)["step"] if beat else victim["steps_done"]
            workers.kill(owner)  # SIGKILL main process and pool child together
            victims.append((victim, step_at_kill))
            names = workers.start(1)
        assert controller.wait(timeout=180) == 0, (tmp_path / "controller.log").read_text()
    finally:
        kill_group(controller)
    data = status("toy", storage)
    assert_complete_and_once(data)
    assert all(t["status"] == "completed" for t in data["trials"])
    assert sum(t["steps_done"] for t in data["trials"]) == 160  # nothing counted twice
    for victim, step in victims:
        after = data["trials"][victim["number"]]
        assert after["attempts"] >= 2, after
        # The new attempt resumed from the last in-trial checkpoint: at most checkpoint_every lost.
        assert after["resumed_from_step"] is not None and after["resumed_from_step"] >= step - 2, (after, step)
    assert names


def test_controller_killed_and_restarted_resumes_without_rerunning(tmp_path, workers):
    workers.start(2)
    study = study_file(tmp_path, workers, budget={"total_steps": 192},
                       trainer={"config": {"lr": 0.01, "sleep_per_step": 0.05}}, execution={"checkpoint_every": 2})
    storage = str(tmp_path / "runs")
    controller = pbt_background("run", str(study), "--storage", storage, "-q")
    wait_for(lambda: running("toy", storage, 99) and len(status("toy", storage)["trials"]) > 12, 60,
             interval=0.3, what="the study to get going")
    kill_group(controller)  # the workers keep running the tasks they hold
    before = status("toy", storage)
    time.sleep(1)
    again = pbt("run", str(study), "--storage", storage, "-q", timeout=180)
    assert again.returncode == 0, again.stderr
    after = status("toy", storage)
    assert_complete_and_once(after)
    assert sum(t["steps_done"] for t in after["trials"]) == 192
    for t in before["trials"]:
        if t["status"] == "completed":  # nothing finished is run again
            assert after["trials"][t["number"]]["attempts"] == t["attempts"]
    reference = pbt("run", str(study), "--storage", str(tmp_path / "ref"), "-q", timeout=180)
    assert reference.returncode == 0
    ref = status("toy", str(tmp_path / "ref"))
    assert [(t["params"], t["parent"]) for t in after["trials"]] == [(t["params"], t["parent"]) for t in ref["trials"]]


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
            wait_for(lambda: running("toy", storage, 99), 60, interval=0.2, what="trials running again")
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


def test_a_second_controller_is_refused(tmp_path, workers):
    workers.start(1)
    study = study_file(tmp_path, workers, trainer={"config": {"lr": 0.01, "sleep_per_step": 0.2}})
    storage = str(tmp_path / "runs")
    first = pbt_background("run", str(study), "--storage", storage, "-q", log=tmp_path / "first.log")
    try:
        wait_for(lambda: Path(storage, "toy", "journal").exists(), 60, what="the first controller to start")
        second = pbt("run", str(study), "--storage", str(tmp_path / "elsewhere"), "-q")
        assert second.returncode == 3
        assert "already driven by another controller" in second.stderr and "pid" in second.stderr
    finally:
        kill_group(first)


def test_trainers_that_raise_hang_or_diverge_fail_with_their_reason(tmp_path, workers):
    workers.start(2)
    study = study_file(tmp_path, workers, budget={"total_steps": 96},
                       trainer={"config": {"lr": 0.01, "fail_above": 0.85, "nan_above": 0.6, "hang_above": 0.8}},
                       execution={"max_attempts": 2, "trial_timeout": 2})
    proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "-q", timeout=240)
    assert proc.returncode == 0, proc.stderr
    data = status("toy", str(tmp_path / "runs"))
    assert_complete_and_once(data)
    errors = {t["id"]: t["error"] for t in data["trials"] if t["status"] == "failed"}
    assert any("told to fail" in e for e in errors.values())
    assert any("not finite" in e for e in errors.values())
    assert any("TimeLimit" in e for e in errors.values()), errors
    for t in data["trials"]:
        if t["status"] == "failed" and "not finite" not in t["error"]:
            assert t["failures"] == 2  # bounded retries
    assert any(t["status"] == "completed" for t in data["trials"])


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
