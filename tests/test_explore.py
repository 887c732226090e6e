"""PBT's explore rules beyond perturbation: PB2's GP bandit and a user's explore function (issue 14).

PB2 is checked on what it promises: values in the space and of the parameter's type, the same
children for the same seed, a model that steers children to where recent trials improved most,
children of one call that spread out, data bounded by its window, and the plain perturbation
while there is too little data. The hook is checked where a user's function goes wrong: at load
(not importable, not callable, wrong signature) and at every use (a bad answer fails the study
with a message naming the hook, through the real controller).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from helpers import Simulator, best_q, toy_data, toy_spec

from pbt.controller.loop import Controller
from pbt.controller.pb2 import MIN_OBSERVATIONS, observations
from pbt.controller.policies import make_policy
from pbt.controller.view import TrialView
from pbt.errors import SpecError, StudyFailedError
from pbt.space import CategoricalParam, DiscreteParam, FloatParam, IntParam
from pbt.storage.local import LocalObjectStore
from pbt.study_file import parse_spec
from pbt.study_state import Outcome
from pbt.testing.memory import FakeClock, InMemoryExecutor, NoLease, completed
from pbt.trial import MetricReport, Trial, TrialStatus

SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "scale": "log"},
    "h0": {"type": "float", "low": 0.0, "high": 1.0},
    "layers": {"type": "int", "low": 1, "high": 8},
    "width": {"type": "int", "low": 16, "high": 512, "scale": "log"},
    "batch": {"type": "discrete", "values": [16, 32, 64]},
    "act": {"type": "categorical", "values": ["relu", "gelu", "tanh"]},
}


def pbt_spec(explore, *, population=4, parameters=None, **options):
    data = toy_data(budget={"total_steps": 400})
    if parameters is not None:
        data["parameters"] = parameters
    data["algorithm"] = {"name": "pbt", "options": {"population_size": population, "steps_per_trial": 4,
                                                    "explore": explore, **options}}
    return parse_spec(data)


def assert_typed(space, params):
    assert set(params) == set(space)
    for name, p in space.items():
        value = params[name]
        assert p.contains(value), f"{name}={value!r} outside {p}"
        if isinstance(p, FloatParam):
            assert type(value) is float
        elif isinstance(p, IntParam):
            assert type(value) is int
        elif isinstance(p, DiscreteParam):
            assert value == p.sample_value(p._index(value)) and type(value) is type(p.sample_value(0))
        elif isinstance(p, CategoricalParam):
            assert type(value) is str


class Scored(Simulator):
    """The contract's kind of in-memory study on any space: a trial improves by how close its
    unit-mapped numbers are to 0.7, added to its parent's objective (so improvement is what PB2 models)."""

    def __init__(self, policy, gain=lambda u: -((u - 0.7) ** 2)) -> None:
        super().__init__(policy)
        self.gain = gain

    def finish(self, trial: Trial) -> Trial:
        space = self.policy.space
        numeric = [n for n, p in space.items() if isinstance(p, (FloatParam, IntParam))]
        parent = next((t for t in self.trials if t.id == trial.parent), None)
        start = parent.objective if parent is not None else 0.0
        q = start + trial.steps * sum(self.gain(space[n].to_unit(trial.params[n])) for n in numeric)
        done = trial.model_copy(update={
            "status": TrialStatus.COMPLETED, "steps_done": trial.steps, "objective": q,
            "metrics": [MetricReport(step=trial.steps, lineage_step=trial.lineage_steps + trial.steps,
                                     values={"q": q})],
            "checkpoint": f"toy/checkpoints/{trial.id}/step-{trial.steps:09d}",
        })
        self.trials[trial.number] = done
        return done


# --- PB2 ----------------------------------------------------------------------------------------


def test_pb2_children_are_in_the_space_of_the_right_type_and_the_same_for_a_seed():
    spec = pbt_spec("pb2", parameters=SPACE, pb2_window=8)
    spec.budget.total_steps = 160
    runs = [Scored(make_policy(spec)).run(k=3) for _ in range(2)]
    assert [(t.params, t.parent) for t in runs[0]] == [(t.params, t.parent) for t in runs[1]]
    explored = [t for t in runs[0] if t.metadata.get("exploit")]
    assert len(runs[0]) == 40 and len(explored) > 10
    for t in runs[0]:
        assert_typed(make_policy(spec).space, t.params)


