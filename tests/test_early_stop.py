"""PBT's early stopping (issue 14): the rule on hand-built records, then whole studies.

The rule (``pbt.controller.policies.pbt``): a running trial whose latest intermediate evaluation
is below the ``quantile`` of the other members' evaluations at comparable lineage steps, taken
from trials that existed when it was created, is stopped, and its member exploits at once.
Whole studies run through the real controller with an in-memory executor whose results come
back shuffled, several per tick, some announced by progress messages first: the same seed must
stop the same trials at the same steps whatever the order, a stopped member must copy a better
member, and the steps not trained must show in the budget.
"""

from __future__ import annotations

import random

import pytest
from helpers import toy_data

from pbt.analysis.report.data import prepare
from pbt.controller.loop import Controller
from pbt.controller.policies import make_policy
from pbt.controller.view import TrialView
from pbt.errors import SpecError
from pbt.storage.local import LocalObjectStore
from pbt.study_file import parse_spec
from pbt.testing.memory import FakeClock, InMemoryExecutor, NoLease
from pbt.trainers.toy import true_objective
from pbt.trial import MetricReport, Trial, TrialResult, TrialStatus

EARLY = {"population_size": 4, "steps_per_trial": 10, "early_stop": {"quantile": 0.5, "min_peers": 2}}


def spec_with(options=EARLY, **over):
    data = toy_data(**{"execution": {"parallelism": 2, "checkpoint_every": 5}, **over})
    data["algorithm"] = {"name": "pbt", "options": options}
    return parse_spec(data)


# --- the rule on hand-built records --------------------------------------------------------------


def done(n, member, values, *, start=0, parent=None, created_after=0, status=TrialStatus.COMPLETED, **meta):
    """Trial ``n`` of ``member`` that evaluated ``values`` at trial steps 5, 10, ... from lineage ``start``."""
    metrics = [MetricReport(step=5 * (i + 1), lineage_step=start + 5 * (i + 1), values={"q": v})
               for i, v in enumerate(values)]
    completed = status is TrialStatus.COMPLETED
    return Trial(id=f"t{n:06d}", study="toy", number=n, params={"h0": 0.5, "h1": 0.5}, member=member,
                 parent=parent, generation=start // 10, steps=10, start_lineage_steps=start, status=status,
                 steps_done=5 * len(values), metrics=metrics, objective=values[-1] if completed else None,
                 checkpoint="c" if completed else None, metadata={"created_after": created_after, **meta})


def generation_zero():
    return [done(i, i, [0.1 * i, 0.2 * i]) for i in range(4)]  # member i: 0.1 i at step 5, 0.2 i at 10


def running(n, member, value, *, created_after, start=10, step=5):
    return Trial(id=f"t{n:06d}", study="toy", number=n, params={"h0": 0.5, "h1": 0.5}, member=member,
                 generation=1, steps=10, start_lineage_steps=start, status=TrialStatus.RUNNING, steps_done=step,
                 metrics=[MetricReport(step=step, lineage_step=start + step, values={"q": value})],
                 metadata={"created_after": created_after})


def test_a_trial_below_the_quantile_of_the_other_members_at_comparable_progress_is_stopped():
    policy = make_policy(spec_with())
    trials = generation_zero()
    # Member 0's next trial at lineage 15: the others had 0.2, 0.4, 0.6 at lineage 10 (one
    # interval back: they trained less, which only makes the rule more cautious).
    low = running(4, 0, 0.3, created_after=4)
    reason = policy.should_stop(low, [*trials, low])
    assert reason is not None and "below the 0.5 quantile 0.4 of 3 other members" in reason
    high = running(4, 0, 0.5, created_after=4)
    assert policy.should_stop(high, [*trials, high]) is None


def test_only_trials_that_existed_when_the_trial_was_created_count():
    policy = make_policy(spec_with())
    trials = generation_zero()
    early = running(4, 0, -1.0, created_after=2)  # saw members 0 and 1 only: member 1 is one peer
    assert policy.should_stop(early, [*trials, early]) is None  # min_peers 2
    later = running(4, 0, -1.0, created_after=3)
    assert policy.should_stop(later, [*trials, later]) is not None


