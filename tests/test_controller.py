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
from pbt.errors import SpecError, TemporaryPolicyError
from pbt.storage.local import LocalObjectStore
from pbt.storage.study_store import StudyStore
from pbt.study_file import parse_spec
from pbt.study_state import EndReason, Outcome
from pbt.testing.memory import FakeClock, InMemoryExecutor, NoLease, completed
from pbt.trial import FailureScope, MetricReport, TrialResult, TrialStatus

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


# --- Studies that cannot succeed end fast (issue 10) --------------------------------------------


def test_an_error_every_trial_would_hit_ends_the_study_at_its_first_occurrence(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 3})
    task = ex.task("t000001")
    ex._answer(TrialResult(study="toy", trial_id="t000001", attempt=task.attempt, status=TrialStatus.FAILED,
                           error="TrainerContractError: no 'accuracy'", scope=FailureScope.STUDY))
    snap = tick(c, ex)
    assert snap.finished and snap.outcome is Outcome.FAILED and snap.reason is EndReason.FATAL_ERROR
    assert "no 'accuracy'" in snap.message
    assert sorted(ex.stops) == ["t000000", "t000002"]  # what was in flight is stopped ...
    assert {t.status for t in c.ledger} == {TrialStatus.FAILED, TrialStatus.STOPPED}  # ... and recorded so
    assert len(ex.submitted) == 3  # nothing new was published


def test_the_first_wave_failing_ends_the_study(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 2, "max_attempts": 1},  # limit: max(5, 2 × 2) = 5
                    algorithm={"name": "random", "options": {"num_trials": 20}})
    for n in range(5):
        ex.fail(f"t{n:06d}")
        snap = tick(c, ex)
        assert snap.finished == (n == 4)
    assert snap.reason is EndReason.INITIAL_FAILURES and len(c.ledger) == 6


def test_trials_that_diverged_are_not_errors_for_the_initial_rule(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 1, "max_initial_failures": 2},
                    algorithm={"name": "random", "options": {"num_trials": 20}})
    for n in range(4):
        task = ex.task(f"t{n:06d}")
        ex._answer(TrialResult(study="toy", trial_id=task.trial_id, attempt=task.attempt, steps_done=5,
                               status=TrialStatus.FAILED, error="objective q is nan at step 5", diverged=True))
        assert not tick(c, ex).finished
    ex.fail("t000004", retryable=False)
    assert not tick(c, ex).finished
    ex.fail("t000005", retryable=False)
    assert tick(c, ex).reason is EndReason.INITIAL_FAILURES


def test_failures_after_a_success_do_not_trip_the_initial_rule_but_max_failed_trials_does(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 1, "max_attempts": 1, "max_failed_trials": 4},
                    algorithm={"name": "random", "options": {"num_trials": 20}})
    ex.complete("t000000", 0.5)
    tick(c, ex)
    for n in range(1, 5):
        ex.fail(f"t{n:06d}")
        snap = tick(c, ex)
        assert snap.finished == (n == 4)
    assert snap.reason is EndReason.MAX_FAILED_TRIALS and snap.outcome is Outcome.FAILED


def test_a_failed_trial_is_charged_its_steps_so_the_budget_ends_a_failing_study(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 1, "max_attempts": 1, "max_initial_failures": 1000},
                    algorithm={"name": "pbt", "options": {"population_size": 2, "steps_per_trial": 4}},
                    budget={"total_steps": 40})
    for _ in range(100):
        for trial_id in list(ex.waiting):
            ex.fail(trial_id)  # fails before its first step, every time
        snap = tick(c, ex)
        if snap.finished:
            break
    assert snap.finished and snap.trials == 10 and snap.reason is EndReason.NO_USABLE_TRIAL


def test_a_study_ending_with_a_best_trial_says_which_budget_ended_it(tmp_path):
    plan = {"name": "random", "options": {"num_trials": 6, "steps_per_trial": 10}}
    c, ex, _ = make(tmp_path, algorithm=plan, runner=lambda task: completed(task, 1.0))
    while not (snap := tick(c, ex)).finished:
        pass
    assert snap.outcome is Outcome.SUCCEEDED and snap.reason is EndReason.ALGORITHM  # 6 trials, 60 of 10,000 steps
    c.finish(snap)
    assert c.store.read_doc("state")["reason"] == "algorithm"
    c, ex, _ = make(tmp_path / "b", runner=lambda task: completed(task, 1.0), budget={"total_steps": 60})
    while not (snap := tick(c, ex)).finished:
        pass
    assert snap.reason is EndReason.TOTAL_STEPS


