"""The controller's decisions, tick by tick, without a process: in-memory executor, fake clock.

Each test drives a real :class:`Controller` on a real local study store; only the executor and
the clock are doubles (:mod:`pbt.testing.memory`), so ordering, retries, leases, pausing and
early stopping are checked in milliseconds.
"""

from __future__ import annotations

import pytest
from helpers import toy_data

from pbt.controller.loop import Controller
from pbt.controller.policy import EarlyStopDecision
from pbt.errors import TemporaryPolicyError
from pbt.storage.local import LocalObjectStore
from pbt.storage.study_store import StudyStore
from pbt.study_file import parse_spec
from pbt.testing.memory import FakeClock, InMemoryExecutor, NoLease, completed
from pbt.trial import TrialStatus

RANDOM = {"name": "random", "options": {"num_trials": 6}}


def make(tmp_path, *, algorithm=RANDOM, runner=None, **over):
    data = toy_data(**{"budget": {"total_steps": 10_000}, **over})
    data["algorithm"] = algorithm
    spec = parse_spec(data)
    clock = FakeClock()
    executor = InMemoryExecutor(clock, runner)
    controller = Controller(spec, executor, LocalObjectStore(tmp_path), NoLease(), clock=clock)
    controller.start()
    controller.tick([])
    return controller, executor, clock


def tick(controller, executor, timeout: float = 0.2):
    controller.tick(executor.events(timeout))
    return controller.snapshot()


def ids(tasks):
    return [t.trial_id for t in tasks]


def test_deterministic_ordering_applies_results_in_trial_order(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 2})
    assert ids(ex.submitted) == ["t000000", "t000001"]
    ex.complete("t000001", 0.5)  # the younger trial ends first ...
    tick(c, ex)
    assert ids(ex.submitted) == ["t000000", "t000001"]  # ... and is held back: nothing new yet
    assert c.ledger.get("t000001").status is TrialStatus.COMPLETED  # though recorded at once
    ex.complete("t000000", 0.4)
    tick(c, ex)
    assert ids(ex.submitted) == ["t000000", "t000001", "t000002", "t000003"]
    assert [c.ledger.get(i).metadata["created_after"] for i in ("t000002", "t000003")] == [1, 2]


def test_arrival_ordering_fills_a_slot_as_soon_as_any_trial_ends(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 2, "ordering": "arrival"})
    ex.complete("t000001", 0.5)
    tick(c, ex)
    assert ids(ex.submitted) == ["t000000", "t000001", "t000002"]


def test_a_whole_study_runs_to_its_end_and_records_every_trial_once(tmp_path):
    c, ex, _ = make(tmp_path, runner=lambda task: completed(task, task.params["h0"]))
    for _ in range(20):
        snap = tick(c, ex)
        if snap.finished:
            break
    assert snap.finished and snap.trials == 6 and snap.by_status == {"completed": 6}
    assert snap.best.objective == max(t.params["h0"] for t in c.ledger)
    c.finish(snap)
    stored = StudyStore(LocalObjectStore(tmp_path), "toy").load_trials()
    assert [t.status for t in stored] == [TrialStatus.COMPLETED] * 6


def test_a_retryable_failure_is_retried_then_the_trial_fails_when_attempts_run_out(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 1, "max_attempts": 2})
    ex.fail("t000000")
    tick(c, ex)
    assert [(t.trial_id, t.attempt) for t in ex.submitted] == [("t000000", 1), ("t000000", 2)]
    assert c.ledger.get("t000000").failures == 1 and not c.ledger.get("t000000").status.terminal
    ex.fail("t000000")
    tick(c, ex)
    trial = c.ledger.get("t000000")
    assert trial.status is TrialStatus.FAILED and trial.failures == 2 and trial.attempts == 2
    assert ids(ex.submitted)[-1] == "t000001"  # the study goes on


def test_a_fatal_failure_is_not_retried(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 1, "max_attempts": 3})
    ex.fail("t000000", retryable=False)
    tick(c, ex)
    assert c.ledger.get("t000000").status is TrialStatus.FAILED
    assert ids(ex.submitted) == ["t000000", "t000001"]


def test_a_result_of_a_superseded_attempt_is_ignored(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 1})
    first = ex.task("t000000")
    ex.fail("t000000")
    tick(c, ex)
    ex.complete("t000000", 0.3)  # attempt 2 completes ...
    ex._answer(completed(first, 0.9))  # ... and a late duplicate of attempt 1 arrives after it
    tick(c, ex)
    assert c.ledger.get("t000000").objective == 0.3