def test_the_same_lineage_step_is_preferred_and_a_stopped_peer_counts_up_to_its_stop():
    policy = make_policy(spec_with())
    trials = generation_zero()
    # Member 1's generation-1 trial, stopped at trial step 5 (lineage 15) at 0.05; what its worker
    # reported after the stop (9.0 at lineage 20) is not part of the population's record.
    trials.append(done(4, 1, [0.05, 9.0], start=10, parent="t000001", created_after=2,
                       status=TrialStatus.STOPPED, stop_step=5))
    trials.append(done(5, 2, [0.5, 0.6], start=10, parent="t000002", created_after=3))
    judged = running(6, 0, 0.3, created_after=6)
    peers = policy._comparable(judged, [*trials, judged], 15)
    assert peers == pytest.approx({1: 0.05, 2: 0.5, 3: 0.6})  # member 3 only has lineage 10 (one interval back)
    assert policy.should_stop(judged, [*trials, judged]) is not None  # 0.3 < median 0.5
    judged20 = running(6, 0, 0.3, created_after=6, step=10)
    # At lineage 20: member 1's last value before its stop (15), never the 9.0 after it; member 3's
    # latest (lineage 10) is a whole interval back.
    assert policy._comparable(judged20, [*trials, judged20], 20) == pytest.approx({1: 0.05, 2: 0.6})


def test_grace_steps_the_final_evaluation_and_a_non_finite_value():
    options = {**EARLY, "early_stop": {"quantile": 0.5, "min_peers": 2, "grace_steps": 6}}
    trials = generation_zero()
    judged = running(4, 0, -1.0, created_after=4)
    assert make_policy(spec_with(options)).should_stop(judged, [*trials, judged]) is None  # step 5 < 6
    policy = make_policy(spec_with())
    nan = running(4, 0, float("nan"), created_after=4)
    assert policy.should_stop(nan, [*trials, nan]) is not None
    final = running(4, 0, -1.0, created_after=4, step=10)
    assert policy.should_stop(final, [*trials, final]) is None  # nothing left to save
    assert make_policy(spec_with({**EARLY, "early_stop": None})).should_stop(judged, [*trials, judged]) is None


def test_early_stop_is_validated_when_the_study_file_loads():
    with pytest.raises(SpecError, match=r"set execution\.checkpoint_every below steps_per_trial"):
        spec_with(execution={"parallelism": 2})
    with pytest.raises(SpecError, match=r"set execution\.checkpoint_every below steps_per_trial"):
        spec_with(execution={"checkpoint_every": 10})
    with pytest.raises(SpecError, match=r"min_peers \(4\) must be below population_size \(4\)"):
        spec_with({**EARLY, "early_stop": {"min_peers": 4}})
    with pytest.raises(SpecError, match=r"early_stop\.quantil"):
        spec_with({**EARLY, "early_stop": {"quantil": 0.3}})
    with pytest.raises(SpecError, match="early_stop compares one number"):
        spec_with(objective=[{"metric": "q", "mode": "max"}, {"metric": "surrogate", "mode": "max"}])
    assert spec_with({**EARLY, "early_stop": True}).algorithm.options["early_stop"] == {}
    policy = make_policy(spec_with({**EARLY, "early_stop": True}))
    assert (policy.options.early_stop.quantile, policy.min_peers) == (0.25, 3)
    small = make_policy(spec_with({"population_size": 3, "steps_per_trial": 10, "early_stop": {}}))
    assert small.min_peers == 2  # the other two members


# --- whole studies through the controller ---------------------------------------------------------