def test_pb2_steers_children_to_where_recent_trials_improved_most():
    # One numeric parameter; improvement per step peaks at h0 = 0.7. Perturbation moves the
    # parent's value by x0.8 / x1.2; PB2 proposes near the peak whatever the parent had.
    params = {"h0": {"type": "float", "low": 0.0, "high": 1.0}, "act": SPACE["act"]}
    near = {}
    for explore in ("perturb", "pb2"):
        children = []
        for seed in range(3):
            sim = Scored(make_policy(pbt_spec(explore, parameters=params, population=6).model_copy(
                update={"seed": seed})))
            trials = sim.run(k=6)
            children += [t.params["h0"] for t in trials if t.generation >= 4 and t.metadata.get("exploit")]
        near[explore] = float(np.mean([abs(h - 0.7) < 0.1 for h in children]))
    assert near["pb2"] > 0.6, near
    assert near["pb2"] > near["perturb"] + 0.2, near


def test_pb2_is_less_sure_where_nothing_runs_so_children_of_one_call_do_not_pile_up():
    # GP-BUCB, as PB2: trials still running and children already chosen in the call are points
    # whose outcome is unknown; the model's uncertainty there collapses, so the bonus that
    # draws children to unexplored values moves elsewhere.
    spec = pbt_spec("pb2", parameters={"h0": {"type": "float", "low": 0.0, "high": 1.0}}, population=8)
    sim = Scored(make_policy(spec), gain=lambda u: -abs(u - 0.7))
    sim.run(k=8, rounds=3)
    policy = make_policy(spec)
    session = policy.explorer.session(TrialView(sim.trials))
    rng = np.random.default_rng(0)
    session.explore(sim.trials[-1], rng)
    assert session.last_choice["model"] and len(session.pending) == 1
    chosen = np.array([[*session.last_choice["unit"], session.last_choice["time_unit"]]])
    model = session.model[0]
    _, before = model.predict(chosen, return_std=True)
    _, after = session._variance_model().predict(chosen, return_std=True)
    assert after[0] < 0.9 * before[0]
    sim.create(policy.suggest(sim.trials, 1)[0])  # a child now running
    again = policy.explorer.session(TrialView(sim.trials))
    again.explore(sim.trials[-2], rng)
    assert len(again.pending) == 2  # the running trial, then the child this call chose


def test_pb2_data_is_the_recent_window_so_a_decision_costs_the_same_late_in_a_study():
    spec = pbt_spec("pb2", parameters={"h0": {"type": "float", "low": 0.0, "high": 1.0}}, population=4,
                    pb2_window=8)
    sim = Scored(make_policy(spec))
    sim.run(k=4, rounds=12)
    assert len(sim.trials) == 48
    view = TrialView(sim.trials)
    policy = make_policy(spec)
    data, running = observations(view, ["h0"], policy.space, policy.fitness, policy.report_fitness, 8)
    assert len(data) == 8 and running == []
    assert [o.trial for o in data] == [t.id for t in sim.trials[-8:]]  # the newest, oldest first
    for o, t in zip(data, sim.trials[-8:]):
        parent = view.get(t.parent)
        assert o.time == t.start_lineage_steps
        assert math.isclose(o.y, (t.objective - parent.objective) / t.steps)


def test_pb2_perturbs_like_perturb_until_it_has_enough_data():
    params = {"h0": {"type": "float", "low": 0.0, "high": 1.0}, "h1": {"type": "float", "low": 0.0, "high": 1.0}}
    pb2, perturb = (make_policy(pbt_spec(rule, parameters=params, population=4)) for rule in ("pb2", "perturb"))
    sim = Scored(perturb)
    sim.run(k=4, rounds=1)  # one generation: four roots, no interval with a known start
    assert len(sim.trials) == 4 and MIN_OBSERVATIONS > 0
    assert pb2.suggest(sim.trials, 4) == perturb.suggest(sim.trials, 4)


