"""The controller's side of the Redis transport (:class:`pbt.tasks.distributed.CeleryExecutor`), no workers.

A tick's attempts go out in one pipeline as the very messages ``send_task`` would store; results
come back on the study's stream, are acknowledged only when :meth:`ack` is called, and what does
not decode is dead-lettered and acknowledged; a FLUSHALL costs nothing but a warning.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from helpers import toy_data

from pbt.study_file import parse_spec
from pbt.tasks import channels, deadletter
from pbt.tasks.distributed import CeleryExecutor
from pbt.trial import TrialResult, TrialStatus, TrialTask


@pytest.fixture
def executor(redis_url, tmp_path):
    data = toy_data(name=f"tr-{uuid.uuid4().hex[:8]}")
    data["broker"] = redis_url
    data["execution"] = {**data["execution"], "queue": f"q-{uuid.uuid4().hex[:8]}", "heartbeat_seconds": 0.2,
                         "lease_seconds": 1}
    data["storage"] = str(tmp_path / "runs")
    ex = CeleryExecutor(parse_spec(data))
    yield ex
    ex.redis.delete(ex.queue, ex.stream, channels.attempts_key(ex.spec.name))
    ex.close()


def task(ex: CeleryExecutor, n: int, attempt: int = 1) -> TrialTask:
    return TrialTask(study=ex.spec.name, trial_id=f"t{n:06d}", number=n, attempt=attempt, params={"h0": 0.5},
                     steps=4, storage=ex.spec.storage, trainer=ex.spec.trainer.path, objective_metric="q", seed=0,
                     published_at=time.time())


def result(ex: CeleryExecutor, n: int, attempt: int = 1, **over) -> dict:
    fields = dict(study=ex.spec.name, trial_id=f"t{n:06d}", attempt=attempt, status=TrialStatus.COMPLETED,
                  steps_done=4, objective=1.0, checkpoint=f"{ex.spec.name}/trials/t{n:06d}/final")
    return TrialResult(**{**fields, **over}).model_dump(mode="json") | {"kind": "result"}


def drain(ex: CeleryExecutor, want: int, seconds: float = 5.0) -> list:
    out: list = []
    deadline = time.time() + seconds
    while len(out) < want and time.time() < deadline:
        out += [e for e in ex.events(0.1) if e.receipt is not None]
    return out


def test_a_ticks_attempts_are_one_round_trip_of_the_messages_send_task_stores(executor):
    ex = executor
    tasks = [task(ex, n) for n in range(5)]
    for t in tasks:
        ex.submit(t)
    assert ex.redis.llen(ex.queue) == 0, "nothing is published before flush"
    ex.flush()
    ours = [json.loads(m) for m in reversed(ex.redis.lrange(ex.queue, 0, -1))]  # workers pop the far end
    assert [m["headers"]["id"] for m in ours] == [channels.task_id(t.study, t.trial_id, 1) for t in tasks]
    assert ex.redis.hgetall(channels.attempts_key(ex.spec.name)) == {t.trial_id.encode(): b"1" for t in tasks}
    ex.redis.delete(ex.queue)
    t = tasks[0]
    ex.app.send_task("pbt.run_trial", kwargs={"task": t.model_dump(mode="json")}, queue=ex.queue,
                     task_id=channels.task_id(t.study, t.trial_id, 1),
                     kwargsrepr=f"study={t.study} trial={t.trial_id} attempt={t.attempt} params={t.params}")
    theirs = json.loads(ex.redis.lpop(ex.queue))
    mine = ours[0]
    assert json.loads(base64.b64decode(mine["body"])) == json.loads(base64.b64decode(theirs["body"]))
    for field in ("content-type", "content-encoding"):
        assert mine[field] == theirs[field]
    assert set(mine["headers"]) == set(theirs["headers"])
    for field in ("task", "id", "root_id", "kwargsrepr", "argsrepr", "retries"):
        assert mine["headers"][field] == theirs["headers"][field], field
    for field in ("delivery_info", "body_encoding", "priority", "delivery_mode", "correlation_id"):
        assert mine["properties"][field] == theirs["properties"][field], field
    assert mine["properties"]["delivery_tag"] != theirs["properties"]["delivery_tag"]


def test_results_are_acknowledged_only_when_recorded_and_garbage_is_dead_lettered(executor):
    ex = executor
    for n in range(3):
        ex.submit(task(ex, n))
    ex.flush()
    letters = deadletter.count(ex.redis)
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 0))})
    ex.redis.xadd(ex.stream, {"m": b"\xff not json"})
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps({"kind": "result", "trial_id": 7})})
    ex.redis.xadd(ex.stream, {"m": json.dumps(result(ex, 1))})  # no "k": an older worker's entry
    events = drain(ex, 2)
    assert sorted(e.message.trial_id for e in events) == ["t000000", "t000001"]
    assert deadletter.count(ex.redis) == letters + 2
    assert ex.redis.xpending(ex.stream, ex.group)["pending"] == 4, "nothing acknowledged before ack()"
    ex.ack(events)
    assert ex.redis.xpending(ex.stream, ex.group)["pending"] == 4, "acknowledged with the tick's flush"
    ex.flush()
    assert ex.redis.xpending(ex.stream, ex.group)["pending"] == 0
    assert ex.redis.xlen(ex.stream) == 0, "acknowledged entries are deleted too"
    assert set(ex.inflight) == {"t000002"}


def test_results_no_worker_of_the_study_can_have_sent_are_dead_lettered(executor):
    """Found by the attack pass: a result for another study, for an attempt never published, or a
    completed one without its checkpoint, XADDed to a running study's stream, was recorded (and
    the last ended the study: 'policy chose t000002 as a parent, which is not usable', exit 1)."""
    ex = executor
    for n in range(4):
        ex.submit(task(ex, n))
    ex.flush()
    letters = deadletter.count(ex.redis)
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 0, study="other"))})
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 1, attempt=77))})
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 2, checkpoint=None))})
    progress = {"kind": "progress", "study": "other", "trial_id": "t000003", "attempt": 1, "step": 1}
    ex.redis.xadd(ex.stream, {"k": "progress", "m": json.dumps(progress)})
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 3))})
    events = drain(ex, 1)
    assert [e.message.trial_id for e in events] == ["t000003"]
    assert deadletter.count(ex.redis) == letters + 4
    reasons = " ".join(d.reason for d in deadletter.read(ex.redis, 4))
    assert "'other'" in reasons and "never published" in reasons and "without a checkpoint" in reasons
    ex.ack(events)
    ex.flush()
    assert ex.redis.xpending(ex.stream, ex.group)["pending"] == 0
    assert set(ex.inflight) == {"t000000", "t000001", "t000002"}


def test_a_new_controller_reads_what_its_predecessor_left_unacknowledged(executor):
    ex = executor
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 0))})
    assert [e.message.trial_id for e in drain(ex, 1)] == ["t000000"]  # read, then the controller dies
    successor = CeleryExecutor(ex.spec)
    try:
        ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 1))})
        events = drain(successor, 2)
        assert [e.message.trial_id for e in events] == ["t000000", "t000001"]
        successor.ack(events)
        successor.flush()
        assert successor.redis.xpending(ex.stream, ex.group)["pending"] == 0
    finally:
        successor.close()


def test_a_flushall_under_a_blocked_read_recreates_the_group(executor):
    ex = executor
    assert ex.events(0.05) == []
    ex.redis.flushall()
    ex.events(0.05)  # NOGROUP (or UNBLOCKED): a warning, and the group is created again
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 3))})
    assert [e.message.trial_id for e in drain(ex, 1)] == ["t000003"]


def test_liveness_reads_only_the_attempts_that_are_due(executor, monkeypatch):
    ex = executor
    for n in range(50):
        ex.submit(task(ex, n))
    ex.flush()
    ex.redis.set(channels.alive_key(ex.spec.name, "t000007"),
                 json.dumps({"attempt": 1, "step": 2, "worker": "w", "at": time.time()}))
    asked: list[int] = []
    mget = ex.redis.mget
    monkeypatch.setattr(ex.redis, "mget", lambda keys: asked.append(len(keys)) or mget(keys))
    assert ex._liveness() == []  # nothing due yet: no read at all
    time.sleep(0.15)
    beats = ex._liveness()
    assert [(e.message.trial_id, e.message.step) for e in beats] == [("t000007", 2)]
    assert asked == [50]
    time.sleep(0.25)  # the others are read again (backing off while they wait in the queue), t000007 not
    assert ex._liveness() == [] and asked == [50, 49], "a beat seen is not read again until its lease is near"


def test_a_worker_runs_an_attempt_whose_attempt_record_is_not_a_number(executor):
    """Found by the attack pass: a non-number in ``pbt:<study>:attempts`` made every attempt of the
    trial raise ValueError in the worker (a traceback; acknowledged unrun, lost until its lease)."""
    from pbt.tasks.worker import _stale

    ex = executor
    t = task(ex, 1, attempt=2)
    key = channels.attempts_key(ex.spec.name)
    assert _stale(ex.redis, t) is None
    ex.redis.hset(key, t.trial_id, "3")
    assert "superseded" in _stale(ex.redis, t)
    ex.redis.hset(key, t.trial_id, b"\xffgarbage")
    assert _stale(ex.redis, t) is None


def test_an_earlier_run_of_a_study_of_the_same_name_is_refused_on_both_sides(executor):
    """Found by the attack pass (README's one-machine recipe): Ctrl-C a study, delete its records,
    start it again under the same name: the first run's queued tasks still ran and their results,
    same trial ids and attempts, were recorded for the new run's trials (with other parameters)."""
    from pbt.tasks.worker import _stale

    ex = executor
    old = task(ex, 2).model_copy(update={"study_uid": "1000.000001"})
    new = task(ex, 2).model_copy(update={"study_uid": "2000.000002"})
    ex.submit(new)
    ex.flush()
    assert ex.redis.hget(channels.attempts_key(ex.spec.name), channels.RUN_FIELD) == b"2000.000002"
    assert "earlier run" in _stale(ex.redis, old)
    assert _stale(ex.redis, new) is None
    letters = deadletter.count(ex.redis)
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 2, study_uid="1000.000001"))})
    ex.redis.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 2, study_uid="2000.000002"))})
    events = drain(ex, 1)
    assert [e.message.study_uid for e in events] == ["2000.000002"]
    assert deadletter.count(ex.redis) == letters + 1
    assert "earlier run" in deadletter.read(ex.redis, 1)[0].reason


