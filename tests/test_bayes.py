"""The Bayesian-optimisation baseline: a real GP behind the policy interface, not random search renamed.

The contract suite (test_policies.py) already covers determinism, budgets and the space for
``bayes``; these tests pin down what makes it Bayesian and what parallel workers need from it.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from helpers import Simulator, toy_data

from pbt.controller.policies import make_policy
from pbt.errors import SpecError
from pbt.spec import StudySpec
from pbt.study_file import parse_spec
from pbt.trial import Suggestion, Trial, TrialStatus

OPTIMUM = 1.3


def study(parameters: dict | None, options: dict, name: str = "bayes", **over) -> StudySpec:
    """A toy study with its parameters and algorithm replaced (toy_spec would merge them)."""
    data = toy_data(**over)
    data["algorithm"] = {"name": name, "options": options}
    if parameters is not None:
        data["parameters"] = parameters
        data["objective"] = {"metric": "loss", "mode": "min"}
    return parse_spec(data)


def quadratic_spec(method: str, seed: int = 0, **options) -> StudySpec:
    line = {"x": {"type": "float", "low": -3.0, "high": 3.0}}
    return study(line, {"num_trials": 14, **options}, method, budget={"total_steps": 10_000}, seed=seed)


def record(trials: list[Trial], s: Suggestion, status=TrialStatus.COMPLETED, objective: float | None = None) -> Trial:
    n = len(trials)
    trial = Trial(id=f"t{n:06d}", study="s", number=n, params=s.params, steps=s.steps, status=status,
                  steps_done=s.steps if status is TrialStatus.COMPLETED else 0, objective=objective,
                  checkpoint=f"c/{n}" if status is TrialStatus.COMPLETED else None)
    trials.append(trial)
    return trial


def run_quadratic(spec) -> list[Trial]:
    policy = make_policy(spec)
    trials: list[Trial] = []
    while new := policy.suggest(trials, 1):
        record(trials, new[0], objective=(new[0].params["x"] - OPTIMUM) ** 2)
    return trials


def test_after_the_startup_trials_it_concentrates_near_the_optimum_more_than_random():
    startup = 4
    for seed in (0, 1):
        bayes = run_quadratic(quadratic_spec("bayes", seed, n_startup_trials=startup))
        rnd = run_quadratic(quadratic_spec("random", seed))
        assert len(bayes) == len(rnd) == 14
        gap_bayes = np.mean([abs(t.params["x"] - OPTIMUM) for t in bayes[startup:]])
        gap_random = np.mean([abs(t.params["x"] - OPTIMUM) for t in rnd[startup:]])
        assert gap_bayes < gap_random / 2, (seed, gap_bayes, gap_random)  # measured: ~8x closer
        assert min(abs(t.params["x"] - OPTIMUM) for t in bayes) < 0.05


@pytest.mark.parametrize("parallel", ["running", "constant_liar"])
def test_parallel_suggestions_are_distinct_from_each_other_and_from_running_trials(parallel):
    # The toy problem's optimum sits on a corner of the space: the case where greedy q-batch EI
    # proposed the same corner for every free worker before duplicates were replaced.
    options = {"num_trials": 12, "n_startup_trials": 4, "parallel": parallel}
    policy = make_policy(study(None, options, budget={"total_steps": 120}))
    sim = Simulator(policy)
    while new := policy.suggest(sim.trials, 3):
        running = [sim.create(s) for s in new]
        points = [tuple(round(v, 6) for v in t.params.values()) for t in running]
        assert len(set(points)) == len(points), points
        for trial in running:
            sim.finish(trial)
    assert len(sim.trials) == 12
    # And a point already in flight is never proposed again while it runs.
    trials = sim.trials[:8]
    in_flight = [record(trials, s, status=TrialStatus.RUNNING) for s in policy.suggest(trials, 2)]
    more = policy.suggest(trials, 2)
    seen = {tuple(t.params.values()) for t in in_flight}
    assert len(more) == 2 and not seen & {tuple(s.params.values()) for s in more}


def test_same_trials_same_suggestions_and_the_seed_matters():
    trials: list[Trial] = []
    for x in (-2.0, 0.0, 2.0, 2.5, -1.0):
        record(trials, Suggestion(params={"x": x}, steps=10), objective=(x - OPTIMUM) ** 2)
    record(trials, Suggestion(params={"x": 1.0}, steps=10), status=TrialStatus.RUNNING)
    a = make_policy(quadratic_spec("bayes", 0, n_startup_trials=3)).suggest(trials, 2)
    b = make_policy(quadratic_spec("bayes", 0, n_startup_trials=3)).suggest(trials, 2)
    c = make_policy(quadratic_spec("bayes", 7, n_startup_trials=3)).suggest(trials, 2)
    assert a == b
    assert a != c


def test_failed_and_stopped_trials_are_not_observations():
    policy = make_policy(quadratic_spec("bayes", 0, n_startup_trials=3))
    trials: list[Trial] = []
    for x in (-2.0, 0.0, 2.0):
        record(trials, Suggestion(params={"x": x}, steps=10), objective=(x - OPTIMUM) ** 2)
    record(trials, Suggestion(params={"x": 1.3}, steps=10), status=TrialStatus.FAILED)
    record(trials, Suggestion(params={"x": 1.2}, steps=10), status=TrialStatus.STOPPED)
    study, _ = policy._study(trials, seed=0)
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    assert [t.value for t in study.trials][:3] == [(x - OPTIMUM) ** 2 for x in (-2.0, 0.0, 2.0)]
    assert len(policy.suggest(trials, 2)) == 2


def test_every_parameter_type_round_trips_through_the_gp():
    space = {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "scale": "log"},
        "layers": {"type": "int", "low": 2, "high": 8},
        "batch": {"type": "discrete", "values": [16, 32, 128]},
        "act": {"type": "categorical", "values": ["relu", "gelu"]},
    }
    spec = study(space, {"num_trials": 9, "n_startup_trials": 3}, budget={"total_steps": 90})
    policy = make_policy(spec)
    trials: list[Trial] = []
    while new := policy.suggest(trials, 2):
        for s in new:
            p = s.params
            loss = abs(np.log10(p["lr"]) + 2.5) + abs(p["layers"] - 5) / 3 + (p["batch"] != 32) + (p["act"] == "relu")
            record(trials, s, objective=float(loss))
    assert len(trials) == 9
    for t in trials:
        assert all(spec.parameters[n].contains(v) for n, v in t.params.items()), t.params
        assert isinstance(t.params["batch"], int) and isinstance(t.params["layers"], int)


def test_options_are_validated_with_the_study_file():
    with pytest.raises(SpecError, match="num_trials"):
        study(None, {}, budget={"total_steps": 100})
    with pytest.raises(SpecError, match="parallel"):
        study(None, {"num_trials": 4, "parallel": "magic"})
    assert study(None, {"num_trials": 4}).algorithm.options == {"num_trials": 4}


def test_missing_optuna_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(SpecError, match=r"pip install 'pbt\[wavenet\]'"):
        study(None, {"num_trials": 4})


def test_no_checkpoint_is_kept_for_a_future_parent():
    """Bayesian trials train from scratch: only the controller's best lineage needs keeping."""
    policy = make_policy(quadratic_spec("bayes", 0, n_startup_trials=3))
    trials: list[Trial] = []
    for x in (-2.0, 0.0, 2.0):
        record(trials, Suggestion(params={"x": x}, steps=10), objective=(x - OPTIMUM) ** 2)
    assert all(s.parent is None for s in policy.suggest(trials, 3))
    assert policy.parent_candidates(trials) == set()
