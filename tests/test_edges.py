"""PBT that stays PBT at the edges (issue 10), through the real CLI and real workers.

Each test is one of the outside cases in ``shared/cases`` (or a held-back kind of it), made a
test: a study that cannot make progress ends fast with a non-zero exit and says why; a mistake
the same for every trial stops the study at its first result; early stopping works in the
default ordering, stops the same trials embedded and distributed, and saves steps; truncation
selection exploits about its fraction at any parallelism.
"""

from __future__ import annotations

import random
import time

import pytest
from helpers import toy_data
from test_distributed import FAST, WORKER_ENV
from test_embedded_study import assert_complete_and_once

from pbt.controller.loop import Controller
from pbt.storage.local import LocalObjectStore
from pbt.study_file import parse_spec
from pbt.testing import RedisServer, Workers, pbt, status, write_study
from pbt.testing.memory import FakeClock, InMemoryExecutor, NoLease, completed

pytestmark = pytest.mark.slow


def test_a_study_whose_every_trial_fails_before_training_ends_in_seconds_with_exit_1(tmp_path):
    # shared/cases/all-trials-fail: it used to create ~7,000 failed trials a minute, forever.
    data = toy_data(name="all-fail", budget={"total_steps": 64}, trainer={"config": {"fail_above": -1.0}},
                    execution={"parallelism": 4, "max_attempts": 2})
    study = write_study(tmp_path / "s.yaml", data)
    started = time.time()
    proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "--workers", "2", "-q", "--json", timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert time.time() - started < 30
    out = __import__("json").loads(proc.stdout)
    assert out["outcome"] == "failed" and out["reason"] == "initial_failures" and out["exit_code"] == 1
    data = status("all-fail", str(tmp_path / "runs"))
    failed = sum(t["status"] == "failed" for t in data["trials"])
    assert len(data["trials"]) <= 12 and 8 <= failed <= 12  # max(5, 2 × 4); results of one tick all count
    assert all(t["status"] in ("failed", "stopped") for t in data["trials"])
    assert data["state"]["outcome"] == "failed" and "toy trainer told to fail" in data["state"]["error"]
    view = pbt("status", "all-fail", "--storage", str(tmp_path / "runs"))
    assert "ended failed: 8 trials failed with an error and none completed" in " ".join(view.stdout.split())


def test_an_objective_metric_the_trainer_never_reports_stops_the_study_at_its_first_result(tmp_path):
    # shared/cases/metric-missing: it used to spend the whole budget and exit 0.
    data = toy_data(name="metric-typo", objective={"metric": "accuracy", "mode": "max"},
                    algorithm={"options": {"population_size": 4, "steps_per_trial": 50}},
                    budget={"total_steps": 2000}, trainer={"config": {"sleep_per_step": 0.002}})
    study = write_study(tmp_path / "s.yaml", data)
    proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "--workers", "2", "-q", timeout=60)
    assert proc.returncode == 1
    assert "returned no 'accuracy' (got ['q'])" in proc.stderr and "Traceback" in proc.stderr
    data = status("metric-typo", str(tmp_path / "runs"))
    assert len(data["trials"]) == 4, "no trial was created after the first result"
    assert sum(t["steps_done"] for t in data["trials"]) <= 4 * 50
    assert data["state"]["reason"] == "fatal_error"


def test_a_fitness_weight_on_a_metric_the_trainer_never_reports_stops_the_study_at_its_first_result(tmp_path):
    # Same kind as metric-missing: a weight on a metric nobody returns ranked every member at
    # -inf, so PBT never exploited and the study ran to its end with exit 0.
    data = toy_data(name="weight-typo", algorithm={"options": {"population_size": 4, "steps_per_trial": 50,
                                                               "fitness_weights": {"q": 1.0, "acuracy": 0.5}}},
                    budget={"total_steps": 2000}, trainer={"config": {"sleep_per_step": 0.002}})
    study = write_study(tmp_path / "s.yaml", data)
    proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "--workers", "2", "-q", timeout=60)
    assert proc.returncode == 1
    assert "returned no ['acuracy'] (got ['q'])" in proc.stderr
    data = status("weight-typo", str(tmp_path / "runs"))
    assert len(data["trials"]) == 4 and data["state"]["reason"] == "fatal_error"


MEDIAN = {"name": "random", "options": {"num_trials": 16, "steps_per_trial": 200, "median_stopping": True,
                                        "min_completed_for_stopping": 3}}


