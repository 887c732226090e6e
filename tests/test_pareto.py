"""Several objectives: non-dominated sorting and crowding (properties), Pareto selection in PBT, the front
everywhere a study is read (status, --json, report), through the real controller."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import toy_data
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pbt.controller.evolution import ParetoFitness, Population, Tournament, Truncation
from pbt.controller.loop import Controller
from pbt.controller.view import TrialView
from pbt.errors import SpecError
from pbt.lineage import pareto_front
from pbt.pareto import crowding_distances, dominates, nondominated_ranks, nsga2_keys
from pbt.spec import Objective
from pbt.storage.local import LocalObjectStore
from pbt.study_file import parse_spec
from pbt.testing import pbt
from pbt.testing.memory import FakeClock, InMemoryExecutor, NoLease, completed
from pbt.trial import MetricReport, Trial, TrialStatus

points = arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(1, 4)),
                elements=st.floats(-5, 5, allow_nan=False).map(lambda x: round(x, 1)))


@given(points)
@settings(max_examples=200, deadline=None)
def test_every_front_is_undominated_within_itself_and_dominated_by_the_one_before(p):
    ranks = nondominated_ranks(p)
    assert ranks.min() == 0 and set(ranks) == set(range(ranks.max() + 1))
    for i in range(len(p)):
        for j in range(len(p)):
            if dominates(p[i], p[j]):
                assert ranks[i] < ranks[j]  # a dominating point is always in an earlier front
        if ranks[i] > 0:
            assert any(dominates(p[j], p[i]) for j in np.flatnonzero(ranks == ranks[i] - 1))


@given(points)
@settings(max_examples=100, deadline=None)
def test_crowding_gives_every_objectives_extremes_infinity_and_is_never_negative(p):
    d = crowding_distances(p)
    assert (d >= 0).all()
    if len(p) > 2:
        for j in range(p.shape[1]):
            assert np.isinf(d[np.argmin(p[:, j])]) or np.isinf(d[np.argmax(p[:, j])]) or p[:, j].ptp() == 0
    ranks, crowding = nsga2_keys(p)
    assert len(ranks) == len(crowding) == len(p)


def test_a_non_finite_value_is_the_worst_possible():
    p = np.array([[1.0, np.nan], [0.0, 0.0], [np.inf, -1.0]])
    assert nondominated_ranks(p)[0] == 1 or dominates(p[1], p[0]) is False  # nan counts as -inf
    assert not dominates(p[0], p[1]) and list(nondominated_ranks(np.array([[np.nan], [0.0]]))) == [1, 0]


OBJECTIVES = (Objective(metric="q", mode="max"), Objective(metric="size", mode="min"))


def trial(n: int, q: float, size: float, generation: int = 0, member: int | None = None) -> Trial:
    return Trial(id=f"t{n:06d}", study="s", number=n, params={"h0": 0.5}, steps=4, steps_done=4,
                 status=TrialStatus.COMPLETED, objective=q, member=member if member is not None else n,
                 generation=generation, checkpoint=f"s/checkpoints/t{n:06d}/step-000000004",
                 metrics=[MetricReport(step=4, lineage_step=4, values={"q": q, "size": size})])


def point(t: Trial) -> list[float]:
    return [t.objective, -t.metrics[-1].values["size"]]


@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=2, max_size=12), st.integers(0, 2**32 - 1))
@settings(max_examples=100, deadline=None)
def test_a_pareto_tournament_never_picks_a_dominated_parent_over_a_dominating_one(values, seed):
    trials = [trial(n, q, size) for n, (q, size) in enumerate(values)]
    population = Population(TrialView(trials), ParetoFitness(OBJECTIVES))
    for initiator in trials:
        parent = Tournament(generations=2).choose_parent(initiator, population, np.random.default_rng(seed))
        if parent is not None:  # it copied: never a parent the initiator dominates
            assert not dominates(point(initiator), point(parent))
    for a in trials:  # and whoever dominates the initiator wins the tournament against it
        for b in trials:
            if dominates(point(b), point(a)):
                assert ParetoFitness(OBJECTIVES).beats(b, a, lambda: trials)
    order = ParetoFitness(OBJECTIVES).order(trials)
    front = {t.id for t in pareto_front(trials, OBJECTIVES)}
    assert {t.id for t in order[: len(front)]} == front  # truncation ranks the front first


def test_truncation_with_pareto_fitness_copies_the_front():
    trials = [trial(0, 0.9, 1.0), trial(1, 0.5, 0.5), trial(2, 0.1, 3.5), trial(3, 0.8, 3.0)]
    population = Population(TrialView(trials), ParetoFitness(OBJECTIVES))
    worst = trials[2]  # dominated by all three others: the last front
    parent = Truncation(fraction=0.25, population_size=4).choose_parent(worst, population, np.random.default_rng(0))
    assert parent is not None and parent.id in {"t000000", "t000001"}


def test_several_objectives_in_the_study_file():
    data = toy_data()
    data["objective"] = [{"metric": "q", "mode": "max"}, {"metric": "size", "mode": "min"}]
    spec = parse_spec(data)
    assert spec.objective.metric == "q" and [o.metric for o in spec.objectives] == ["q", "size"]
    assert parse_spec(spec.public_dict()).objectives == spec.objectives  # stored and read back
    data["objective"] = [{"metric": "q", "mode": "max"}, {"metric": "q", "mode": "min"}]
    with pytest.raises(SpecError, match="each metric may appear once"):
        parse_spec(data)
    data["objective"] = [{"metric": "q", "mode": "max"}, {"metric": "size", "mode": "smallest"}]
    with pytest.raises(SpecError, match=r"objective\.1\.mode"):
        parse_spec(data)
    data["objective"] = [{"metric": "q", "mode": "max"}, {"metric": "size", "mode": "min"}]
    data["algorithm"] = {"name": "bayes", "options": {"num_trials": 4}}
    with pytest.raises(SpecError, match="bayes optimises one objective"):
        parse_spec(data)


def _two_objective_study(tmp_path):
    data = toy_data(name="pareto", budget={"total_steps": 160}, execution={"parallelism": 4})
    data["objective"] = [{"metric": "q", "mode": "max"}, {"metric": "size", "mode": "min"}]
    return data


def test_pbt_with_two_objectives_runs_to_a_front_that_status_and_the_report_show(tmp_path):
    data = _two_objective_study(tmp_path)
    clock = FakeClock()

    def run(task):  # q grows with h0, size grows with h1: a real trade-off
        result = completed(task, task.params["h0"] + 0.001 * task.start_lineage_steps)
        result.metrics[-1].values["size"] = 1.0 + task.params["h1"] - task.params["h0"] / 2
        return result

    executor = InMemoryExecutor(clock, run)
    controller = Controller(parse_spec(data), executor, LocalObjectStore(tmp_path), NoLease(), clock=clock)
    snap = controller.run()
    assert snap.finished and snap.by_status == {"completed": 40}
    trials = controller.ledger.trials
    front = pareto_front(trials, OBJECTIVES)
    assert len(front) >= 2 and any(t.metadata.get("exploit") for t in trials)
    for t in trials:  # no front member is dominated by any completed trial
        for f in front:
            pf = [f.objective, -f.metrics[-1].values["size"]]
            assert not dominates([t.objective, -t.metrics[-1].values["size"]], pf)

    status = pbt("status", "pareto", "--storage", str(tmp_path), "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["front"] == [t.id for t in front]
    view = pbt("status", "pareto", "--storage", str(tmp_path))
    assert f"Pareto front: {len(front)} trial(s)" in view.stdout
    report = pbt("report", "pareto", "--storage", str(tmp_path), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "report" / "index.html").read_text()
    assert "<h2>Pareto front</h2>" in page and (tmp_path / "report" / "front.png").stat().st_size > 1000
    assert all(t.id in page for t in front)