def test_pb2_counts_a_stopped_trial_up_to_its_stop_and_a_root_from_its_first_evaluation():
    spec = pbt_spec("pb2", parameters={"h0": {"type": "float", "low": 0.0, "high": 1.0}})
    policy = make_policy(spec)

    def trial(n, **kw):
        return Trial(id=f"t{n:06d}", study="toy", number=n, params={"h0": 0.5}, steps=10, member=n % 4, **kw)

    def report(step, q, start=0):
        return MetricReport(step=step, lineage_step=start + step, values={"q": q})

    root = trial(0, status=TrialStatus.COMPLETED, steps_done=10, objective=3.0, checkpoint="c",
                 metrics=[report(5, 1.0), report(10, 3.0)])
    stopped = trial(1, parent="t000000", start_lineage_steps=10, status=TrialStatus.STOPPED, steps_done=10,
                    metadata={"stop_step": 5}, metrics=[report(5, 2.0, 10), report(10, 9.0, 10)])
    failed = trial(2, parent="t000000", start_lineage_steps=10, status=TrialStatus.FAILED, steps_done=3)
    data, _ = observations(TrialView([root, stopped, failed]), ["h0"], policy.space, policy.fitness,
                           policy.report_fitness, 8)
    assert [(o.trial, o.time, o.y) for o in data] == [("t000000", 5.0, 2.0 / 5), ("t000001", 10.0, -1.0 / 5)]


def test_pb2_without_scikit_learn_fails_the_study_file_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn raises ImportError
    with pytest.raises(SpecError, match=r"'pb2' needs scikit-learn.*pip install 'pbt\[pb2\]'"):
        pbt_spec("pb2")
    data = toy_data()
    data["algorithm"]["options"]["explore"] = "pb2"
    assert parse_spec(data, check_trainer=False).algorithm.options["explore"] == "pb2"  # readers need no GP


def test_pb2_beats_perturbation_on_the_toy_problem_with_a_small_population():
    budget = {"total_steps": 800}
    q = {}
    for rule in ("perturb", "pb2"):
        q[rule] = [best_q(Simulator(make_policy(toy_spec(
            algorithm={"options": {"population_size": 4, "steps_per_trial": 4, "explore": rule}},
            budget=budget, seed=s))).run(k=4)) for s in range(3)]
    assert np.mean(q["pb2"]) >= np.mean(q["perturb"]) - 1e-4, q


# --- a user's explore function ------------------------------------------------------------------


def test_an_explore_hook_gets_the_parents_values_the_space_and_a_seeded_generator():
    spec = pbt_spec("explore_hooks:mirror", parameters=SPACE)
    runs = [Scored(make_policy(spec)).run(k=3) for _ in range(2)]
    assert [t.params for t in runs[0]] == [t.params for t in runs[1]]
    by_id = {t.id: t for t in runs[0]}
    exploits = [t for t in runs[0] if t.metadata.get("exploit")]
    assert exploits
    space = make_policy(spec).space
    for t in exploits:
        parent = by_id[t.parent]
        assert math.isclose(t.params["h0"], 1.0 - parent.params["h0"])
        assert t.params["layers"] == 9 - parent.params["layers"]
        assert_typed(space, t.params)


def test_an_explore_hook_given_as_a_function_from_python_is_stored_as_its_path():
    import explore_hooks

    from pbt.api import study_spec
    from pbt.spec import StudySpec

    assert pbt_spec(explore_hooks.mirror).algorithm.options["explore"] == "explore_hooks:mirror"
    data = toy_data()
    data["algorithm"]["options"]["explore"] = explore_hooks.mirror
    spec = study_spec(StudySpec(**data))  # what pbt.run does with a StudySpec built in Python
    assert spec.algorithm.options["explore"] == "explore_hooks:mirror"
    assert spec.public_dict()["algorithm"]["options"]["explore"] == "explore_hooks:mirror"


@pytest.mark.parametrize(("path", "message"), [
    ("no_such_module_here:fn", "cannot import module 'no_such_module_here'"),
    ("explore_hooks:nothing", "module 'explore_hooks' has no attribute 'nothing'"),
    ("explore_hooks:NOT_CALLABLE", "'explore_hooks:NOT_CALLABLE' is a int, not a function"),
    ("explore_hooks:one_argument", "must accept (params, space, rng)"),
    ("explore_hooks:keyword_only", "must accept (params, space, rng)"),
])
def test_an_explore_hook_that_cannot_be_called_fails_the_study_file(path, message):
    with pytest.raises(SpecError) as err:
        pbt_spec(path)
    assert "algorithm.options.explore" in str(err.value) and message in str(err.value)