# --- Early stopping judged per evaluation, reproducibly (issue 10) ------------------------------

MEDIAN = {"name": "random", "options": {"num_trials": 8, "steps_per_trial": 100, "median_stopping": True,
                                        "min_completed_for_stopping": 2}}


def finished_with(task, curve):
    """A completed result whose intermediate evaluations follow ``curve`` (step -> q)."""
    metrics = [MetricReport(step=s, lineage_step=s, values={"q": v}) for s, v in curve]
    return completed(task, curve[-1][1]).model_copy(update={"metrics": metrics})


def test_median_stopping_stops_a_trial_on_an_evaluation_that_arrived_with_its_result(tmp_path):
    c, ex, _ = make(tmp_path, algorithm=MEDIAN, execution={"parallelism": 1, "checkpoint_every": 50})
    for n in range(2):
        ex._answer(finished_with(ex.task(f"t{n:06d}"), [(50, 0.8), (100, 0.9)]))
        tick(c, ex)
    bad = ex.task("t000002")
    assert bad.number == 2 and c.ledger.get("t000002").metadata["created_after"] == 2
    ex._answer(finished_with(bad, [(50, 0.1), (100, 0.2)]))  # fast: no progress message came first
    tick(c, ex)
    trial = c.ledger.get("t000002")
    assert trial.status is TrialStatus.STOPPED and trial.metadata["stop_step"] == 50
    assert "median" in trial.metadata["stop_reason"] and trial.steps_done == 100  # what it really trained
    assert c.ordering.view[2].steps_done == 50  # ... but it is charged up to its stop


def test_median_stopping_stops_a_running_trial_once_at_the_evaluation_that_decided(tmp_path):
    c, ex, _ = make(tmp_path, algorithm=MEDIAN, execution={"parallelism": 1, "checkpoint_every": 50})
    for n in range(2):
        ex._answer(finished_with(ex.task(f"t{n:06d}"), [(50, 0.8), (100, 0.9)]))
        tick(c, ex)
    ex.progress("t000002", 50, {"q": 0.1})
    tick(c, ex)
    ex.progress("t000002", 60, {"q": 0.1})
    tick(c, ex)
    assert ex.stops == ["t000002"] and c.ledger.get("t000002").metadata["stop_step"] == 50
    ex._answer(finished_with(ex.task("t000002"), [(50, 0.1), (100, 0.95)]))  # the stop came too late
    tick(c, ex)
    assert c.ledger.get("t000002").status is TrialStatus.STOPPED  # the decision stands, whatever followed


def test_a_non_finite_intermediate_value_is_worse_than_any_median(tmp_path):
    c, ex, _ = make(tmp_path, algorithm=MEDIAN, execution={"parallelism": 1, "checkpoint_every": 50})
    for n in range(2):
        ex._answer(finished_with(ex.task(f"t{n:06d}"), [(50, 0.8), (100, 0.9)]))
        tick(c, ex)
    ex.progress("t000002", 50, {"q": float("nan")})
    tick(c, ex)
    assert ex.stops == ["t000002"]


# --- the worker's fault (issue 11) ---------------------------------------------------------------

WORKER = FailureScope.WORKER


def test_a_failure_of_the_workers_environment_republishes_without_costing_an_attempt(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 1, "max_attempts": 2})
    for _ in range(5):  # more than max_attempts: none of them is charged
        ex.fail("t000000", "MemoryError: ", scope=WORKER)
        tick(c, ex)
    trial = c.ledger.get("t000000")
    assert trial.status is TrialStatus.PENDING and trial.failures == 0 and trial.attempts == 6
    assert ids(ex.submitted) == ["t000000"] * 6  # the same trial again, not a new one
    ex.complete("t000000", 0.5)
    tick(c, ex)
    assert c.ledger.get("t000000").status is TrialStatus.COMPLETED and c.abort is None


def test_a_study_no_worker_can_serve_ends_after_max_worker_failures_in_a_row(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 2, "max_worker_failures": 5})
    for n in range(4):
        ex.fail(f"t00000{n % 2}", "S3ConfigError: Unable to locate credentials", scope=WORKER)
        tick(c, ex)
    assert c.abort is None
    ex.complete("t000000", 0.5)  # an attempt got past its worker: the count starts again
    tick(c, ex)
    for _ in range(4):
        ex.fail("t000001", "S3ConfigError: Unable to locate credentials", scope=WORKER)
        tick(c, ex)
    assert c.abort is None
    ex.fail("t000001", "S3ConfigError: Unable to locate credentials", scope=WORKER)
    snap = tick(c, ex)
    assert snap.finished and snap.outcome is Outcome.FAILED and snap.reason is EndReason.NO_WORKER
    assert "5 attempts in a row" in snap.message and "Unable to locate credentials" in snap.message
    assert len(c.ledger) == 3  # no trial was created for the failures


