"""Every policy honours the interface contract; PBT's parts behave as the paper describes.

The contract suite runs over every built-in policy (add new ones to POLICIES): determinism
for a seed, at most k suggestions, budget respected, values inside the space, parents only
among usable trials, and an empty answer once the budget is spent.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Simulator, best_q, toy_spec

from pbt.controller.evolution import Population, Tournament, Truncation, objective_fitness
from pbt.controller.policies import make_policy
from pbt.controller.policies.pbt import PBT
from pbt.controller.view import TrialView
from pbt.trial import Trial, TrialStatus

POLICIES = {
    "pbt-tournament": {"name": "pbt", "options": {"population_size": 6, "steps_per_trial": 4}},
    "pbt-truncation": {"name": "pbt", "options": {"population_size": 6, "steps_per_trial": 4,
                                                   "selection": "truncation"}},
    "random": {"name": "random", "options": {"num_trials": 30}},
    "grid": {"name": "grid", "options": {"points_per_param": 3}},
    "bayes": {"name": "bayes", "options": {"num_trials": 12, "n_startup_trials": 4}},
}


def spec_for(name: str, **over):
    spec = toy_spec(**over)
    spec.algorithm = spec.algorithm.model_validate(POLICIES[name])
    return spec


@pytest.fixture(params=sorted(POLICIES))
def policy_name(request):
    return request.param


def test_same_seed_same_decisions(policy_name):
    runs = [Simulator(make_policy(spec_for(policy_name, budget={"total_steps": 120}))).run(k=3) for _ in range(2)]
    assert [(t.params, t.parent, t.steps) for t in runs[0]] == [(t.params, t.parent, t.steps) for t in runs[1]]
    assert len(runs[0]) > 3


def test_at_most_k_and_budget_respected(policy_name):
    spec = spec_for(policy_name, budget={"total_steps": 120})
    sim = Simulator(make_policy(spec))
    for k in (1, 2, 5):
        new = sim.policy.suggest(sim.trials, k)
        assert len(new) <= k
        for s in new:
            sim.finish(sim.create(s))
    trials = sim.run(k=4)
    assert sum(t.steps for t in trials) <= 120
    assert make_policy(spec).suggest(trials, 10) == []  # budget spent: nothing more


def test_values_stay_in_the_space_and_parents_are_usable(policy_name):
    sim = Simulator(make_policy(spec_for(policy_name, budget={"total_steps": 200})), fail={2, 7, 11})
    trials = sim.run(k=3)
    by_id = {t.id: t for t in trials}
    space = sim.policy.space
    for t in trials:
        assert all(space[n].contains(v) for n, v in t.params.items())
        if t.parent is not None:
            assert by_id[t.parent].usable, f"{t.id} copied from unusable {t.parent}"


def test_max_trials_budget(policy_name):
    spec = spec_for(policy_name, budget={"total_steps": 10_000, "max_trials": 5})
    assert len(Simulator(make_policy(spec)).run(k=2)) == 5


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
