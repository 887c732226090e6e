"""One attempt of one trial, without any broker: warm start, resume, fallback, failures.

``run_attempt`` is what both executors run, so these are the guarantees every worker gives.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from pbt.errors import StorageConfigError, StorageError
from pbt.storage import open_object_store
from pbt.storage.checkpoints import CheckpointStore
from pbt.storage.keys import checkpoint_name
from pbt.tasks.attempt import Preempted, run_attempt
from pbt.trainers.toy import ToyTrainer
from pbt.trial import FailureScope, TrialStatus, TrialTask


def task(tmp_path: Path, trial_id="t000001", number=1, steps=8, **kw) -> TrialTask:
    base = dict(
        study="s", trial_id=trial_id, number=number, attempt=1, params={"h0": 0.5, "h1": 0.5}, steps=steps,
        storage=open_object_store(str(tmp_path / "store")).uri, trainer="pbt.trainers.toy:ToyTrainer",
        trainer_config={"lr": 0.01}, objective_metric="q", seed=0,
    )
    base.update(kw)
    return TrialTask(**base)


def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(open_object_store(str(tmp_path / "store")))


def test_a_trial_trains_evaluates_and_saves_its_final_checkpoint(tmp_path):
    result = run_attempt(task(tmp_path, steps=8, checkpoint_every=3))
    assert result.status is TrialStatus.COMPLETED
    assert result.steps_done == 8
    assert [m.step for m in result.metrics] == [3, 6, 8]  # evaluated at each checkpoint and at the end
    assert result.objective == pytest.approx(1.2 - (0.9**2 + 1.0**2) * 0.99 ** (2 * 8))  # θ shrinks by 1-2ηh
    # Only the final checkpoint remains: in-trial ones are pruned once it is committed.
    assert store(tmp_path).list("s/checkpoints/t000001/") == [checkpoint_name("s", "t000001", 8)]


def test_warm_start_continues_from_the_parent_checkpoint(tmp_path):
    parent = run_attempt(task(tmp_path, trial_id="t000000", number=0, steps=10))
    child = run_attempt(task(tmp_path, parent="t000000", parent_checkpoint=parent.checkpoint, steps=10,
                           start_lineage_steps=10))
    straight = ToyTrainer({"lr": 0.01})
    straight.setup({"h0": 0.5, "h1": 0.5})
    straight.train(20)
    assert child.objective == pytest.approx(straight.evaluate()["q"])
    assert child.warm_start == parent.checkpoint
    assert child.metrics[-1].lineage_step == 20


def test_a_redelivered_attempt_resumes_from_its_own_latest_checkpoint(tmp_path):
    class Crash(Exception):
        pass

    class CrashingReporter:
        """Simulates a worker killed right after its in-trial checkpoint at step 6."""

        def progress(self, p):
            if p.step == 6:
                raise Crash()

        def interrupt(self):
            return None

    t = task(tmp_path, steps=10, checkpoint_every=3)
    with pytest.raises(Crash):
        from pbt.tasks import attempt as trial_module

        attempt = trial_module._Attempt(t, CrashingReporter(), "w", trial_module.Timings())
        attempt.run(tmp_path / "work")
    resumed = run_attempt(t.model_copy(update={"attempt": 2}))
    assert resumed.status is TrialStatus.COMPLETED
    assert resumed.resumed_from_step == 6  # lost at most one checkpoint interval
    assert [m.step for m in resumed.metrics] == [3, 6, 9, 10]  # metrics of attempt 1 were kept
    assert resumed.objective == pytest.approx(run_attempt(task(tmp_path, trial_id="t000009", steps=10)).objective)


def test_a_finished_trial_redelivered_returns_its_result_without_training(tmp_path):
    t = task(tmp_path, steps=6)
    first = run_attempt(t)
    again = run_attempt(t.model_copy(update={"attempt": 2}))
    assert again.status is TrialStatus.COMPLETED
    assert again.objective == first.objective and again.checkpoint == first.checkpoint
    assert again.timings.train == 0.0


def _corrupt(tmp_path: Path, name: str) -> None:
    manifest = json.loads((tmp_path / "store" / name / "MANIFEST.json").read_text())
    part = tmp_path / "store" / manifest["parts"][0]["key"]
    part.write_bytes(b"garbage")


def test_a_corrupt_parent_falls_back_along_the_lineage(tmp_path):
    grandparent = run_attempt(task(tmp_path, trial_id="t000000", number=0, steps=5))
    parent = run_attempt(
        task(tmp_path, trial_id="t000001", number=1, steps=5, parent_checkpoint=grandparent.checkpoint)
    )
    _corrupt(tmp_path, parent.checkpoint)
    child = run_attempt(task(tmp_path, trial_id="t000002", number=2, steps=5, parent_checkpoint=parent.checkpoint,
                           fallback_checkpoints=[grandparent.checkpoint]))
    assert child.status is TrialStatus.COMPLETED
    assert child.warm_start == grandparent.checkpoint
    assert child.metrics[-1].lineage_step == 5 + 5  # the grandparent's 5 steps, then its own 5


def test_no_usable_checkpoint_fails_the_trial_instead_of_training_from_scratch(tmp_path):
    parent = run_attempt(task(tmp_path, trial_id="t000000", number=0, steps=5))
    _corrupt(tmp_path, parent.checkpoint)
    child = run_attempt(task(tmp_path, trial_id="t000002", number=2, parent_checkpoint=parent.checkpoint))
    assert child.status is TrialStatus.FAILED
    assert not child.retryable
    assert "no usable checkpoint along the lineage" in child.error
    assert "part state.json" in child.error  # the error says which part of which checkpoint


def test_a_trainer_that_raises_fails_with_its_traceback_and_may_be_retried(tmp_path):
    result = run_attempt(task(tmp_path, trainer_config={"fail_above": 0.1}))
    assert result.status is TrialStatus.FAILED
    assert result.retryable
    assert "RuntimeError: toy trainer told to fail" in result.error
    assert "Traceback" in result.error and "toy.py" in result.error


def test_a_nan_objective_fails_the_trial_and_is_not_retried(tmp_path):
    result = run_attempt(task(tmp_path, trainer_config={"nan_above": 0.1}))
    assert result.status is TrialStatus.FAILED
    assert not result.retryable
    assert "not finite" in result.error
    assert result.objective is None


def test_a_non_finite_intermediate_objective_stops_the_attempt_at_that_evaluation(tmp_path):
    result = run_attempt(task(tmp_path, steps=100, checkpoint_every=10, trainer_config={"nan_above": 0.1}))
    assert result.status is TrialStatus.FAILED and not result.retryable
    assert result.steps_done == 10, "a diverged trial is not trained to its end"
    assert "is nan at step 10" in result.error


def test_a_missing_objective_metric_names_what_evaluate_returned(tmp_path):
    result = run_attempt(task(tmp_path, objective_metric="accuracy"))
    assert result.status is TrialStatus.FAILED and not result.retryable
    assert "returned no 'accuracy'" in result.error and "['q']" in result.error
    assert result.scope is FailureScope.STUDY  # the same for every trial: the study ends


class _Trainer:
    """Does nothing; the subclasses below each break the trainer contract in one way."""

    def __init__(self, config):
        pass

    def setup(self, hparams, *, seed):
        pass

    def train(self, steps):
        pass

    def evaluate(self):
        return {"q": 1.0}

    def save(self, directory):
        pass

    def load(self, directory):
        pass


class _NeedsConfig(_Trainer):
    def __init__(self, config):
        self.depth = config["depth"]  # KeyError: trainer.config lacks what the trainer needs


class _NoSeed(_Trainer):
    def setup(self, hparams):  # the protocol passes seed=...: a wrong signature
        pass


class _BugInside(_Trainer):
    def setup(self, hparams, *, seed):
        raise TypeError("a bug inside setup, for these hyperparameters only")


class _Exits(_Trainer):
    def train(self, steps):
        raise SystemExit(3)


class _Interrupts(_Trainer):
    def train(self, steps):
        raise KeyboardInterrupt


@pytest.mark.parametrize("trainer", ["test_attempt:_Exits", "test_attempt:_Interrupts"])
def test_a_trainer_that_exits_or_interrupts_fails_its_trial_not_the_worker(tmp_path, trainer):
    result = run_attempt(task(tmp_path, trainer=trainer))
    assert result.status is TrialStatus.FAILED and result.retryable and result.recycle
    assert "raised by the trainer" in result.error and result.scope is FailureScope.TRIAL


@pytest.mark.parametrize(("trainer", "scope"), [
    ("test_attempt:_NeedsConfig", FailureScope.STUDY),
    ("test_attempt:_NoSeed", FailureScope.STUDY),
    ("test_attempt:_BugInside", FailureScope.TRIAL),
])
def test_errors_every_trial_would_hit_are_study_scoped_and_others_are_not(tmp_path, trainer, scope):
    result = run_attempt(task(tmp_path, trainer=trainer))
    assert result.status is TrialStatus.FAILED and result.scope is scope, result.error
    assert result.retryable is (scope is FailureScope.TRIAL)


def test_stop_and_preempt_save_progress(tmp_path):
    class Interrupt:
        def __init__(self, kind):
            self.kind = kind

        def progress(self, p):
            pass

        def interrupt(self):
            return self.kind

    stopped = run_attempt(task(tmp_path, trial_id="t000003", number=3, steps=9, checkpoint_every=3), Interrupt("stop"))
    assert stopped.status is TrialStatus.STOPPED and stopped.steps_done == 3
    t = task(tmp_path, trial_id="t000004", number=4, steps=9, checkpoint_every=3)
    with pytest.raises(Preempted):
        run_attempt(t, Interrupt("preempt"))
    resumed = run_attempt(t.model_copy(update={"attempt": 2}))
    assert resumed.resumed_from_step == 3 and resumed.status is TrialStatus.COMPLETED


# --- whose fault, and what the trainer printed (issue 11) ----------------------------------------


@pytest.mark.parametrize(
    ("exc", "scope", "recycle"),
    [
        (MemoryError(), "worker", True),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "worker", True),
        (RuntimeError("CUDA error: an illegal memory access was encountered"), "worker", True),
        (StorageConfigError("s3://b: Unable to locate credentials"), "worker", False),
        (StorageError("writing s3://b/k failed after 10 attempt(s)"), "worker", False),
        (OSError(errno.ENOSPC, "No space left on device"), "worker", False),
        (RuntimeError("loss exploded"), "trial", False),
        (FileNotFoundError(errno.ENOENT, "data/x.wav"), "trial", False),
    ],
)
def test_failures_of_the_workers_environment_are_the_workers(exc, scope, recycle):
    from pbt.tasks.attempt import classify, needs_new_process

    got_scope, retryable = classify(exc)
    assert (got_scope.value, needs_new_process(exc)) == (scope, recycle)
    assert retryable or scope == "trial"


def test_an_error_caused_by_running_out_of_memory_is_the_workers_even_when_wrapped():
    from pbt.tasks.attempt import classify, needs_new_process

    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise RuntimeError("data loader worker died") from inner
    except RuntimeError as outer:
        assert classify(outer)[0].value == "worker" and needs_new_process(outer)


def test_a_process_left_unfit_says_so_in_its_result(tmp_path):
    result = run_attempt(task(tmp_path, trainer_config={"unfit_after": 0}))
    assert result.status is TrialStatus.FAILED
    assert result.scope.value == "worker" and result.retryable and result.recycle
    assert "MemoryError" in result.error


def test_what_the_trainer_prints_is_kept_per_attempt_in_the_studys_storage(tmp_path):
    result = run_attempt(task(tmp_path, steps=4, checkpoint_every=2, trainer_config={"say": "hello from toy"}))
    assert result.status is TrialStatus.COMPLETED
    text = (tmp_path / "store" / "s" / "logs" / "t000001" / "attempt-001.log").read_text()
    assert "hello from toy (stdout, step 0)" in text and "hello from toy (fd 2, step 2)" in text
    assert result.objective is not None  # capturing changed nothing else


def test_a_trainer_that_prints_without_end_keeps_a_bounded_log(tmp_path):
    from pbt.tasks.output import HEAD_BYTES, TAIL_BYTES

    loud = "x" * 100_000
    result = run_attempt(task(tmp_path, steps=10, checkpoint_every=1, trainer_config={"say": loud}))
    assert result.status is TrialStatus.COMPLETED
    text = (tmp_path / "store" / "s" / "logs" / "t000001" / "attempt-001.log").read_bytes()
    assert len(text) <= HEAD_BYTES + TAIL_BYTES + 100
    assert b"bytes of output omitted" in text and text.rstrip().endswith(b"(fd 2, step 9)")


def test_too_many_metrics_per_evaluation_fail_the_study_clearly(tmp_path):
    from pbt.trainers.driver import MAX_METRICS

    result = run_attempt(task(tmp_path, trainer_config={"extra_metrics": MAX_METRICS + 10}))
    assert result.status is TrialStatus.FAILED and not result.retryable
    assert result.scope.value == "study"
    assert f"at most {MAX_METRICS}" in result.error


def test_a_save_that_writes_nothing_ends_the_study_instead_of_failing_every_trial_in_turn(tmp_path):
    result = run_attempt(task(tmp_path, trainer="test_attempt:_Trainer"))  # its save() writes no file
    assert result.status is TrialStatus.FAILED and result.scope is FailureScope.STUDY, result.error
    assert "save(directory) wrote no file" in result.error and not result.retryable
