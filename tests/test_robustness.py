"""No message, study file or trainer takes the service down (issue 11), with real processes.

A private ``redis-server`` per test, plain ``celery -A pbt.tasks worker`` processes and the real
``pbt`` CLI: malformed and forged messages on the trial queue are dead-lettered while workers
keep serving, workers run only what their configuration allows, a process left unfit by a trial
is replaced, workers whose environment is unusable retire and the study ends, and errors at the
edges (broker, storage, checkpoints, credentials) are one line with their own exit status.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from helpers import toy_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kombu import Connection, Producer
from test_embedded_study import assert_complete_and_once

from pbt.tasks import deadletter
from pbt.tasks.channels import result_stream
from pbt.testing import RedisServer, Workers, free_port, pbt, status, wait_for, write_study
from pbt.trial import TrialTask

pytestmark = pytest.mark.slow

FAST = {"heartbeat_seconds": 0.5, "lease_seconds": 4}
WORKER_ENV = {"PBT_VISIBILITY_TIMEOUT": "30", "PBT_UNACKED_RESTORE_INTERVAL": "2"}


@pytest.fixture
def broker(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def workers(broker, tmp_path):
    pool = Workers(broker.url, tmp_path, WORKER_ENV)
    yield pool
    pool.stop_all()


def study_file(tmp_path: Path, pool: Workers, name: str = "toy", **over) -> Path:
    data = toy_data(name=name, **over)
    data["execution"] = {**data["execution"], **FAST, "queue": pool.queue, **over.get("execution", {})}
    data["broker"] = pool.broker
    return write_study(tmp_path / f"{name}.yaml", data)


# --- what the tests put on the trial queue -------------------------------------------------------


def raw(url: str, queue: str, entry: bytes) -> None:
    """A list entry as anyone with broker access can LPUSH it."""
    redis.Redis.from_url(url).lpush(queue, entry)


def envelope(url: str, queue: str, body, *, task: str = "pbt.run_trial", serializer: str = "json", **headers) -> None:
    """A well-formed Celery message (protocol 2) around ``body``."""
    tid = headers.pop("id", str(uuid.uuid4()))
    with Connection(url) as conn:
        Producer(conn.channel()).publish(
            body, exchange="", routing_key=queue, serializer=serializer,
            headers={"lang": "py", "task": task, "id": tid, "root_id": tid, "retries": 0, **headers},
        )


def valid_task(storage: str, study: str = "forged", **over) -> dict:
    """Every field right; tests change one."""
    task = TrialTask(study=study, trial_id="t000001", number=1, attempt=1, params={"h0": 0.5, "h1": 0.5}, steps=4,
                     storage=storage, trainer="pbt.trainers.toy:ToyTrainer", objective_metric="q", seed=0)
    return {**task.model_dump(mode="json"), **over}


def dead_letters(url: str) -> list[deadletter.DeadLetter]:
    return deadletter.read(redis.Redis.from_url(url), 1000)


def alive(pool: Workers, name: str) -> bool:
    return pool.procs[name].poll() is None


def queue_drained(url: str, queue: str) -> bool:
    client = redis.Redis.from_url(url)
    return client.llen(queue) == 0 and not client.hlen("unacked")


# --- kind 1: poison trial messages ---------------------------------------------------------------


def test_poison_trial_messages_are_dead_lettered_and_the_workers_keep_serving(tmp_path, workers):
    # shared/cases/rel-poison-trial-msg, and the rest of its kind.
    first, = workers.start(1)
    url, q = workers.broker, workers.queue
    storage = str(tmp_path / "runs")
    raw(url, q, b"this is not json {{{")  # the case's first message
    envelope(url, q, "just a string", argsrepr="()", kwargsrepr="{}")  # the case's second
    raw(url, q, b"\xff\xfe\x00garbage")
    raw(url, q, b"[1, 2, 3]")
    raw(url, q, json.dumps({"body": "e30=", "headers": {}}).encode())  # no properties
    raw(url, q, json.dumps({"body": "!!!", "properties": {"delivery_tag": "x", "body_encoding": "base64"}}).encode())
    raw(url, q, json.dumps({"__type__": "datetime", "__value__": "not a date"}).encode())
    envelope(url, q, [1, 2, 3])
    envelope(url, q, [[], {"task": "x"}, {}], id=None)
    envelope(url, q, [[], {}, {}], task="celery.accumulate")
    envelope(url, q, [[], {}, {}], serializer="pickle")
    envelope(url, q, [[], {"task": valid_task(storage)}, {}], eta="2099-01-01T00:00:00+00:00")
    envelope(url, q, [[], {"task": valid_task(storage)}, {"callbacks": [{"task": "celery.accumulate"}]}])
    envelope(url, q, [[], {"task": valid_task(storage, trial_id="../../escape")}, {}])
    envelope(url, q, [[], {"task": {"study": "x"}}, {}])
    sent = 15
    letters = wait_for(lambda: len(dead_letters(url)) >= sent and dead_letters(url), 30, what="the dead letters")
    assert len(letters) == sent, [d.reason for d in letters]
    assert queue_drained(url, q)
    assert alive(workers, first)
    second, = workers.start(1)  # a worker started afterwards finds nothing left to die on
    log = workers.log(first)
    assert "Unrecoverable error" not in log and "CRITICAL" not in log, log[-3000:]
    reasons = " | ".join(d.reason for d in letters)
    for says in ("not JSON", "not [args, kwargs, embed]", "not a pbt task", "pickle", "no 'eta'", "callbacks",
                 "invalid trial id", "not a kombu message"):
        assert says in reasons, (says, reasons)

    study = study_file(tmp_path, workers, budget={"total_steps": 64})
    proc = pbt("run", str(study), "--storage", storage, "-q", timeout=180)
    assert proc.returncode == 0, proc.stderr
    data = status("toy", storage)
    assert_complete_and_once(data)
    assert {t["worker"].split(" ")[0] for t in data["trials"]} <= {first, second}
    assert alive(workers, first) and alive(workers, second)

    shown = pbt("deadletters", "--broker", url, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["count"] == sent
    counted = pbt("status", "toy", "--storage", storage, "--broker", url)
    assert f"{sent} dead letter(s)" in counted.stderr, counted.stderr
    cleared = pbt("deadletters", "--broker", url, "--clear")
    assert cleared.returncode == 0 and f"cleared {sent}" in cleared.stderr
    assert not dead_letters(url)


# --- kind 3: workers trust configuration, not messages ------------------------------------------


def test_a_worker_runs_only_what_its_configuration_allows(tmp_path, broker):
    served = tmp_path / "served"
    elsewhere = tmp_path / "elsewhere"
    marker = tmp_path / "imported"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "evil_trainer.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\nfrom pbt.trainers.toy import ToyTrainer as Trainer\n"
    )
    pool = Workers(broker.url, tmp_path, {**WORKER_ENV, "PYTHONPATH": f"{modules}:{os.environ.get('PYTHONPATH', '')}"},
                   storage=str(served))
    try:
        name, = pool.start(1)
        url, q = broker.url, pool.queue
        forged = {
            "storage elsewhere": valid_task(str(elsewhere)),
            "storage above": valid_task(str(served / "..")),
            "trainer not allowed": valid_task(str(served), trainer="evil_trainer:Trainer"),
            "os.system": valid_task(str(served), trainer="os:system"),
            "trial id": valid_task(str(served), trial_id="../../../tmp/x"),
            "study": valid_task(str(served), study="../outside"),
            "checkpoint of another study": valid_task(str(served), parent_checkpoint="other/checkpoints/t000000/"
                                                                                       "step-000000004"),
            "checkpoint path": valid_task(str(served), parent_checkpoint="forged/checkpoints/t000000/../../x"),
            "negative seed": valid_task(str(served), seed=-1),
            "string for a number": valid_task(str(served), steps="4"),
            "heartbeat of zero": valid_task(str(served), heartbeat_seconds=0.0),
            "huge config": valid_task(str(served), trainer_config={"x": "y" * (2 << 20)}),
        }
        for task in forged.values():
            envelope(url, q, [[], {"task": task}, {}])
        wait_for(lambda: len(dead_letters(url)) >= len(forged), 30, what="every forged task dead-lettered")
        wait_for(lambda: queue_drained(url, q), 10, what="the queue to drain")
        assert len(dead_letters(url)) == len(forged)
        assert alive(pool, name)
        assert not marker.exists(), "the worker imported a module a message named"
        assert not elsewhere.exists() and not (tmp_path / "outside").exists()
        assert not served.exists() or not [p for p in served.rglob("*") if p.is_file()]
        reasons = " | ".join(d.reason for d in dead_letters(url))
        assert "does not serve storage" in reasons and "does not run trainer 'evil_trainer:Trainer'" in reasons
        # A well-formed task this worker does not serve is also reported to its study, so the
        # controller can re-publish it and end a study no worker can serve.
        client = redis.Redis.from_url(url)
        wait_for(lambda: client.xlen(result_stream("forged")) >= 4, 5, what="the refusals on the result stream")
        got = [json.loads(fields[b"m"]) for _, fields in client.xrange(result_stream("forged"))][:4]
        assert {r["scope"] for r in got} == {"worker"} and all(r["status"] == "failed" for r in got)
        assert any("--trainers" in r["error"] for r in got) and any("--storage" in r["error"] for r in got)
    finally:
        pool.stop_all()


def test_a_worker_with_no_storage_configured_serves_the_folder_it_started_in(tmp_path, monkeypatch):
    from pbt.storage import normalize_uri
    from pbt.tasks.trust import WorkerTrust

    monkeypatch.chdir(tmp_path)  # `pbt worker` and `pbt run --storage store` started side by side
    trust = WorkerTrust.from_env({})
    assert trust.serves_storage(normalize_uri("store")) and trust.serves_storage(normalize_uri(str(tmp_path)))
    assert not trust.serves_storage(normalize_uri(str(tmp_path.parent / "elsewhere")))
    assert not trust.serves_storage(normalize_uri(str(tmp_path / "..")))
    assert WorkerTrust.from_env({"PBT_STORAGE": "s3://bucket/pbt"}).storages == ("s3://bucket/pbt",)
    monkeypatch.chdir("/")  # a service started in / with nothing configured serves nothing
    assert WorkerTrust.from_env({}).storages == ()


def test_a_study_whose_trainer_no_worker_allows_ends_saying_so(tmp_path, broker):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "mytrainers.py").write_text("from pbt.trainers.toy import ToyTrainer as Toy\n")
    env = {**WORKER_ENV, "PYTHONPATH": f"{modules}:{os.environ.get('PYTHONPATH', '')}"}
    pool = Workers(broker.url, tmp_path, env)
    try:
        pool.start(2)
        study = study_file(tmp_path, pool, trainer={"path": "mytrainers:Toy", "config": {}},
                           execution={"max_worker_failures": 6})
        proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "-q", timeout=120, env=env)
        assert proc.returncode == 1, proc.stderr
        assert "no worker could run the trials" in proc.stderr or "in a row failed" in proc.stderr, proc.stderr
        assert "--trainers" in proc.stderr
        data = status("toy", str(tmp_path / "runs"))
        assert data["state"]["reason"] == "no_worker"
        assert all(t["failures"] == 0 for t in data["trials"]), "the workers' refusals cost no attempt"
        assert all(alive(pool, n) for n in pool.procs), "refusing a task is no reason to retire"
    finally:
        pool.stop_all()
    allowed = Workers(broker.url, tmp_path, env, trainers="mytrainers")
    try:
        allowed.start(2)
        study = study_file(tmp_path, allowed, name="allowed", trainer={"path": "mytrainers:Toy", "config": {}})
        proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "-q", timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
    finally:
        allowed.stop_all()


# --- kind 4: sick workers take themselves out -----------------------------------------------------


def test_a_pool_process_left_unfit_by_a_trial_is_replaced_and_the_trial_runs_again(tmp_path, workers):
    workers.start(2)
    study = study_file(tmp_path, workers, budget={"total_steps": 96},
                       trainer={"config": {"lr": 0.01, "unfit_after": 3}})
    storage = str(tmp_path / "runs")
    proc = pbt("run", str(study), "--storage", storage, "-q", timeout=240)
    assert proc.returncode == 0, proc.stderr
    data = status("toy", storage)
    assert_complete_and_once(data)
    assert all(t["status"] == "completed" and t["failures"] == 0 for t in data["trials"]), "nothing charged"
    pids = {t["worker"] for t in data["trials"]}
    assert len(pids) >= 6, pids  # 24 trials at most 3 per process: fresh processes took over
    logs = "".join(workers.log(n) for n in workers.procs)
    assert "replaced the pool process" in logs
    assert all(alive(workers, n) for n in workers.procs)


def test_the_memory_leak_case_finishes_with_every_trial_completed(tmp_path):
    # shared/cases/rel-memerror-worker-reused: a trainer leaking 100 MiB per train() under a
    # 1.8 GB address-space cap; the same process used to fail every later trial for ever.
    (tmp_path / "leaky.py").write_text(
        "from pbt.trainers.toy import ToyTrainer\n_HOARD = []\n\n\nclass LeakyToy(ToyTrainer):\n"
        "    def train(self, steps):\n        _HOARD.append(bytearray(100 * 1024 * 1024))\n"
        "        return super().train(steps)\n"
    )
    data = toy_data(name="leaky", trainer={"path": "leaky:LeakyToy", "config": {}}, execution={"parallelism": 2})
    study = write_study(tmp_path / "study.yaml", data)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1_800_000_000, 1_800_000_000))

    env = {"PYTHONPATH": f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}"}
    proc = pbt("run", str(study), "--storage", str(tmp_path / "store"), "--workers", "2", "-q", timeout=120,
               env=env, preexec_fn=cap)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = status("leaky", str(tmp_path / "store"))
    assert len(result["trials"]) == 40 and all(t["status"] == "completed" for t in result["trials"])
    assert proc.stderr.count("MemoryError") < 40  # each process failed once, then was replaced


# --- kind 6: errors at the boundaries --------------------------------------------------------------


def test_an_unusable_broker_is_one_line_and_exit_5_before_anything_starts(tmp_path):
    secret = "pbt-redis-PASSWORD-93bd"
    server = RedisServer(tmp_path, password=secret)
    server.start()
    try:
        study = write_study(tmp_path / "s.yaml", toy_data())
        wrong = f"redis://:{secret}-wrong@127.0.0.1:{server.port}/0"
        none = f"redis://:{secret}@127.0.0.1:{free_port()}/0"
        for url, says in ((wrong, "refused us"), (none, "unreachable")):
            proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "--broker", url, timeout=60)
            assert proc.returncode == 5, proc.stderr
            assert says in proc.stderr and "redis://:***@127.0.0.1" in proc.stderr
            assert secret not in proc.stderr + proc.stdout
            assert "Traceback" not in proc.stderr and "study toy:" not in proc.stderr  # not shown as started
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))
        worker = pbt("worker", "--broker", wrong, "--storage", str(tmp_path), timeout=60)
        assert worker.returncode == 5 and "refused us" in worker.stderr and secret not in worker.stderr
    finally:
        server.stop()


def test_a_study_file_left_half_created_is_taken_over_or_cleared(tmp_path):
    storage = tmp_path / "runs"
    (storage / "toy").mkdir(parents=True)
    (storage / "toy" / "spec.json").write_text(json.dumps({**toy_data(), "seed": 99}))  # no trial record
    study = write_study(tmp_path / "s.yaml", toy_data(budget={"total_steps": 32}))
    proc = pbt("run", str(study), "--storage", str(storage), "-q", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "half-created" in proc.stderr
    refused = pbt("clear", "toy", "--storage", str(storage))
    assert refused.returncode == 2 and "--force" in refused.stderr
    cleared = pbt("clear", "toy", "--storage", str(storage), "--force")
    assert cleared.returncode == 0, cleared.stderr
    assert not [p for p in storage.rglob("*") if p.is_file()]
    (storage / "half").mkdir(parents=True)
    (storage / "half" / "spec.json").write_text("{}")
    assert pbt("clear", "half", "--storage", str(storage)).returncode == 0
    assert not (storage / "half" / "spec.json").exists()


def test_trainer_output_is_kept_and_shown_for_failed_trials(tmp_path):
    study = write_study(tmp_path / "s.yaml", toy_data(
        budget={"total_steps": 32}, trainer={"config": {"lr": 0.01, "say": "loss looks odd", "fail_above": 0.5}},
        execution={"parallelism": 2, "max_attempts": 1}))
    storage = str(tmp_path / "runs")
    proc = pbt("run", str(study), "--storage", storage, "-q", "--workers", "2")
    data = status("toy", storage)
    failed = [t["id"] for t in data["trials"] if t["status"] == "failed"]
    done = [t["id"] for t in data["trials"] if t["status"] == "completed"]
    assert failed and done, (proc.stderr, [t["params"] for t in data["trials"]])
    shown = pbt("status", "toy", "--storage", storage)
    assert "| loss looks odd (fd 2" in shown.stderr and f"pbt logs toy {failed[0]}" in shown.stderr
    logs = pbt("logs", "toy", done[0], "--storage", storage)
    assert logs.returncode == 0 and "loss looks odd (stdout, step 0)" in logs.stdout
    assert pbt("logs", "toy", "../x", "--storage", storage).returncode == 2


def test_pbt_sample_loads_only_verified_checkpoints(tmp_path):
    torch = pytest.importorskip("torch")
    from pbt.storage import open_object_store
    from pbt.storage.checkpoints import CheckpointStore
    from pbt.wavenet.model import WaveNet, WaveNetConfig
    from pbt.wavenet.trainer import CHECKPOINT, FORMAT

    config = WaveNetConfig(layers_per_stack=2, stacks=1, residual_channels=4, dilation_channels=4, skip_channels=4)
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"format": FORMAT, "model": WaveNet(config).state_dict(), "model_config": config.to_dict(),
                "sample_rate": 8000, "mel_hop": 200}, folder / CHECKPOINT)
    objects = open_object_store(str(tmp_path / "runs"))
    name = "toy/checkpoints/t000003/step-000000010"
    CheckpointStore(objects).save(name, folder)
    ok = pbt("sample", objects.url(name), "--out", str(tmp_path / "a.wav"), "--seconds", "0.01", "--device", "cpu")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "a.wav").stat().st_size > 44
    bare = pbt("sample", str(folder), "--out", str(tmp_path / "b.wav"), "--seconds", "0.01")
    assert bare.returncode == 1 and "cannot be verified" in bare.stderr
    manifest = json.loads((tmp_path / "runs" / name / "MANIFEST.json").read_text())
    part = tmp_path / "runs" / manifest["parts"][0]["key"]
    flipped = bytearray(part.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF  # one byte changed
    part.write_bytes(bytes(flipped))
    bad = pbt("sample", str(tmp_path / "runs" / name), "--out", str(tmp_path / "c.wav"), "--seconds", "0.01")
    assert bad.returncode == 1 and "SHA-256" in bad.stderr and not (tmp_path / "c.wav").exists()


# --- kind 1, fuzzed: garbage and near-valid messages at running workers while a study runs ---------

_VALID = valid_task("/tmp/pbt-fuzz-unused")
_BAD_VALUES = {
    "study": ["", "..", "a/b", "x" * 200, 3, None],
    "trial_id": ["t1", "t00000x", "../t000001", "", 7, None],
    "number": [-1, 2, "1", 1.5, True, None],
    "attempt": [0, -3, "1", 10**9, None],
    "params": ["x", [1], {"h0": float("nan")}, {"not an identifier": 1}, None],
    "steps": [0, -1, "4", 10**13, True, None],
    "storage": ["", "ftp://x", 5, None, "s3://", "file:///etc"],
    "trainer": ["", "os:system", "no-colon", "a:b:c", 3, None],
    "trainer_config": ["x", [1], None],
    "objective_metric": ["", 1, None],
    "seed": [-1, 2**64, "0", 0.5, None],
    "checkpoint_every": [0, -2, "2"],
    "heartbeat_seconds": [0, -1, float("inf"), "2"],
    "lease_seconds": [0, 1e12, float("nan")],
    "parent_checkpoint": ["../../etc/passwd", "other/checkpoints/t000000/step-000000001", 5],
    "fallback_checkpoints": ["x", [1], ["forged/checkpoints/../x"]],
}

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@st.composite
def poison(draw):
    """One message nobody should run: (how to send it, what it is)."""
    kind = draw(st.sampled_from(["bytes", "json", "body", "near", "missing", "headers"]))
    if kind == "bytes":
        return "raw", draw(st.binary(min_size=1, max_size=200))
    if kind == "json":
        return "raw", json.dumps(draw(_json)).encode()
    if kind == "body":
        return "envelope", (draw(_json), {})
    if kind == "headers":
        return "envelope", ([[], {"task": _VALID}, {}], {"task": draw(st.text(max_size=30))})
    task = dict(_VALID)
    if kind == "missing":
        del task[draw(st.sampled_from(["study", "trial_id", "number", "attempt", "steps", "storage", "trainer",
                                       "objective_metric", "seed"]))]
    else:
        field = draw(st.sampled_from(sorted(_BAD_VALUES)))
        task[field] = draw(st.sampled_from(_BAD_VALUES[field]))
    return "envelope", ([[], {"task": task}, {}], {})


@pytest.mark.timeout(600)
def test_fuzzed_messages_at_running_workers_are_dead_lettered_and_the_study_finishes_exact(tmp_path, workers):
    workers.start(2)
    url, q = workers.broker, workers.queue
    storage = str(tmp_path / "runs")
    study = study_file(tmp_path, workers, budget={"total_steps": 192},
                       trainer={"config": {"lr": 0.01, "sleep_per_step": 0.02}})
    controller = subprocess.Popen([sys.executable, "-m", "pbt", "run", str(study), "--storage", storage, "-q"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
    sent = 0
    try:
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(message=poison())
        def throw(message):
            nonlocal sent
            how, payload = message
            if how == "raw":
                raw(url, q, payload)
            else:
                body, headers = payload
                envelope(url, q, body, **headers)
            sent += 1

        throw()
        _, err = controller.communicate(timeout=300)
    finally:
        if controller.poll() is None:
            os.killpg(controller.pid, signal.SIGKILL)
    assert controller.returncode == 0, err[-3000:]
    wait_for(lambda: len(dead_letters(url)) >= sent, 60, what=f"{sent} dead letters")
    assert len(dead_letters(url)) == sent
    data = status("toy", storage)
    assert_complete_and_once(data)
    assert sum(t["steps_done"] for t in data["trials"]) == 192
    assert all(alive(workers, n) for n in workers.procs)
    logs = "".join(workers.log(n) for n in workers.procs)
    assert "Unrecoverable error" not in logs


# --- poison results: garbage on a study's result stream is dead-lettered, never blocks it -------------

_RESULT = {"study": "toy", "trial_id": "t000001", "attempt": 1, "status": "completed", "steps_done": 4}
_BAD_RESULT_VALUES = {"attempt": ["four", None, [1]], "status": ["exploded", 3, None], "study": [None, 7, {}],
                      "trial_id": [None, 1.5, []], "steps_done": ["x", {}], "metrics": ["none", [1, 2]],
                      "timings": ["slow", [0]], "scope": ["everyone"], "objective": ["best", {}]}


@st.composite
def poison_result(draw) -> dict:
    """The fields of one stream entry no controller can record: garbage or a near-valid result."""
    kind = draw(st.sampled_from(["bytes", "json", "fields", "missing", "bad", "kind"]))
    if kind == "bytes":
        return {"m": draw(st.binary(min_size=0, max_size=200))}
    if kind == "json":
        value = draw(_json)
        if isinstance(value, dict):
            value = [value]  # an object could happen to be a valid (forged) message
        return {"m": json.dumps(value)}
    if kind == "fields":  # no "m" at all
        return draw(st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda k: k != "m"),
                                    st.binary(max_size=20), min_size=1, max_size=3))
    body = dict(_RESULT, kind=draw(st.sampled_from(["result", "progress"])))
    if kind == "missing":
        del body[draw(st.sampled_from(["study", "trial_id", "attempt"] + (["status"] if body["kind"] == "result"
                                                                             else [])))]
    elif kind == "kind":
        body["kind"] = draw(st.text(max_size=10).filter(lambda k: k not in ("result", "progress")))
    else:
        field = draw(st.sampled_from(sorted(_BAD_RESULT_VALUES)))
        body[field] = draw(st.sampled_from(_BAD_RESULT_VALUES[field]))
        if body["kind"] == "progress" and field not in ("study", "trial_id", "attempt"):
            body["kind"] = "result"  # progress has no such field: a result does, and refuses the value
    fields = {"m": json.dumps(body)}
    if draw(st.booleans()):
        fields["k"] = body["kind"]  # as workers write it: the kind outside the message
    return fields


@pytest.mark.timeout(600)
def test_fuzzed_entries_on_the_result_stream_are_dead_lettered_and_the_study_finishes_exact(tmp_path, workers):
    workers.start(2)
    url = workers.broker
    storage = str(tmp_path / "runs")
    study = study_file(tmp_path, workers, budget={"total_steps": 192},
                       trainer={"config": {"lr": 0.01, "sleep_per_step": 0.02}})
    controller = subprocess.Popen([sys.executable, "-m", "pbt", "run", str(study), "--storage", storage, "-q"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
    client = redis.Redis.from_url(url)
    sent = 0
    try:
        wait_for(lambda: Path(storage, "toy", "spec.json").exists(), 60, what="the study to start")

        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(fields=poison_result())
        def throw(fields):
            nonlocal sent
            client.xadd(result_stream("toy"), fields)
            sent += 1

        throw()
        _, err = controller.communicate(timeout=300)
    finally:
        if controller.poll() is None:
            os.killpg(controller.pid, signal.SIGKILL)
    assert controller.returncode == 0, err[-3000:]
    letters = [d for d in dead_letters(url) if d.queue == result_stream("toy")]
    assert len(letters) == sent, [d.reason for d in letters][:5]
    assert client.xpending(result_stream("toy"), "controller")["pending"] == 0
    data = status("toy", storage)
    assert_complete_and_once(data)
    assert all(t["status"] == "completed" for t in data["trials"])
    assert sum(t["steps_done"] for t in data["trials"]) == 192


# --- kinds 4 and 6 on S3: workers without credentials retire; no credential reaches a log ----------

KEY_ID = "AKIAPBTTESTKEYID0042"


@pytest.fixture
def bucket():
    import storage_backends as sb

    from pbt.storage.s3 import S3ObjectStore

    name = f"pbt-robust-{uuid.uuid4().hex[:10]}"
    env = {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": sb.SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_EC2_METADATA_DISABLED": "true", "PBT_S3_ENDPOINT_URL": sb.moto_endpoint(), "PBT_S3_MAX_ATTEMPTS": "2"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        S3ObjectStore(f"s3://{name}").client.create_bucket(Bucket=name)
        yield name, env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _exits(proc, timeout: float) -> bool:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


def test_workers_without_credentials_retire_and_the_study_ends_saying_why(tmp_path, broker, bucket):
    name, aws = bucket
    storage = f"s3://{name}/studies"
    no_credentials = {k: v for k, v in aws.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    pool = Workers(broker.url, tmp_path, {**WORKER_ENV, **no_credentials, "AWS_ACCESS_KEY_ID": "",
                                          "AWS_SECRET_ACCESS_KEY": ""}, storage=storage)
    try:
        names = pool.start(2)
        study = study_file(tmp_path, pool, execution={"max_worker_failures": 5})
        proc = pbt("run", str(study), "--storage", storage, "-q", timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert "in a row failed because of their workers' environment" in proc.stderr
        assert "credentials" in proc.stderr.lower()
        data = json.loads(pbt("status", "toy", "--storage", storage, "--json").stdout)
        assert data["state"]["reason"] == "no_worker" and len(data["trials"]) <= 4  # no trial made for failures
        assert all(t["failures"] == 0 for t in data["trials"])
        # A worker retires after three such failures in a row; the five the study took may have
        # gone 3 + 2, so one worker may still be up: every one that exited retired, saying why.
        retired = [n for n in names if pool.procs[n].poll() is not None or _exits(pool.procs[n], 20)]
        assert retired and all(pool.procs[n].returncode == 5 and "worker retiring" in pool.log(n) for n in retired)
    finally:
        pool.stop_all()


def test_no_credential_reaches_any_log_at_debug_level(tmp_path, broker, bucket):
    name, aws = bucket
    storage = f"s3://{name}/debug"
    pool = Workers(broker.url, tmp_path, {**WORKER_ENV, **aws}, storage=storage)
    try:
        worker = f"w-debug-{uuid.uuid4().hex[:6]}@localhost"
        log = tmp_path / "debug-worker.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "pbt.tasks", "worker", "-Q", pool.queue, "-c", "1", "-n", worker,
             "-l", "debug", "--without-gossip", "--without-mingle"],
            stdout=open(log, "w"), stderr=subprocess.STDOUT, env=pool.env, start_new_session=True,  # noqa: SIM115
        )
        try:
            wait_for(lambda: "ready." in log.read_text(), 30, what="the debug worker")
            study = study_file(tmp_path, pool, budget={"total_steps": 32})
            run = pbt("run", str(study), "--storage", storage, "-vv", "-q", timeout=180)
            assert run.returncode == 0, run.stderr[-3000:]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        import storage_backends as sb

        shown = run.stdout + run.stderr + log.read_text()
        assert "DEBUG" in shown and "s3" in shown.lower()  # debug logging was on, talking to S3
        assert KEY_ID not in shown and sb.SECRET not in shown
    finally:
        pool.stop_all()
