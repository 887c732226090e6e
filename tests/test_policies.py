"""Every policy honours the interface contract; PBT's parts behave as the paper describes.

The contract is :class:`pbt.testing.PolicyContract` (hypothesis-generated histories of
completed, failed, NaN, stopped and running trials, any parallelism; plus whole in-memory
studies). It runs below over every built-in policy and option mix, on a search space with every
parameter type: add a class per new policy or option that changes a decision path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from helpers import Simulator, best_q, toy_data, toy_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbt.controller.evolution import Population, Tournament, Truncation, objective_fitness
from pbt.controller.policies import make_policy
from pbt.controller.policies.pbt import PBT
from pbt.controller.view import TrialView
from pbt.spec import StudySpec
from pbt.study_file import parse_spec
from pbt.testing import PolicyContract
from pbt.testing.policies import Simulator as ContractSimulator
from pbt.testing.policies import drive, kept_by_gc, with_seed
from pbt.trial import MetricReport, Trial, TrialStatus

# Every parameter type, both numeric scales, integer- and float-valued discrete parameters, one immutable.
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "scale": "log"},
    "h0": {"type": "float", "low": 0.0, "high": 1.0},
    "layers": {"type": "int", "low": 1, "high": 8},
    "width": {"type": "int", "low": 16, "high": 512, "scale": "log", "mutable": False},  # fixed along a lineage
    "batch": {"type": "discrete", "values": [16, 32, 64]},
    "dropout": {"type": "discrete", "values": [0.0, 0.25, 0.5]},
    "act": {"type": "categorical", "values": ["relu", "gelu", "tanh"]},
}


def contract_spec(algorithm: dict[str, Any], mode: str = "max", parameters: Sequence[str] = tuple(SPACE),
                  objective: Any = None, execution: dict[str, Any] | None = None) -> StudySpec:
    data = toy_data(budget={"total_steps": 120}, **({"execution": execution} if execution else {}))
    data["objective"] = objective or {"metric": "q", "mode": mode}
    data["parameters"] = {name: SPACE[name] for name in parameters}
    data["algorithm"] = algorithm
    return parse_spec(data, check_trainer=False)


PBT_OPTIONS = {"population_size": 4, "steps_per_trial": 4}

class TestPBTTournament(PolicyContract):
    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "pbt", "options": PBT_OPTIONS})


class TestPBTTruncation(PolicyContract):
    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "pbt", "options": {**PBT_OPTIONS, "selection": "truncation"}}, mode="min")


class TestPBTExploreOnWin(PolicyContract):
    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "pbt", "options": {**PBT_OPTIONS, "explore_on_win": True}})


class TestPBTFitnessWeights(PolicyContract):
    extra_metrics = ("aux",)

    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "pbt", "options": {**PBT_OPTIONS, "fitness_weights": {"q": 1.0, "aux": -0.5}}})


class TestPBTParetoObjectives(PolicyContract):
    @pytest.fixture
    def spec(self) -> StudySpec:
        objectives = [{"metric": "q", "mode": "max"}, {"metric": "size", "mode": "min"}]
        return contract_spec({"name": "pbt", "options": PBT_OPTIONS}, objective=objectives)


class TestPBTPB2(PolicyContract):
    # PB2 fits a Gaussian process at each call that explores: few, short histories on the
    # numeric parameters (and one of each other kind), mostly completing, keep this to seconds.
    max_examples = 5
    rounds = 8
    max_k = 3
    outcomes = ("complete", "complete", "run", "wait", "fail", "nan", "stop")

    @pytest.fixture
    def spec(self) -> StudySpec:
        options = {**PBT_OPTIONS, "explore": "pb2", "pb2_window": 8}
        return contract_spec({"name": "pbt", "options": options}, parameters=("lr", "h0", "layers", "width", "act"))


class TestPBTExploreHook(PolicyContract):
    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "pbt", "options": {**PBT_OPTIONS, "explore": "explore_hooks:mirror"}})


EARLY_STOP = {**PBT_OPTIONS, "early_stop": {"min_peers": 2, "quantile": 0.5}}
# More trials complete (peers) and run with an evaluation (judged): about one history in two stops one.
STOPPING = ("complete", "complete", "run", "run", "wait", "fail", "nan", "stop")


class TestPBTEarlyStop(PolicyContract):
    outcomes = STOPPING

    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "pbt", "options": EARLY_STOP}, mode="min",
                             execution={"parallelism": 4, "checkpoint_every": 1})

    def test_generated_histories_do_stop_trials(self, spec: StudySpec) -> None:
        """The properties above are not vacuous for early stopping: the histories stop trials."""
        stops = stopped_in_histories(spec, examples=25, outcomes=self.outcomes)
        assert stops >= 5, f"{stops} stops in 25 histories"


class TestPBTEarlyStopTruncation(PolicyContract):
    outcomes = STOPPING

    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "pbt", "options": {**EARLY_STOP, "selection": "truncation"}},
                             execution={"parallelism": 4, "checkpoint_every": 2})


def stopped_in_histories(spec: StudySpec, examples: int, outcomes: Sequence[str]) -> int:
    """Trials ``early_stop`` named over ``examples`` generated histories of ``spec``'s policy."""
    stops = []

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def run(data: st.DataObject) -> None:
        seeded = with_seed(spec, data.draw(st.integers(0, 2**16)))
        history = drive(make_policy(seeded), seeded, data.draw, outcomes=outcomes)
        stops.append(sum(len(call.stopped) for call in history.calls))

    run()
    return sum(stops)