def test_an_attempt_a_worker_took_just_before_its_lease_was_checked_is_not_declared_lost(executor):
    """Found by the attack pass: an attempt that waited in the queue about a lease (parallelism
    above the workers) and was taken just before the lease check was not in the queue and its
    liveness not yet read: "attempt 1 vanished from the broker; re-publishing", duplicate work."""
    ex = executor
    t = task(ex, 4)
    ex.submit(t)
    ex.flush()
    assert ex.in_broker([t]) == {t.trial_id}, "still queued"
    ex.redis.rpop(ex.queue)  # a worker takes it ...
    assert ex.in_broker([t]) == set(), "... and dies before its first beat: lost"
    beat = json.dumps({"attempt": 1, "step": 0, "worker": "w", "at": time.time()})
    ex.redis.set(channels.alive_key(t.study, t.trial_id), beat)  # ... or beats once
    assert ex.in_broker([t]) == {t.trial_id}
    ex.beats[t.trial_id] = beat.encode()  # a beat the controller has seen proves nothing new
    assert ex.in_broker([t]) == set()
    stale = json.dumps({"attempt": 0, "step": 0, "worker": "w", "at": time.time()})
    ex.redis.set(channels.alive_key(t.study, t.trial_id), stale)  # another attempt's beat
    assert ex.in_broker([t]) == set()


