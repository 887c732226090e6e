"""The read side's shared rules, each written once: which trial is better, where a study stands,
how much budget it spent, and opening a stored study.

``pbt status``, ``pbt report``, ``pbt stop`` and the progress bar all go through these; the
commands themselves are tested end to end in test_ops.py and test_report.py.
"""

from __future__ import annotations

import math

import pytest
from helpers import toy_spec

from pbt.analysis.budget import BudgetUse
from pbt.analysis.study import open_study
from pbt.errors import NotFoundError
from pbt.lineage import best_trial, is_better
from pbt.spec import Budget, Objective
from pbt.storage import open_object_store
from pbt.storage.study_store import StudyStore
from pbt.study_state import StudyState, study_state
from pbt.trial import Trial, TrialStatus

MAX = Objective(metric="q", mode="max")
MIN = Objective(metric="q", mode="min")


def _trial(number: int, objective: float | None, status: TrialStatus = TrialStatus.COMPLETED,
           steps_done: int = 4) -> Trial:
    return Trial(id=f"t{number:06d}", study="toy", number=number, params={"h0": 0.5, "h1": 0.5}, steps=4,
                 steps_done=steps_done, status=status, objective=objective)


# --- better and best ------------------------------------------------------------------------------


def test_is_better_is_strict_follows_the_mode_and_only_usable_trials_win():
    low, high = _trial(0, 0.1), _trial(1, 0.9)
    assert is_better(high, low, MAX) and not is_better(low, high, MAX)
    assert is_better(low, high, MIN) and not is_better(high, low, MIN)
    assert not is_better(low, _trial(2, 0.1), MAX), "a tie is not better"
    for unusable in (_trial(3, math.nan), _trial(4, math.inf), _trial(5, None, TrialStatus.FAILED),
                     _trial(6, 5.0, TrialStatus.STOPPED), _trial(7, None, TrialStatus.RUNNING)):
        assert not is_better(unusable, low, MAX) and not is_better(unusable, low, MIN)
        assert is_better(low, unusable, MAX) and is_better(low, unusable, MIN)


def test_best_trial_is_the_best_usable_one_and_the_earliest_on_ties():
    trials = [_trial(0, None, TrialStatus.FAILED), _trial(1, 0.5), _trial(2, math.nan), _trial(3, 0.5),
              _trial(4, 0.2)]
    assert best_trial(trials, MAX).id == "t000001"
    assert best_trial(trials, MIN).id == "t000004"
    assert best_trial(trials[:1] + trials[2:3], MAX) is None
    assert best_trial([], MIN) is None


# --- where a study stands -------------------------------------------------------------------------


@pytest.mark.parametrize(("in_flight", "state", "control", "expected"), [
    (2, None, None, StudyState.RUNNING),
    (2, {"finished": True}, None, StudyState.RUNNING),  # records in flight outrank an older document
    (1, {"paused": True}, {"paused": True}, StudyState.PAUSING),
    (0, {"finished": True, "paused": False}, {"paused": True}, StudyState.FINISHED),
    (0, {"finished": False, "paused": True}, None, StudyState.PAUSED),
    (0, None, {"paused": True}, StudyState.PAUSED),  # asked to pause while no controller ran
    (0, {"finished": False, "paused": False}, {"paused": False}, StudyState.IDLE),
    (0, None, None, StudyState.IDLE),
])
def test_study_state_from_trials_in_flight_and_the_two_documents(in_flight, state, control, expected):
    assert study_state(in_flight, state, control) is expected


def test_study_state_words():
    assert [s.value for s in StudyState] == ["running", "pausing", "paused", "finished", "idle"]
    assert f"{StudyState.PAUSING}" == "pausing" and StudyState.RUNNING == "running"
    assert [s for s in StudyState if s.active] == [StudyState.RUNNING, StudyState.PAUSING]
    assert {s.summary for s in StudyState} == {"finished", "paused", "in progress"}


# --- budget ---------------------------------------------------------------------------------------


def test_budget_use_counts_every_trained_step_and_completed_trials():
    trials = [_trial(0, 0.1), _trial(1, None, TrialStatus.FAILED, steps_done=1),
              _trial(2, None, TrialStatus.RUNNING, steps_done=2), _trial(3, 0.3)]
    use = BudgetUse.of(Budget(total_steps=1200, max_trials=10), trials)
    assert (use.steps_done, use.completed) == (11, 2)
    assert use.parts() == ["11 / 1,200 steps", "2 / 10 trials"]
    assert use.parts(trials_word="trials completed")[1] == "2 / 10 trials completed"
    assert use.fraction == pytest.approx(0.2) and use.measure == ("steps", 11, 1200)


def test_budget_use_without_a_step_budget_counts_trials():
    use = BudgetUse(steps_done=12_345, completed=3, total_steps=None, max_trials=4)
    assert use.parts() == ["12,345 steps", "3 / 4 trials"]
    assert use.measure == ("trials", 3, 4) and use.fraction == pytest.approx(0.75)
    assert BudgetUse(50, 9, 40, None).fraction == 1.0  # overspent shows as full, not more
    assert BudgetUse.of(Budget(total_steps=8)).parts() == ["0 / 8 steps"]


# --- opening a stored study -----------------------------------------------------------------------


def test_open_study_reads_spec_trials_and_documents(tmp_path):
    spec = toy_spec(storage=str(tmp_path), broker="redis://:secret@h:6379/0")
    store = StudyStore(open_object_store(str(tmp_path)), "toy")
    store.write_spec(spec.public_dict())
    store.append([_trial(0, 0.5), _trial(1, 0.9), _trial(2, None, TrialStatus.RUNNING, steps_done=1)])
    store.write_doc("control", {"paused": True, "at": 1.0, "by": "pbt stop"})

    stored = open_study(str(tmp_path), "toy")
    assert stored.spec_doc["broker"] == "redis://:***@h:6379/0" and stored.spec.name == "toy"
    assert stored.spec.algorithm.options == spec.algorithm.options
    assert [t.id for t in stored.trials] == ["t000000", "t000001", "t000002"]
    assert stored.state is None and stored.control == {"paused": True, "at": 1.0, "by": "pbt stop"}
    assert stored.in_flight == 1 and stored.study_state is StudyState.PAUSING
    assert stored.best.id == "t000001"

    store.append([_trial(2, 0.95)])
    store.write_doc("state", {"finished": False, "paused": True, "at": 2.0})
    again = stored.reread()
    assert again.spec is stored.spec and again.best.id == "t000002"
    assert again.study_state is StudyState.PAUSED and stored.in_flight == 1, "the first read is unchanged"


def test_open_study_names_a_missing_study_and_its_storage(tmp_path):
    with pytest.raises(NotFoundError, match=r"no study 'nope' in file://"):
        open_study(str(tmp_path), "nope")