class TestRandomSearch(PolicyContract):
    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "random", "options": {"num_trials": 20}})


class TestRandomSearchWithMedianStopping(PolicyContract):
    @pytest.fixture
    def spec(self) -> StudySpec:
        options = {"num_trials": 20, "median_stopping": True, "min_completed_for_stopping": 2}
        return contract_spec({"name": "random", "options": options}, mode="min", execution={"checkpoint_every": 2})


class TestGridSearch(PolicyContract):
    @pytest.fixture
    def spec(self) -> StudySpec:
        return contract_spec({"name": "grid", "options": {"points_per_param": 2, "steps_per_trial": 4}})


class TestBayesianOptimization(PolicyContract):
    # Each call fits a Gaussian process: few, short histories on a smaller space (one parameter
    # of each type) keep this class to seconds; more completions reach the GP phase sooner.
    max_examples = 4
    rounds = 6
    max_k = 3
    outcomes = ("complete", "complete", "run", "wait", "fail", "nan", "stop")

    @pytest.fixture
    def spec(self) -> StudySpec:
        options = {"num_trials": 8, "n_startup_trials": 3}
        return contract_spec({"name": "bayes", "options": options}, parameters=("lr", "layers", "batch", "act"))


# --- PBT's parts on the toy problem ------------------------------------------------------------

TOY_POLICIES = {
    "pbt-tournament": {"name": "pbt", "options": {"population_size": 6, "steps_per_trial": 4}},
    "random": {"name": "random", "options": {"num_trials": 30}},
}


def spec_for(name: str, **over):
    spec = toy_spec(**over)
    spec.algorithm = spec.algorithm.model_validate(TOY_POLICIES[name])
    return spec


def test_pbt_beats_random_search_on_the_toy_problem_at_equal_budget():
    budget = {"total_steps": 1200}
    pbt = [best_q(Simulator(make_policy(spec_for("pbt-tournament", budget=budget, seed=s))).run(k=6))
           for s in range(5)]
    rnd = [best_q(Simulator(make_policy(spec_for("random", budget=budget, seed=s))).run(k=6)) for s in range(5)]
    assert np.mean(pbt) > np.mean(rnd)


# --- PBT's parts ------------------------------------------------------------------------


def _trial(number, member, generation, q, status=TrialStatus.COMPLETED, params=None):
    return Trial(id=f"t{number:06d}", study="s", number=number, params=params or {"h0": 0.5, "h1": 0.5},
                 member=member, generation=generation, steps=4, steps_done=4, status=status,
                 objective=q if status is TrialStatus.COMPLETED else None, checkpoint=f"c/{number}")


def _population(trials):
    return Population(TrialView(trials), objective_fitness(1.0))


def test_tournament_loser_copies_winner_and_winner_keeps_going():
    strong, weak = _trial(0, 0, 0, 1.0), _trial(1, 1, 0, 0.1)
    pop = _population([strong, weak])
    rng = np.random.default_rng(0)
    assert Tournament().choose_parent(weak, pop, rng).id == strong.id
    assert Tournament().choose_parent(strong, pop, rng) is None


def test_tournament_opponents_come_only_from_the_window():
    old_star = _trial(0, 0, 0, 5.0)  # generation 0: outside a 2-generation window of generation 3
    trials = [old_star, _trial(1, 1, 2, 0.2), _trial(2, 2, 3, 0.1)]
    pop = _population(trials)
    for seed in range(20):
        parent = Tournament(generations=2).choose_parent(trials[2], pop, np.random.default_rng(seed))
        assert parent is None or parent.id == "t000001"


def test_failed_initiator_copies_a_usable_trial_never_a_failed_one():
    trials = [_trial(0, 0, 0, None, status=TrialStatus.FAILED), _trial(1, 1, 0, 0.3),
              _trial(2, 2, 0, None, status=TrialStatus.FAILED)]
    pop = _population(trials)
    for seed in range(10):
        assert Tournament().choose_parent(trials[0], pop, np.random.default_rng(seed)).id == "t000001"