def _stopped(data: dict) -> dict[str, int]:
    return {t["id"]: t["metadata"]["stop_step"] for t in data["trials"] if t["status"] == "stopped"}


def run_embedded_and_distributed(tmp_path, data: dict) -> list[dict]:
    """Run study ``data`` on embedded workers, then on Celery workers on a private Redis (stop
    flags are per study name, and another run may share a Redis); both runs' ``status --json``."""
    name = data["name"]
    embedded = write_study(tmp_path / "e.yaml", data)
    proc = pbt("run", str(embedded), "--storage", str(tmp_path / "e"), "--workers", "2", "-q", timeout=180)
    assert proc.returncode == 0, proc.stderr
    runs = [status(name, str(tmp_path / "e"))]
    server = RedisServer(tmp_path)
    server.start()
    pool = Workers(server.url, tmp_path, WORKER_ENV)
    try:
        pool.start(2)
        execution = {**data["execution"], **FAST, "queue": pool.queue}
        distributed = write_study(tmp_path / "d.yaml", {**data, "execution": execution, "broker": pool.broker})
        proc = pbt("run", str(distributed), "--storage", str(tmp_path / "d"), "-q", timeout=240)
        assert proc.returncode == 0, proc.stderr
    finally:
        pool.stop_all()
        server.stop()
    return [*runs, status(name, str(tmp_path / "d"))]


def test_median_stopping_stops_the_same_trials_embedded_and_distributed_and_saves_steps(tmp_path):
    # shared/cases/median-stop-deterministic: it used to stop nothing in the default ordering.
    data = toy_data(name="median", budget={"total_steps": 3200}, seed=3,
                    trainer={"config": {"lr": 0.01, "sleep_per_step": 0.002}},
                    execution={"parallelism": 2, "checkpoint_every": 20})
    data["algorithm"] = MEDIAN
    runs = run_embedded_and_distributed(tmp_path, data)
    for data in runs:
        assert_complete_and_once(data)
    stopped = _stopped(runs[0])
    assert len(stopped) >= 3, "clearly bad trials are stopped in the default ordering"
    assert _stopped(runs[1]) == stopped, "the same seed stops the same trials at the same steps"
    assert [t["params"] for t in runs[0]["trials"]] == [t["params"] for t in runs[1]["trials"]]
    for data in runs:
        assert sum(t["steps_done"] for t in data["trials"]) < 3200 - 100 * len(stopped), "stopping saved steps"
        completed = [t["objective"] for t in data["trials"] if t["status"] == "completed"]
        assert max(completed) == runs[0]["best"]["objective"]  # the best was never stopped


@pytest.mark.parametrize(("parallelism", "ordering"), [(6, "deterministic"), (6, "arrival"), (2, "deterministic")])
def test_truncation_exploits_about_its_fraction_at_any_parallelism(tmp_path, parallelism, ordering):
    # shared/cases/truncation-no-exploit: 0 exploits at parallelism = population, 78 % at 2.
    data = toy_data(name="trunc", algorithm={"name": "pbt", "options": {
        "population_size": 6, "steps_per_trial": 5, "selection": "truncation", "truncation_fraction": 0.34}},
        budget={"total_steps": 300}, execution={"parallelism": parallelism, "ordering": ordering}, seed=1)
    clock = FakeClock()
    shuffle = random.Random(0)

    def run(task):  # results come back in a shuffled order, several per tick
        return completed(task, -abs(task.params["h0"] - 0.7) + 0.01 * task.start_lineage_steps)

    executor = InMemoryExecutor(clock)
    controller = Controller(parse_spec(data), executor, LocalObjectStore(tmp_path), NoLease(), clock=clock)
    controller.start()
    controller.tick([])
    for _ in range(1000):
        waiting = list(executor.waiting.values())
        for task in shuffle.sample(waiting, k=min(len(waiting), shuffle.randint(1, 3))):
            executor._answer(run(task))
        controller.tick(executor.events(0.2))
        if controller.snapshot().finished:
            break
    trials = controller.ledger.trials
    decisions = [t for t in trials if t.parent is not None]
    exploits = [t for t in decisions if t.metadata.get("exploit")]
    assert len(trials) == 60 and len(decisions) == 54
    assert len(exploits) == 18, f"{len(exploits)} exploits in 54 decisions"  # 2 of 6 members each generation