def test_a_trial_that_exhausts_every_worker_is_charged_after_its_free_republications(tmp_path):
    c, ex, _ = make(tmp_path, execution={"parallelism": 2, "max_worker_failures": 3, "max_attempts": 2,
                                         "ordering": "arrival"})
    for _ in range(3):
        ex.fail("t000000", "MemoryError: needs more than any worker has", scope=WORKER)
        other = next(i for i in ex.waiting if i != "t000000")
        ex.complete(other, 0.5)  # other trials succeed: the study-wide count never trips
        tick(c, ex)
    trial = c.ledger.get("t000000")
    assert trial.failures == 0 and trial.attempts == 4
    ex.fail("t000000", "MemoryError: needs more than any worker has", scope=WORKER)
    tick(c, ex)
    assert c.ledger.get("t000000").failures == 1  # charged now, like any failure
    ex.fail("t000000", "MemoryError: needs more than any worker has", scope=WORKER)
    tick(c, ex)
    assert c.ledger.get("t000000").status is TrialStatus.FAILED  # max_attempts = 2: bounded


def test_a_worker_failure_of_a_superseded_attempt_changes_nothing(tmp_path):
    c, ex, clock = make(tmp_path, execution={"parallelism": 1, "lease_seconds": 10, "heartbeat_seconds": 1})
    stale = ex.task("t000000")
    ex.progress("t000000", 1)
    tick(c, ex)
    clock.advance(11)  # the worker went silent: attempt 2 is published
    tick(c, ex)
    assert c.ledger.get("t000000").attempts == 2
    ex._answer(TrialResult(study=stale.study, trial_id="t000000", attempt=1, status=TrialStatus.FAILED,
                           error="MemoryError", retryable=True, scope=WORKER))
    tick(c, ex)
    assert c.ledger.get("t000000").attempts == 2 and c.failures.worker_streak == 0


def test_the_default_lease_is_a_few_heartbeats():
    spec = parse_spec(toy_data())
    assert spec.execution.heartbeat_seconds == 2.0 and spec.execution.lease == 8.0
    assert parse_spec(toy_data(execution={"heartbeat_seconds": 10})).execution.lease == 40.0
    with pytest.raises(SpecError, match="at least two heartbeats"):
        parse_spec(toy_data(execution={"heartbeat_seconds": 5, "lease_seconds": 6}))


# --- a study is written once it has started (issue 11) ------------------------------------------


def test_a_study_whose_first_suggestion_fails_leaves_nothing_in_storage(tmp_path):
    data = toy_data(budget={"total_steps": 10_000})
    data["algorithm"] = RANDOM
    spec = parse_spec(data)
    clock = FakeClock()
    controller = Controller(spec, InMemoryExecutor(clock), LocalObjectStore(tmp_path), NoLease(), clock=clock)

    def broken(trials, k):
        raise ValueError("the policy cannot start")

    controller.policy.suggest = broken
    with pytest.raises(ValueError):
        controller.run()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_half_created_study_is_taken_over_by_the_corrected_file(tmp_path):
    store = StudyStore(LocalObjectStore(tmp_path), "toy")
    store.write_spec({**parse_spec(toy_data()).public_dict(), "seed": 12345})  # what an older version left
    _, ex, _ = make(tmp_path, execution={"parallelism": 1})
    assert ids(ex.submitted) == ["t000000"]
    assert store.read_spec()["seed"] == 0  # the spec it runs replaced the one with no trial


def test_a_study_whose_workers_all_retired_for_their_environment_ends_after_some_silence(tmp_path):
    c, ex, clock = make(tmp_path, execution={"parallelism": 2, "max_worker_failures": 50})
    for trial_id in ("t000000", "t000001"):  # both workers fail for their environment, then retire
        task = ex.task(trial_id)
        ex._answer(TrialResult(study="toy", trial_id=trial_id, attempt=task.attempt, status=TrialStatus.FAILED,
                               error="S3ConfigError: Unable to locate credentials", scope=FailureScope.WORKER,
                               retryable=True))
    tick(c, ex)
    ex.held.update(ex.waiting)  # re-published: queued, and nobody takes them any more
    for _ in range(10):
        clock.advance(5)
        snap = tick(c, ex)
    assert not snap.finished  # a minute of patience: workers may still come
    clock.advance(15)
    snap = tick(c, ex)
    assert snap.finished and snap.reason is EndReason.NO_WORKER and "retired" in snap.message