def test_nan_objective_is_not_usable():
    t = _trial(0, 0, 0, float("nan"))
    assert not t.usable


def test_truncation_bottom_fifth_copies_top_fifth():
    trials = [_trial(i, i, 0, q) for i, q in enumerate([0.1, 0.9, 0.5, 0.4, 0.3, 0.2, 0.6, 0.7, 0.8, 1.0])]
    pop = _population(trials)
    rng = np.random.default_rng(0)
    parents = {Truncation(0.2).choose_parent(trials[0], pop, rng).id for _ in range(30)}
    assert parents == {"t000009", "t000001"}  # the two best
    assert Truncation(0.2).choose_parent(trials[2], pop, rng) is None  # the middle keeps training


def test_pbt_children_explore_around_their_parent():
    spec = spec_for("pbt-tournament")
    policy = PBT(spec)
    sim = Simulator(policy)
    sim.run(k=6, rounds=4)
    exploits = [t for t in sim.trials if t.metadata.get("exploit")]
    assert exploits, "expected some exploit/explore events"
    by_id = {t.id: t for t in sim.trials}
    for child in exploits:
        parent = by_id[child.parent]
        assert child.member != parent.member or child.parent != child.id
        assert child.generation >= 1
        assert child.start_lineage_steps == parent.lineage_steps


def test_budget_mode_serves_the_least_trained_member_first():
    spec = spec_for("pbt-tournament")
    policy = PBT(spec)
    sim = Simulator(policy)
    sim.run(k=6, rounds=1)  # generation 0 for all six members
    first = policy.suggest(sim.trials, 1)
    assert len(first) == 1 and first[0].member == 0  # all tied at 4 steps: lowest trial number first
    sim.finish(sim.create(first[0]))
    second = policy.suggest(sim.trials, 1)
    assert second[0].member == 1  # member 0 has trained more now


def test_parent_candidates_shrink_to_the_window():
    spec = spec_for("pbt-tournament", budget={"total_steps": 600})
    policy = PBT(spec)
    trials = Simulator(policy).run(k=6)
    keep = policy.parent_candidates(trials)
    assert 0 < len(keep) < len([t for t in trials if t.usable]) / 3
    newest = max(t.generation for t in trials)
    assert all(t.generation >= newest - 3 for t in trials if t.id in keep)


def test_pbts_own_best_is_kept_by_gc_when_it_is_not_the_objectives_best():
    """The rare history the contract's GC-safety property found for weighted fitness, step by step:
    a failed member with an empty window copies PBT's best by weighted fitness, which the
    collector's own "best by objective" root does not cover — so PBT names it a parent candidate.
    (Before, the parent could be collected when chosen, and which parent PBT picked depended on
    when GC ran.)"""
    options = {"population_size": 2, "steps_per_trial": 4, "window_generations": 1,
               "fitness_weights": {"q": 1.0, "aux": -1.0}}
    spec = contract_spec({"name": "pbt", "options": options})
    policy = make_policy(spec)
    sim = ContractSimulator(policy, extra_metrics=("aux",))

    def complete(trial: Trial, q: float, aux: float) -> None:
        report = MetricReport(step=trial.steps, lineage_step=trial.lineage_steps + trial.steps,
                              values={"q": q, "aux": aux})
        sim.trials[trial.number] = trial.model_copy(update={
            "status": TrialStatus.COMPLETED, "steps_done": trial.steps, "objective": q, "metrics": [report],
            "checkpoint": f"toy/checkpoints/{trial.id}/final"})

    a0, b0 = (sim.create(s) for s in policy.suggest(sim.trials, 2))
    complete(a0, q=0.0, aux=-10.0)  # PBT's best: fitness 10
    complete(b0, q=1.0, aux=10.0)  # the controller's best: objective 1
    children = [sim.create(s) for s in policy.suggest(sim.trials, 2)]
    assert {c.parent for c in children} == {a0.id}  # a0 won its tournament and b0 copied it
    for child in children:
        sim.trials[child.number] = child.model_copy(update={"status": TrialStatus.FAILED, "error": "boom"})
    # Nothing in flight, no usable trial in the window: PBT's best (a0) is a root beside the
    # collector's best by objective (b0).
    kept = kept_by_gc(sim.trials, policy.parent_candidates(sim.trials), spec)
    assert a0.id in kept and b0.id in kept
    new = policy.suggest(sim.trials, 2)
    assert all(s.parent in kept for s in new if s.parent), [s.parent for s in new]