class ToyRunner:
    """Trains the toy problem for real (theta per checkpoint), evaluating every ``every`` steps."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.theta: dict[str, tuple[float, float]] = {}
        self.q: dict[str, float] = {}

    def curve(self, task):
        theta = self.theta.get(task.parent, (0.9, 1.0)) if task.parent else (0.9, 1.0)
        h = (task.params["h0"], task.params["h1"])
        reports = []
        for step in range(1, task.steps + 1):
            theta = tuple(t - 0.01 * 2.0 * hi * t for t, hi in zip(theta, h))
            if step % self.every == 0 or step == task.steps:
                reports.append(MetricReport(step=step, lineage_step=task.start_lineage_steps + step,
                                            values={"q": true_objective(list(theta))}))
        self.theta[task.trial_id] = theta
        return reports

    def result(self, task) -> TrialResult:
        reports = self.curve(task)
        return TrialResult(study=task.study, trial_id=task.trial_id, attempt=task.attempt,
                           status=TrialStatus.COMPLETED, steps_done=task.steps, metrics=reports,
                           objective=reports[-1].values["q"], checkpoint=f"{task.study}/checkpoints/{task.trial_id}",
                           worker="memory")


class DivergingRunner(ToyRunner):
    """Each step adds 0.01 × (0.6 − h0) to the parent's value: h0 above 0.6 makes a model worse,
    as a learning rate set too high does."""

    def curve(self, task):
        q = self.q.get(task.parent, 0.0) if task.parent else 0.0
        reports = []
        for step in range(1, task.steps + 1):
            q += 0.01 * (0.6 - task.params["h0"])
            if step % self.every == 0 or step == task.steps:
                reports.append(MetricReport(step=step, lineage_step=task.start_lineage_steps + step, values={"q": q}))
        self.q[task.trial_id] = q
        return reports



def run_study(tmp_path, spec, order_seed: int, runner_class=ToyRunner):
    """The study to its end, results coming back shuffled and some announced by progress first."""
    clock = FakeClock()
    executor = InMemoryExecutor(clock)
    controller = Controller(spec, executor, LocalObjectStore(tmp_path), NoLease(), clock=clock)
    controller.start()
    controller.tick([])
    runner = runner_class(spec.execution.checkpoint_every)
    shuffle = random.Random(order_seed)
    for _ in range(5000):
        waiting = list(executor.waiting.values())
        for task in shuffle.sample(waiting, k=min(len(waiting), shuffle.randint(1, 3))):
            result = runner.result(task)
            if shuffle.random() < 0.5:  # its first evaluation arrives on its own first
                first = result.metrics[0]
                executor.progress(task.trial_id, first.step, dict(first.values))
                controller.tick(executor.events(0.1))
            executor._answer(result)
        controller.tick(executor.events(0.2))
        if controller.snapshot().finished:
            break
    assert controller.snapshot().finished
    return controller.ledger.trials


def stops(trials):
    return {t.id: (t.metadata["stop_step"], t.metadata["stop_reason"]) for t in trials
            if t.status is TrialStatus.STOPPED}


@pytest.mark.parametrize(("parallelism", "runner"), [(2, ToyRunner), (3, ToyRunner), (6, DivergingRunner)])
def test_the_same_seed_stops_the_same_trials_in_any_order_and_stopped_members_copy_a_better_member(
        tmp_path, parallelism, runner):
    # With every member in flight (parallelism 6) the trials fixed when a trial is created are the
    # previous generation, an interval less trained: only trials that got worse are stopped, so
    # that case runs a problem where some hyperparameters make a model worse.
    options = {"population_size": 6, "steps_per_trial": 20,
               "early_stop": {"quantile": 0.25, "min_peers": 3}}
    spec = spec_with(options, budget={"total_steps": 1200}, seed=2,
                     execution={"parallelism": parallelism, "checkpoint_every": 5})
    runs = [run_study(tmp_path / f"run{i}", spec, order_seed=i, runner_class=runner) for i in range(2)]
    assert stops(runs[0]) == stops(runs[1]), "the same seed stops the same trials at the same steps"
    assert [(t.params, t.parent) for t in runs[0]] == [(t.params, t.parent) for t in runs[1]]
    trials = runs[0]
    stopped = [t for t in trials if t.status is TrialStatus.STOPPED]
    assert len(stopped) >= 3, f"{len(stopped)} stopped of {len(trials)}"
    by_id = {t.id: t for t in trials}
    for t in stopped:
        stop = t.metadata["stop_step"]
        assert 0 < stop < t.steps and "below the 0.25 quantile" in t.metadata["stop_reason"]
        at_stop = next(m.values["q"] for m in t.metrics if m.step == stop)
        nxt = next((c for c in trials if c.member == t.member and c.number > t.number), None)
        if nxt is None:
            continue  # the budget ended first
        assert nxt.metadata.get("exploit") and by_id[nxt.parent].usable, f"{t.id}'s member did not exploit"
        assert by_id[nxt.parent].objective > at_stop, f"{t.id}'s member copied a worse trial"
        assert nxt.start_lineage_steps == by_id[nxt.parent].lineage_steps
    # The budget counts the steps up to each stop, so the saved steps trained more trials.
    charged = sum(t.metadata["stop_step"] if t.status is TrialStatus.STOPPED else t.steps for t in trials)
    assert charged <= 1200 and len(trials) > 1200 // 20
    best = max(t.objective for t in trials if t.usable)
    assert best > (1.0 if runner is ToyRunner else 0.5)


def test_without_early_stop_nothing_is_stopped(tmp_path):
    options = {"population_size": 6, "steps_per_trial": 20}
    spec = spec_with(options, budget={"total_steps": 600}, seed=2,
                     execution={"parallelism": 2, "checkpoint_every": 5})
    trials = run_study(tmp_path, spec, order_seed=0)
    assert not stops(trials) and len(trials) == 30
    controller = Controller(spec, InMemoryExecutor(FakeClock()), LocalObjectStore(tmp_path / "c"), NoLease())
    assert not controller.stopping.per_evaluation and not controller.stopping.per_tick  # no cost per evaluation


def test_the_report_marks_stopped_trials_and_ends_them_at_their_stop(tmp_path):
    options = {"population_size": 6, "steps_per_trial": 20, "early_stop": {"quantile": 0.25, "min_peers": 3}}
    spec = spec_with(options, budget={"total_steps": 600}, seed=2,
                     execution={"parallelism": 2, "checkpoint_every": 5})
    trials = run_study(tmp_path, spec, order_seed=0)
    stopped = {t.id: t for t in trials if t.status is TrialStatus.STOPPED}
    assert stopped
    data = prepare(spec, trials)
    for s in data.series:
        if s.trial in stopped:
            t = stopped[s.trial]
            assert s.stopped_at == t.start_lineage_steps + t.metadata["stop_step"] == s.steps[-1]
        else:
            assert s.stopped_at is None
    for n in data.nodes:
        if n.trial in stopped:
            assert n.end == stopped[n.trial].start_lineage_steps + stopped[n.trial].metadata["stop_step"]
            assert n.stop_reason == stopped[n.trial].metadata["stop_reason"]
    assert any("stopped early by the policy" in note and "steps saved" in note for note in data.notes)
    from pbt.analysis.report.plots import objective_figure, png, tree_figure

    assert png(objective_figure(data))[:4] == b"\x89PNG" and png(tree_figure(data))[:4] == b"\x89PNG"


def test_early_stop_names_only_running_trials():
    policy = make_policy(spec_with())
    trials = generation_zero()
    low = running(4, 0, -5.0, created_after=4)
    finished_low = done(5, 1, [-5.0, -5.0], start=10, created_after=4)
    decisions = policy.early_stop(TrialView([*trials, low, finished_low]))
    assert [d.trial_id for d in decisions] == ["t000004"] and decisions[0].step == 5


# --- real processes: embedded workers and Celery workers on a private Redis ---------------------------


@pytest.mark.slow
def test_pbt_early_stop_stops_the_same_trials_embedded_and_distributed_and_saves_steps(tmp_path):
    from test_edges import run_embedded_and_distributed
    from test_embedded_study import assert_complete_and_once

    data = toy_data(name="pbt-early", budget={"total_steps": 1200}, seed=2,
                    trainer={"config": {"lr": 0.01, "sleep_per_step": 0.002}},
                    execution={"parallelism": 2, "checkpoint_every": 5})
    data["algorithm"] = {"name": "pbt", "options": {"population_size": 6, "steps_per_trial": 20,
                                                    "early_stop": {"quantile": 0.25, "min_peers": 3}}}
    runs = run_embedded_and_distributed(tmp_path, data)
    stopped = [{t["id"]: t["metadata"]["stop_step"] for t in r["trials"] if t["status"] == "stopped"} for r in runs]
    assert len(stopped[0]) >= 3, "trials clearly among the worst are stopped"
    assert stopped[0] == stopped[1], "the same seed stops the same trials at the same steps"
    assert [(t["params"], t["parent"]) for t in runs[0]["trials"]] == [(t["params"], t["parent"])
                                                                       for t in runs[1]["trials"]]
    for data in runs:
        assert_complete_and_once(data)
        charged = sum(t["metadata"]["stop_step"] if t["status"] == "stopped" else t["steps"] for t in data["trials"])
        assert charged <= 1200 and len(data["trials"]) > 1200 // 20  # the saved steps trained more trials