def test_a_message_lost_before_any_worker_ran_it_is_republished_without_costing_an_attempt(tmp_path):
    c, ex, clock = make(tmp_path, execution={"parallelism": 1, "lease_seconds": 10, "heartbeat_seconds": 1})
    ex.lose("t000000")
    clock.advance(11)
    tick(c, ex)
    assert [(t.trial_id, t.attempt) for t in ex.submitted] == [("t000000", 1), ("t000000", 2)]
    assert c.ledger.get("t000000").failures == 0


def test_a_worker_silent_after_it_started_costs_an_attempt(tmp_path):
    c, ex, clock = make(tmp_path, execution={"parallelism": 1, "lease_seconds": 10, "heartbeat_seconds": 1,
                                               "max_attempts": 2})
    ex.progress("t000000", step=1)
    tick(c, ex)
    assert c.ledger.get("t000000").status is TrialStatus.RUNNING
    ex.lose("t000000")
    clock.advance(11)
    tick(c, ex)
    assert c.ledger.get("t000000").failures == 1 and ex.task("t000000").attempt == 2
    ex.progress("t000000", step=1)
    tick(c, ex)
    ex.lose("t000000")
    clock.advance(11)
    tick(c, ex)
    trial = c.ledger.get("t000000")
    assert trial.status is TrialStatus.FAILED and "silent" in trial.error


def test_a_task_still_queued_in_the_broker_keeps_its_lease(tmp_path):
    c, ex, clock = make(tmp_path, execution={"parallelism": 1, "lease_seconds": 10, "heartbeat_seconds": 1})
    ex.held.add("t000000")  # a long queue is not a lost worker
    clock.advance(11)
    tick(c, ex)
    assert len(ex.submitted) == 1


def test_heartbeats_keep_a_long_trial_alive(tmp_path):
    c, ex, clock = make(tmp_path, execution={"parallelism": 1, "lease_seconds": 10, "heartbeat_seconds": 1})
    for step in range(1, 6):
        clock.advance(5)
        ex.progress("t000000", step=step)
        tick(c, ex)
    assert len(ex.submitted) == 1 and c.ledger.get("t000000").steps_done == 5


def test_pause_records_results_but_decides_nothing_until_resumed(tmp_path):
    c, ex, clock = make(tmp_path, execution={"parallelism": 1})
    c.store.write_doc("control", {"paused": True})
    clock.advance(3)
    tick(c, ex)
    ex.complete("t000000", 0.5)
    snap = tick(c, ex)
    assert c.ledger.get("t000000").status is TrialStatus.COMPLETED
    assert ids(ex.submitted) == ["t000000"] and snap.paused and not snap.finished
    c.store.write_doc("control", {"paused": False})
    clock.advance(3)
    snap = tick(c, ex)
    assert ids(ex.submitted) == ["t000000", "t000001"] and not snap.paused


def test_early_stop_decisions_reach_the_executor_once_with_their_reason(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 2})
    c.policy.early_stop = lambda view: [EarlyStopDecision("t000001", "clearly worse")]
    c.stopping.per_tick = True  # as for a policy class that overrides early_stop
    tick(c, ex)
    tick(c, ex)
    assert ex.stops == ["t000001"]
    assert c.ledger.get("t000001").metadata["stop_reason"] == "clearly worse"


def test_a_policy_that_cannot_decide_yet_is_asked_again_next_tick(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 1})
    real, calls = c.policy.suggest, []

    def flaky(view, k):
        calls.append(len(view))
        if len(calls) == 1:
            raise TemporaryPolicyError("model fit failed")
        return real(view, k)

    c.policy.suggest = flaky
    ex.complete("t000000", 0.5)
    tick(c, ex)
    assert ids(ex.submitted) == ["t000000"] and not c.snapshot().finished
    tick(c, ex)
    assert ids(ex.submitted) == ["t000000", "t000001"] and calls == [1, 1]


@pytest.mark.parametrize("ordering", ["deterministic", "arrival"])
def test_pbt_runs_generations_and_exploits_in_memory(tmp_path, ordering):
    pbt = {"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4}}
    c, ex, _ = make(tmp_path, algorithm=pbt, runner=lambda task: completed(task, task.params["h0"]),
                    execution={"parallelism": 4, "ordering": ordering}, budget={"total_steps": 160})
    for _ in range(100):
        snap = tick(c, ex)
        if snap.finished:
            break
    assert snap.finished and snap.steps_done == 160 and snap.trials == 40
    assert any(t.metadata.get("exploit") for t in c.ledger)
    assert all(t.parent is None or c.ledger.get(t.parent).usable for t in c.ledger)