def test_an_explore_value_that_is_neither_a_rule_nor_a_path_is_refused():
    with pytest.raises(SpecError, match=r"algorithm\.options\.explore: expected perturb or pb2"):
        pbt_spec("perturbb")


def test_an_explore_hook_with_extra_defaulted_parameters_is_accepted_and_readers_need_not_import_it():
    assert pbt_spec("explore_hooks:with_defaults").algorithm.options["explore"] == "explore_hooks:with_defaults"
    data = toy_data()
    data["algorithm"]["options"]["explore"] = "not_installed_here.hooks:explore"
    assert parse_spec(data, check_trainer=False)  # pbt status / report of a study from another machine


@pytest.mark.parametrize(("hook", "message"), [
    ("out_of_range", "returned h0=2.0: outside [0, 1]"),
    ("wrong_type", "returned h0='0.5': expected a number in [0, 1]"),
    ("a_bool", "returned h0=True: expected a number"),
    ("nan", "returned h0=nan: outside [0, 1]"),
    ("missing", "returned the wrong parameters: missing ['h1']"),
    ("extra", "not in the search space ['momentum']"),
    ("not_a_mapping", "returned list, not a mapping"),
    ("raises", "raised RuntimeError: the hook's own bug"),
])
def test_a_bad_answer_from_an_explore_hook_fails_the_policy_with_a_message_naming_it(hook, message):
    policy = make_policy(pbt_spec(f"explore_hooks:{hook}"))
    sim = Simulator(policy)
    sim.run(k=4, rounds=1)
    with pytest.raises(StudyFailedError) as err:
        sim.run(k=4, rounds=1)
    assert f"explore hook explore_hooks:{hook}" in str(err.value) and message in str(err.value)


def test_a_bad_answer_from_an_explore_hook_ends_the_study_failed_through_the_controller(tmp_path):
    data = toy_data(budget={"total_steps": 400}, execution={"parallelism": 4})
    data["algorithm"]["options"]["explore"] = "explore_hooks:out_of_range"
    clock = FakeClock()
    executor = InMemoryExecutor(clock, lambda task: completed(task, task.params["h0"]))
    controller = Controller(parse_spec(data), executor, LocalObjectStore(tmp_path), NoLease(), clock=clock)
    snap = controller.run(max_seconds=60)
    assert snap.finished and snap.outcome is Outcome.FAILED
    assert "explore hook explore_hooks:out_of_range returned h0=2.0: outside [0, 1]" in snap.message
    assert all(0.0 <= t.params["h0"] <= 1.0 for t in controller.ledger)  # no bad trial was ever created


def test_an_explore_hook_may_not_change_a_parameter_that_is_not_mutable():
    params = {"h0": {"type": "float", "low": 0.0, "high": 1.0},
              "h1": {"type": "float", "low": 0.0, "high": 1.0, "mutable": False}}
    sim = Simulator(make_policy(pbt_spec("explore_hooks:change_everything", parameters=params)))
    sim.run(k=4, rounds=1)
    with pytest.raises(StudyFailedError, match=r"changed h1 from .* which is mutable: false"):
        sim.run(k=4, rounds=1)


def test_pb2_keeps_a_parameter_that_is_not_mutable_and_refuses_several_objectives_without_weights():
    params = {"h0": {"type": "float", "low": 0.0, "high": 1.0},
              "h1": {"type": "float", "low": 0.0, "high": 1.0, "mutable": False}}
    spec = pbt_spec("pb2", parameters=params)
    trials = Scored(make_policy(spec)).run(k=4)
    by_id = {t.id: t for t in trials}
    assert all(t.params["h1"] == by_id[t.parent].params["h1"] for t in trials if t.parent)
    data = toy_data(objective=[{"metric": "q", "mode": "max"}, {"metric": "surrogate", "mode": "max"}])
    data["algorithm"]["options"]["explore"] = "pb2"
    with pytest.raises(SpecError, match="pb2 models the improvement of one number"):
        parse_spec(data)
    data["algorithm"]["options"]["fitness_weights"] = {"q": 1.0, "surrogate": 0.1}
    assert parse_spec(data).algorithm.options["explore"] == "pb2"