def test_a_second_controller_says_the_study_is_locked_before_saying_it_started(redis_url, tmp_path):
    """Found by the attack pass: `pbt run` of a study another controller drives printed
    "study toy: pbt on Celery workers ...; records in ..." and only then the lock error (exit 3)."""
    import redis as redis_lib

    from pbt.testing import pbt, write_study

    name = f"lk-{uuid.uuid4().hex[:8]}"
    data = toy_data(name=name)
    data["broker"] = redis_url
    study = write_study(tmp_path / "s.yaml", data)
    client = redis_lib.Redis.from_url(redis_url)
    client.set(f"pbt:{name}:controller", json.dumps({"host": "elsewhere", "pid": 1, "since": 0}), ex=60)
    try:
        out = pbt("run", str(study), "--storage", str(tmp_path / "runs"))
    finally:
        client.delete(f"pbt:{name}:controller")
    assert out.returncode == 3, out.stderr
    assert "already driven by another controller (host elsewhere" in out.stderr
    assert "records in" not in out.stdout + out.stderr


def test_a_flood_of_junk_entries_does_not_hide_the_results_behind_it(executor):
    """Found by the attack pass: 50,000 junk entries XADDed to a running study took a round trip
    and a log line each to dead-letter, a poll at a time; the results behind them were read only
    after their leases lapsed, and every trial in flight was charged a failure."""
    ex = executor
    ex.submit(task(ex, 5))
    ex.flush()
    pipe = ex.redis.pipeline(transaction=False)
    for n in range(3500):
        pipe.xadd(ex.stream, {"m": b"junk %d" % n})
    pipe.xadd(ex.stream, {"k": "result", "m": json.dumps(result(ex, 5))})
    pipe.execute()
    events = [e for e in ex.events(0.1) if e.receipt is not None]
    assert [e.message.trial_id for e in events] == ["t000005"], "one poll reads through the junk"
    assert deadletter.count(ex.redis) == deadletter.MAX_LETTERS
    ex.ack(events)
    ex.flush()
    assert ex.redis.xlen(ex.stream) == 0
