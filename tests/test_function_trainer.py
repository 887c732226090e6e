"""Function trainers: one function driven through the same attempt as a class, and every way it can go wrong.

The functions below are module-level so that trainer paths (``test_function_trainer:name``) name
them, exactly as a user's study file would.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from test_attempt import task

from pbt.analysis.replay import replay
from pbt.errors import SpecError
from pbt.tasks.attempt import Preempted, run_attempt
from pbt.trainers.base import load_trainer_class
from pbt.trainers.function import FunctionTrainer
from pbt.trial import FailureScope, TrialStatus

TOY_FUNCTION = "pbt.trainers.toy:train_toy"
TOY_CLASS = "pbt.trainers.toy:ToyTrainer"


def _loop(hparams, ctx, *, evaluate=None, save=None, each=None):
    state = {"x": 0.0}
    for step in ctx.steps(evaluate=evaluate or (lambda: {"q": state["x"]}),
                          save=save or (lambda d: (Path(d) / "x").write_text(str(state["x"])))):
        state["x"] += 1.0
        if each:
            each(step)


def raises_in_loop(hparams, ctx):
    def each(step):
        if step == 2:
            raise RuntimeError("loss exploded in the user's loop")

    _loop(hparams, ctx, each=each)


def raises_in_evaluate(hparams, ctx):
    _loop(hparams, ctx, evaluate=lambda: 1 / 0)


def returns_early(hparams, ctx):
    for _step, _ in zip(ctx.steps(evaluate=lambda: {"q": 0.0}, save=lambda d: None), range(3)):
        pass


def ignores_the_context(hparams, ctx):
    for _ in range(100):
        pass


def no_callbacks(hparams, ctx):
    for _ in ctx.steps():
        pass


def never_reports_the_metric(hparams, ctx):
    _loop(hparams, ctx, evaluate=lambda: {"loss": 1.0})


def a_generator(hparams, ctx):
    yield from ctx.steps(evaluate=dict, save=print)


def one_argument(hparams):
    pass


class NotATrainer:
    pass


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pbt-function-trainer"]


@pytest.mark.parametrize("checkpoint_every", [None, 3])
def test_the_toy_function_gives_the_same_trial_as_the_toy_class_bit_for_bit(tmp_path, checkpoint_every):
    results = {}
    for path in (TOY_CLASS, TOY_FUNCTION):
        root = tmp_path / path.rsplit(":", 1)[1]
        parent = run_attempt(task(root, trial_id="t000000", number=0, steps=7, trainer=path,
                                  checkpoint_every=checkpoint_every))
        child = run_attempt(task(root, parent="t000000", parent_checkpoint=parent.checkpoint, steps=8,
                                 start_lineage_steps=7, params={"h0": 0.9, "h1": 0.1}, trainer=path,
                                 checkpoint_every=checkpoint_every))
        assert parent.status is child.status is TrialStatus.COMPLETED, (parent.error, child.error)
        results[path] = [(r.objective, [m.model_dump() for m in r.metrics], r.steps_done) for r in (parent, child)]
    assert results[TOY_CLASS] == results[TOY_FUNCTION]
    assert not _threads()  # every run of the function ended with its attempt


def test_stop_and_preemption_save_at_the_boundary_and_a_resumed_function_continues_exactly(tmp_path):
    class Interrupt:
        def __init__(self, kind):
            self.kind = kind

        def progress(self, p):
            pass

        def interrupt(self):
            return self.kind

    stopped = run_attempt(task(tmp_path, trial_id="t000003", number=3, steps=9, checkpoint_every=3,
                               trainer=TOY_FUNCTION), Interrupt("stop"))
    assert stopped.status is TrialStatus.STOPPED and stopped.steps_done == 3
    t = task(tmp_path, trial_id="t000004", number=4, steps=9, checkpoint_every=3, trainer=TOY_FUNCTION)
    with pytest.raises(Preempted):
        run_attempt(t, Interrupt("preempt"))  # SIGTERM on a worker: save at the boundary, hand back
    resumed = run_attempt(t.model_copy(update={"attempt": 2}))
    assert resumed.resumed_from_step == 3 and resumed.status is TrialStatus.COMPLETED
    straight = run_attempt(task(tmp_path / "straight", steps=9, checkpoint_every=3, trainer=TOY_CLASS))
    assert resumed.objective == straight.objective
    assert not _threads()


@pytest.mark.parametrize(("function", "scope", "retryable", "words"), [
    ("raises_in_loop", FailureScope.TRIAL, True, ["RuntimeError: loss exploded", "raises_in_loop", "each"]),
    ("raises_in_evaluate", FailureScope.TRIAL, True, ["ZeroDivisionError", "<lambda>"]),
    ("returns_early", FailureScope.TRIAL, False, ["returned after 3 of the 8 steps", "keep iterating"]),
    ("ignores_the_context", FailureScope.STUDY, False, ["returned without iterating ctx.steps()"]),
    ("no_callbacks", FailureScope.STUDY, False, ["ctx.steps(evaluate=..., save=...)"]),
    ("never_reports_the_metric", FailureScope.STUDY, False, ["returned no 'q'", "['loss']"]),
])
def test_a_function_that_misbehaves_fails_its_trial_or_the_study_with_a_reason(tmp_path, function, scope,
                                                                              retryable, words):
    result = run_attempt(task(tmp_path, steps=8, trainer=f"test_function_trainer:{function}"))
    assert result.status is TrialStatus.FAILED
    assert (result.scope, result.retryable) == (scope, retryable), result.error
    for word in words:
        assert word in result.error, result.error
    assert not _threads()


@pytest.mark.parametrize(("name", "words"), [
    ("a_generator", "generator"),
    ("one_argument", "two arguments, (hparams, ctx)"),
    ("NotATrainer", "neither a trainer class"),
])
def test_a_trainer_path_that_names_something_unusable_is_refused_when_the_study_is_read(name, words):
    with pytest.raises(SpecError, match=r"trainer\.path") as err:
        load_trainer_class(f"test_function_trainer:{name}")
    assert words in str(err.value)


def test_a_function_path_builds_a_trainer_class_and_replay_drives_it_like_a_worker(tmp_path):
    cls = load_trainer_class(TOY_FUNCTION)
    assert issubclass(cls, FunctionTrainer)
    trainer = cls({"lr": 0.01})
    trainer.setup({"h0": 0.5, "h1": 0.5}, seed=0)
    trainer.train(4)
    trainer.train(4)
    first = trainer.evaluate()
    trainer.save(tmp_path)
    trainer.setup({"h0": 0.2, "h1": 0.2}, seed=1)  # a new segment ends the previous run of the function
    trainer.load(tmp_path)
    trainer.train(2)
    assert trainer.evaluate()["q"] > first["q"]
    trainer.close()
    assert not _threads()


def test_a_driver_interrupted_mid_step_still_ends_the_function():
    trainer = load_trainer_class(TOY_FUNCTION)({"lr": 0.01, "sleep_per_step": 0.2})
    trainer.setup({"h0": 0.5, "h1": 0.5}, seed=0)
    trainer.train(1)
    run = trainer.run
    # As when a time limit interrupts the driver's wait: the function is mid-step when close() comes.
    with run.cond:
        run.command = ("train", 5)
        run.turn = "function"
        run.cond.notify_all()
    trainer.close()
    assert not _threads() and run.taken < 6  # it stopped at the next boundary, not after its 5 steps


def test_replay_of_a_function_trainer_matches_the_class_replay():
    from helpers import toy_spec

    from pbt.trial import Trial

    trials = [Trial(id="t000000", study="toy", number=0, params={"h0": 0.5, "h1": 0.25}, steps=6, steps_done=6,
                    objective=0.0, status=TrialStatus.COMPLETED)]
    out = {}
    for path in (TOY_CLASS, TOY_FUNCTION):
        spec = toy_spec(trainer={"path": path}, execution={"checkpoint_every": 4})
        out[path] = replay(spec, trials).objective
    assert out[TOY_CLASS] == out[TOY_FUNCTION] is not None
    assert not _threads()
