"""The Python API (``import pbt``): studies launched, watched, paused, resumed and read from Python.

Real embedded worker processes, the real storage; results are compared with what the CLI
(``pbt status --json``) and a class trainer give for the same study.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import toy_data
from test_embedded_study import assert_complete_and_once

import pbt
from pbt.errors import NotFoundError, StorageError
from pbt.testing import RedisServer, Workers, status, wait_for, write_study
from pbt.trainers.toy import ToyTrainer, train_toy

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("celery", "kombu", "redis", "boto3", "botocore", "torch", "matplotlib", "pandas", "pydantic", "numpy")


def key(study: pbt.Study) -> list[tuple]:
    """What a seed decides: ids, hyperparameters, parents, every evaluation."""
    return [(t.id, t.params, t.parent, t.objective, [m.model_dump() for m in t.metrics]) for t in study.trials]


def test_import_pbt_is_light_and_every_public_name_is_documented():
    code = f"import pbt, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    for name in pbt.__all__:
        obj = getattr(pbt, name)
        assert obj.__doc__ and len(obj.__doc__) > 40, name
    assert pbt.TrainContext.__name__ == "Context" and "pbt.run" in pbt.__doc__


def test_a_study_from_a_file_a_dict_or_typed_objects_validates_to_the_same_spec(tmp_path):
    from pbt.api import study_spec

    data = toy_data()
    from_file = study_spec(write_study(tmp_path / "toy.yaml", data))
    from_dict = study_spec(data)
    typed = pbt.StudySpec(**{**data, "trainer": {"path": ToyTrainer, "config": {"lr": 0.01}}})
    assert from_file == from_dict == study_spec(typed)
    as_object = study_spec(data, trainer=train_toy, storage="elsewhere", seed=3, name="other")
    assert as_object.trainer.path == "pbt.trainers.toy:train_toy" and as_object.trainer.config == {"lr": 0.01}
    assert (as_object.storage, as_object.seed, as_object.name) == ("elsewhere", 3, "other")
    assert study_spec(data, broker="").broker == ""  # as `--broker ""`: embedded


@pytest.mark.parametrize(("make", "words"), [
    (lambda: pbt.run(toy_data(budget={"total_steps": 0})), ["budget.total_steps", "greater than 0"]),
    (lambda: pbt.StudySpec(**toy_data(objective={"metric": "q", "mode": "up"})), ["objective.mode", "'min' or 'max'"]),
    (lambda: pbt.start(toy_data(), trainer=lambda h, c: None), ["trainer.path", "lambda"]),
    (lambda: pbt.run(toy_data(), trainer="pbt.trainers.toy:Nope"), ["trainer.path", "no attribute 'Nope'"]),
    (lambda: pbt.run(toy_data(algorithm={"options": {"population_size": 0}})),
     ["algorithm.options.population_size"]),
    (lambda: pbt.run("no/such/study.yaml"), ["no/such/study.yaml: no such file"]),
    (lambda: pbt.run(42), ["expected a path to a YAML study file, a dict or a pbt.StudySpec"]),
    (lambda: pbt.start(toy_data(), workers=0), ["workers: expected a number of processes, at least 1"]),
])
def test_a_bad_study_raises_one_spec_error_naming_the_field_whatever_the_entry(make, words):
    with pytest.raises(pbt.SpecError) as err:
        make()
    for word in words:
        assert word in str(err.value), str(err.value)


def test_run_with_a_function_trainer_gives_the_class_trainers_study_and_reads_like_the_cli(tmp_path):
    function = pbt.run(toy_data(), trainer=train_toy, storage=tmp_path / "f", workers=2)  # a Path will do
    cls = pbt.run(toy_data(), trainer=ToyTrainer, storage=str(tmp_path / "c"), workers=2)
    assert key(function) == key(cls) and len(function.trials) == 40  # identical for the seed
    assert function.ending.outcome is pbt.Outcome.SUCCEEDED and function.ending.reason is pbt.EndReason.TOTAL_STEPS
    assert function.state is pbt.StudyState.FINISHED

    # The same data as `pbt status --json`, with the same keys, and as a DataFrame.
    assert function.to_json() == status("toy", str(tmp_path / "f"))
    best = function.best
    assert best.id == function.to_json()["best"]["id"] and best.objective == max(t.objective for t in function.trials)
    trials = function.to_dataframe()
    assert list(trials["id"]) == [t.id for t in function.trials]
    assert {"number", "status", "objective", "parent", "params.h0", "params.h1", "lineage_steps",
            "timings.train"} <= set(trials.columns) and "metrics" not in trials.columns
    evaluations = function.to_dataframe(per="evaluation")
    assert len(evaluations) == sum(len(t.metrics) for t in function.trials)
    assert list(evaluations.columns[:7]) == ["trial", "number", "member", "generation", "status", "step",
                                             "lineage_step"]
    assert evaluations["values.q"].max() == best.objective
    with pytest.raises(ValueError, match="per must be"):
        function.to_records("epoch")

    # Lineage, schedule, replay and the report of any trial.
    chain = function.lineage()
    assert chain[-1] == best and chain[0].generation == 0
    segments = function.schedule(best.id)
    assert [s.trial for s in segments] == [t.id for t in chain] and segments[-1].end == best.lineage_steps
    replayed = function.replay()
    assert replayed.objective == best.objective  # the function trainer replays bit for bit
    report = function.report(tmp_path / "report")
    assert report.html.exists() and report.data.best == best.id
    with pytest.raises(NotFoundError):
        function.trial("t999999")


def test_a_failed_study_raises_with_how_it_ended_or_returns_it(tmp_path):
    data = toy_data(trainer={"config": {"lr": 0.01, "fail_above": -1.0}})  # every trial raises
    with pytest.raises(pbt.StudyFailedError) as err:
        pbt.run(data, storage=str(tmp_path), workers=2)
    ending = err.value.ending
    assert ending.outcome is pbt.Outcome.FAILED and ending.reason is pbt.EndReason.INITIAL_FAILURES
    assert "told to fail" in ending.error and err.value.study.best is None
    again = pbt.run(data, storage=str(tmp_path / "again"), workers=2, raise_on_failure=False)
    assert again.ending.outcome is pbt.Outcome.FAILED


def test_start_watch_stop_and_resume_from_python_decide_like_an_uninterrupted_run(tmp_path):
    # ~6 s of training, so the stop lands mid-study even on a fast machine
    data = toy_data(trainer={"config": {"lr": 0.01, "sleep_per_step": 0.05}}, budget={"total_steps": 240})
    storage = str(tmp_path / "runs")
    seen = []
    handle = pbt.start(data, trainer=train_toy, storage=storage, workers=2, observer=seen.append)
    assert handle.snapshot is not None and seen and not handle.done()
    with pytest.raises(pbt.StudyLockedError, match="already driven by another controller"):
        pbt.start(data, trainer=train_toy, storage=storage, workers=1)  # refused at once, not in the background
    overview = handle.status()
    assert overview.state in (pbt.StudyState.RUNNING, pbt.StudyState.PAUSING) and overview.trials > 0
    paused = handle.stop(wait=True, timeout=120)
    assert paused.ending.outcome is pbt.Outcome.PAUSED and paused.state is pbt.StudyState.PAUSED
    assert handle.done()
    resumed = pbt.run(pbt.load_study("toy", storage), workers=2)  # as `pbt resume`
    assert resumed.ending.outcome is pbt.Outcome.SUCCEEDED
    assert_complete_and_once(resumed.to_json())
    reference = pbt.run(data, trainer=ToyTrainer, storage=str(tmp_path / "reference"), workers=2)
    assert key(resumed) == key(reference)


def test_a_stored_celery_study_resumed_without_its_broker_says_what_to_pass(tmp_path):
    from pbt.storage import open_object_store
    from pbt.storage.study_store import StudyStore

    spec = pbt.StudySpec(**toy_data(storage=str(tmp_path), broker="redis://:s3cret@redis.example:6379/0"))
    store = StudyStore(open_object_store(str(tmp_path)), "toy")
    store.write_spec(spec.public_dict())
    with pytest.raises(pbt.SpecError, match=re.escape("pass broker='redis://...' again")) as err:
        pbt.run(pbt.load_study("toy", tmp_path))
    assert "s3cret" not in str(err.value) and store.read_doc("control") is None  # refused before touching it
    with pytest.raises(pbt.SpecError, match="keeps its name"):
        pbt.run(pbt.load_study("toy", tmp_path), name="other")


def test_reading_errors_are_typed(tmp_path, monkeypatch):
    with pytest.raises(pbt.StudyNotFoundError, match=f"no study 'nope' in file://{tmp_path}"):
        pbt.load_study("nope", str(tmp_path))
    with pytest.raises(NotFoundError):  # still a NotFoundError for code that caught that
        pbt.load_study("nope", str(tmp_path))
    from pbt.storage.s3 import reset_clients

    monkeypatch.setenv("PBT_S3_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("PBT_S3_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("PBT_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    reset_clients()
    try:
        with pytest.raises(pbt.StorageUnavailableError) as err:
            pbt.load_study("toy", "s3://bucket/studies")
        assert isinstance(err.value, StorageError)  # retryable: the storage may come back
    finally:
        reset_clients()


def test_the_python_api_example_runs_the_toy_study_with_a_function_trainer(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), "--storage", str(tmp_path / "runs"),
         "--workers", "2", "--steps", "400", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import python_api
    finally:
        sys.path.remove(str(ROOT / "examples"))
    reference = pbt.run(python_api.toy_study(400), trainer=ToyTrainer, storage=str(tmp_path / "class"), workers=2)
    best = reference.best
    assert f"best trial {best.id}: q = {best.objective:.9f} after {best.lineage_steps} steps" in proc.stdout
    assert "its hyperparameter schedule" in proc.stdout and f"{best.id}" in proc.stdout
    stored = pbt.load_study("toy-python", str(tmp_path / "runs"))
    assert stored.best.id == best.id and stored.spec.trainer.path == "python_api:train"
    rows = (tmp_path / "out" / "evaluations.csv").read_text().splitlines()
    assert rows[0].startswith("trial,number,member,generation,status,step,lineage_step,values.q")
    assert len(rows) - 1 == sum(len(t.metrics) for t in stored.trials)
    assert json.loads(json.dumps(stored.to_json()))["best"]["id"] == best.id


# --- distributed: a private redis-server and real Celery worker processes ---------------------------

WORKER_ENV = {"PBT_VISIBILITY_TIMEOUT": "30", "PBT_UNACKED_RESTORE_INTERVAL": "2",
              "PYTHONPATH": f"{ROOT / 'examples'}:{ROOT}"}  # the workers import python_api:train


@pytest.fixture
def redis_workers(tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    pool = Workers(server.url, tmp_path, WORKER_ENV, trainers="python_api")  # as `pbt worker --trainers python_api`
    try:
        yield pool
    finally:
        pool.stop_all()
        server.stop()


@pytest.mark.slow
def test_the_python_api_example_on_redis_with_real_workers_matches_the_embedded_run(tmp_path, redis_workers):
    redis_workers.start(2)
    args = ["--steps", "240", "--out", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), "--storage", str(tmp_path / "celery"),
         "--broker", redis_workers.broker, "--queue", redis_workers.queue, *args],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    embedded = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python_api.py"), "--storage", str(tmp_path / "embedded"),
         "--workers", "2", *args], capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )
    assert embedded.returncode == 0, embedded.stderr
    assert proc.stdout.split("DataFrames")[0] == embedded.stdout.split("DataFrames")[0]  # best and schedule
    distributed = pbt.load_study("toy-python", str(tmp_path / "celery"))
    assert key(distributed) == key(pbt.load_study("toy-python", str(tmp_path / "embedded")))
    assert {t.worker.split(" ")[0] for t in distributed.trials} == set(redis_workers.procs)  # both took trials
    assert_complete_and_once(distributed.to_json())


@pytest.mark.slow
def test_a_function_trainer_preempted_by_sigterm_saves_and_another_worker_resumes_it(tmp_path, redis_workers):
    first, _ = redis_workers.start(2)
    data = toy_data(budget={"total_steps": 64}, algorithm={"options": {"steps_per_trial": 16}},
                    trainer={"config": {"lr": 0.01, "sleep_per_step": 0.2}},
                    execution={"checkpoint_every": 4, "queue": redis_workers.queue, "heartbeat_seconds": 0.5,
                               "lease_seconds": 4})
    storage = str(tmp_path / "runs")
    handle = pbt.start(data, trainer=train_toy, storage=storage, broker=redis_workers.broker)

    def victim():
        for t in handle.study().trials:
            if t.status.value == "running" and t.worker and t.worker.startswith(first) and 4 <= t.steps_done <= 8:
                return t
        return None

    target = wait_for(victim, 60, interval=0.2, what="a trial half-way through on the first worker")
    assert redis_workers.kill(first, signal.SIGTERM) == 0  # warm shutdown: save, hand back, exit
    study = handle.wait(timeout=180)
    after = study.trial(target.id)
    assert after.status.value == "completed" and not after.worker.startswith(first)
    assert after.resumed_from_step >= target.steps_done  # saved at the preemption point, not lost
    assert "handed back" in redis_workers.log(first)
    reference = pbt.run({**data, "broker": None}, trainer=ToyTrainer, storage=str(tmp_path / "reference"), workers=2)
    assert key(study) == key(reference)  # preemption changed nothing the seed decides


@pytest.mark.slow
def test_the_readme_pytorch_example_runs_as_a_new_user_would_run_it(tmp_path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    yaml_text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    code = section.split("<!-- python-example:start", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len([line for line in code.splitlines() if line.strip()]) < 30  # "under 30 lines"
    assert "total_steps: 4000" in yaml_text
    (tmp_path / "my_study.yaml").write_text(yaml_text.replace("total_steps: 4000", "total_steps: 800"))
    (tmp_path / "my_study.py").write_text(code)
    proc = subprocess.run([sys.executable, "my_study.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    study = pbt.load_study("my-model", str(tmp_path / "runs"))
    assert study.ending.outcome is pbt.Outcome.SUCCEEDED and study.spec.trainer.path == "my_study:train"
    lines = proc.stdout.splitlines()
    assert len(lines) == len(study.schedule()) and lines[-1].startswith(f"{study.schedule()[-1].start} ")
    assert any(t.metadata.get("exploit") for t in study.trials)  # members copied better ones: PBT happened
