"""The one chunked train/evaluate loop that workers and replays share, without storage or processes."""

from __future__ import annotations

import pytest

from pbt.errors import FatalError
from pbt.trainers.driver import TrainerDriver
from pbt.trainers.toy import ToyTrainer


class Logged(ToyTrainer):
    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.calls: list[tuple] = []

    def train(self, steps):
        self.calls.append(("train", steps))
        return super().train(steps)

    def evaluate(self):
        self.calls.append(("evaluate", self.step))
        return super().evaluate()


def trainer() -> Logged:
    t = Logged({"lr": 0.01})
    t.setup({"h0": 0.5, "h1": 0.5}, seed=0)
    return t


def test_chunks_end_on_checkpoint_multiples_and_evaluations_are_recorded_at_both_step_counts():
    t = trainer()
    driver = TrainerDriver(t, metric="q", checkpoint_every=3, evaluate_every_checkpoint=True, step=1, lineage_start=10)
    boundaries: list[tuple[int, bool]] = []

    def between_chunks(at_checkpoint: bool) -> bool:
        boundaries.append((driver.step, at_checkpoint))
        return False  # go on

    objective = driver.run(8, between_chunks)
    assert [c for c in t.calls if c[0] == "train"] == [("train", 2), ("train", 3), ("train", 2)]  # resumed at 1
    assert boundaries == [(3, True), (6, True)]  # between chunks only, never after the last
    assert [(m.step, m.lineage_step) for m in driver.metrics] == [(3, 13), (6, 16), (8, 18)]
    assert objective == driver.metrics[-1].values["q"] and driver.lineage_step == 18
    assert driver.timings.train > 0 and driver.timings.evaluate > 0


def test_no_checkpoint_interval_trains_in_one_chunk_and_a_callback_can_stop_early():
    t = trainer()
    assert TrainerDriver(t, metric="q").run(5) is not None
    assert t.calls == [("train", 5), ("evaluate", 5)]
    stopped = TrainerDriver(trainer(), metric="q", checkpoint_every=2)
    assert stopped.run(6, lambda at_checkpoint: True) is None  # no final evaluation when stopped
    assert stopped.step == 2 and stopped.metrics == []


def test_values_are_coerced_and_a_missing_objective_is_refused():
    class Odd(ToyTrainer):
        def evaluate(self):
            return {1: "2.5"}

    t = Odd()
    t.setup({"h0": 0.5, "h1": 0.5}, seed=0)
    driver = TrainerDriver(t, metric="q")
    assert driver.evaluate() == {"1": 2.5}
    with pytest.raises(FatalError, match=r"returned no 'q' \(got \['1'\]\)"):
        driver.run(2)


@pytest.mark.parametrize("value", [True, "high", None, {"a": 1}, [1.0]])
def test_a_metric_that_is_not_a_number_is_a_contract_error_naming_it(value):
    class Odd(ToyTrainer):
        def evaluate(self):
            return {"q": value}

    t = Odd()
    t.setup({"h0": 0.5, "h1": 0.5}, seed=0)
    with pytest.raises(FatalError, match=r"returned .* for 'q', not a number"):
        TrainerDriver(t, metric="q").evaluate()


def test_an_evaluation_that_is_not_a_mapping_and_a_huge_integer_are_named():
    class Listed(ToyTrainer):
        def evaluate(self):
            return [("q", 1.0)]

    class Huge(ToyTrainer):
        def evaluate(self):
            return {"q": 10**400}

    for cls in (Listed, Huge):
        t = cls()
        t.setup({"h0": 0.5, "h1": 0.5}, seed=0)
        driver = TrainerDriver(t, metric="q")
        if cls is Listed:
            with pytest.raises(FatalError, match="returned list, not a mapping"):
                driver.evaluate()
        else:
            assert driver.evaluate() == {"q": float("inf")}  # non-finite: the trial ends as diverged
