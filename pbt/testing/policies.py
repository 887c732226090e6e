"""Behavioural suite for policies: properties every ``suggest``/``early_stop`` must keep.

:class:`PolicyContract` drives a policy the way the controller does, on trial histories that
hypothesis generates: each round asks for up to ``k`` suggestions (any ``k``, 0 included),
records them as trials, lets a simulated garbage collector drop the checkpoints the
controller's would (neither a :meth:`~pbt.controller.policy.Policy.parent_candidates`, in
flight, the best, nor an ancestor of one), stops what ``early_stop`` names, and ends a random
subset of the trials in flight (completed with any objective, failed, NaN, stopped) while the
rest keep running. Every history is therefore one
the policy could really be shown. Each property is a test method that checks all the calls of
many such histories. pbt runs the suite over every built-in policy and option mix; to check
your own policy, subclass it and provide its study::

    import pytest
    from pbt.study_file import parse_spec
    from pbt.testing import PolicyContract

    class TestMyPolicy(PolicyContract):
        @pytest.fixture
        def spec(self):
            return parse_spec({..., "algorithm": {"name": "mypkg.policies:MyPolicy"}}, check_trainer=False)

**Adding a property**: write a ``check`` function over a :class:`History` and a test method
that calls ``self.for_histories(request, spec, make_policy, check)``; pass ``outcomes=`` to
bias its histories (e.g. ``("fail",)``: a trainer that always fails; the class attribute
``outcomes`` biases every property of a subclass). A property a policy does
not keep yet is marked in that policy's subclass: override the test with
``@pytest.mark.xfail(strict=True, reason=...)`` and call ``super()``'s; the suite then
derandomizes its examples, so the known failure is reproduced on every run.

This module imports pytest and hypothesis: it is part of the test kit, never imported by pbt.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pbt.controller.policies import make_policy as make_builtin_policy
from pbt.controller.policy import EarlyStopDecision, Policy, as_decisions
from pbt.controller.view import committed
from pbt.lineage import best_trial
from pbt.space import CategoricalParam, DiscreteParam, FloatParam, IntParam, Value, _Param
from pbt.spec import Budget, StudySpec
from pbt.trial import MetricReport, Suggestion, Trial, TrialStatus

__all__ = [
    "OUTCOMES",
    "Call",
    "GCPoint",
    "History",
    "PolicyContract",
    "Simulator",
    "check_value",
    "drive",
    "kept_by_gc",
    "with_budget",
    "with_seed",
]

PolicyFactory = Callable[[StudySpec], Policy]
Request = pytest.FixtureRequest

#: What may happen to a trial in flight during one round. "complete" first: hypothesis shrinks
#: towards it, so a minimal failing history is one where as much as possible went well.
OUTCOMES: tuple[str, ...] = ("complete", "run", "wait", "fail", "nan", "stop")


def with_seed(spec: StudySpec, seed: int) -> StudySpec:
    return spec.model_copy(update={"seed": seed})


def with_budget(spec: StudySpec, total_steps: int | None = None, max_trials: int | None = None) -> StudySpec:
    return spec.model_copy(update={"budget": Budget(total_steps=total_steps, max_trials=max_trials)})


def check_value(param: _Param, value: Value) -> None:
    """``value`` lies in ``param``'s range and has the type the trainer will be handed."""
    assert param.contains(value), f"{value!r} is outside {param!r}"
    if isinstance(param, FloatParam):
        assert isinstance(value, float), f"float parameter got {type(value).__name__} {value!r}"
    elif isinstance(param, IntParam):
        assert isinstance(value, int) and not isinstance(value, bool), f"int parameter got {value!r}"
    elif isinstance(param, DiscreteParam):
        typed = param.sample_value(param._index(value))
        assert value == typed and type(value) is type(typed), f"discrete value {value!r} should be {typed!r}"
    elif isinstance(param, CategoricalParam):
        assert isinstance(value, str), f"categorical parameter got {value!r}"


# --- histories -------------------------------------------------------------------------------------


@dataclass
class Call:
    """One round's questions to the policy and its answers, all about the same trial list."""

    index: int
    k: int
    seen: list[Trial]  # the very list the policy was given (a copy of the study's records)
    seen_json: list[str]  # those records serialised before the policy saw them
    suggestions: list[Suggestion]
    stopped: list[EarlyStopDecision]  # early_stop's answer (a policy's bare ids normalised)
    candidates: set[str]


@dataclass
class GCPoint:
    """After a round's trials are created: what the collector would keep (and may have freed)."""

    after_call: int
    candidates: set[str]  # parent_candidates of the records at that moment
    kept: set[str]  # what the controller's collector keeps: candidates, in flight, best, their ancestry
    usable: set[str]  # trials usable then, checkpoint still there
    collected: bool  # whether the simulated collector ran at this point


@dataclass
class History:
    spec: StudySpec
    calls: list[Call] = field(default_factory=list)
    gc_points: list[GCPoint] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)


def metric_names(spec: StudySpec, extra: Sequence[str] = ()) -> list[str]:
    """The primary objective first, then the study's other objectives and metrics trials report."""
    return list(dict.fromkeys([*(o.metric for o in spec.objectives), *extra]))


# Metric values are quarter steps in [-5, 5]: ties are frequent (tie-breaking must be
# deterministic too), and a failing example shrinks towards 0. One draw per value keeps
# generation cheap; the codes above 20 stand for a NaN and, for metrics other than the
# objective, for a value the trainer did not report.
_NAN, _MISSING = 21, 22
_NON_FINITE = (math.nan, math.inf, -math.inf)


def _finite(draw: Callable[..., Any]) -> float:
    return draw(st.integers(-20, 20)) / 4


def _report(draw: Callable[..., Any], names: list[str], step: int, lineage: int,
            objective: float | None = None) -> MetricReport:
    values = {}
    for i, name in enumerate(names):
        if i == 0 and objective is not None:
            values[name] = objective
            continue
        code = draw(st.integers(-20, _NAN if i == 0 else _MISSING))
        if code == _NAN:
            values[name] = math.nan
        elif code != _MISSING:
            values[name] = code / 4
    return MetricReport(step=step, lineage_step=lineage, values=values)


def _create(trials: list[Trial], s: Suggestion, study: str, created_after: int) -> Trial:
    """The record the controller writes for a suggestion (see ``Controller._decide``), with
    ``metadata.created_after``: how many trials the policy had seen, which early stopping's peers
    (:meth:`~pbt.controller.policy.Policy.peers`) are drawn from."""
    number = len(trials)
    parent = next((t for t in trials if t.id == s.parent), None) if s.parent else None
    return Trial(
        id=f"t{number:06d}", study=study, number=number, params=s.params, parent=s.parent,
        parent_checkpoint=parent.checkpoint if parent else None, member=s.member, generation=s.generation,
        steps=s.steps, start_lineage_steps=parent.lineage_steps if parent else 0, status=TrialStatus.PENDING,
        attempts=1, metadata={**s.metadata, "created_after": created_after},
    )


def _advance(draw: Callable[..., Any], trial: Trial, outcome: str, names: list[str]) -> Trial:
    """``trial`` after one round in which ``outcome`` happened to it."""
    if outcome == "wait":
        return trial
    lineage = trial.start_lineage_steps
    if outcome == "complete":
        objective = _finite(draw)
        # The evaluations it ran on the way (evaluate_every_checkpoint), on a straight line to the
        # final value: what early stopping compares running trials against.
        slope = draw(st.integers(-4, 4)) / 4
        last = trial.metrics[-1].step if trial.metrics else 0
        on_the_way = [
            MetricReport(step=s, lineage_step=lineage + s, values={names[0]: objective + slope * (trial.steps - s)})
            for s in range(last + 1, trial.steps)
        ]
        final = _report(draw, names, trial.steps, lineage + trial.steps, objective)
        return trial.model_copy(update={
            "status": TrialStatus.COMPLETED, "steps_done": trial.steps, "objective": objective,
            "metrics": [*trial.metrics, *on_the_way, final], "checkpoint": f"{trial.study}/checkpoints/{trial.id}/"
            f"step-{trial.steps:09d}",
        })
    if outcome == "nan":
        bad, as_failure = draw(st.sampled_from([(v, f) for f in (True, False) for v in _NON_FINITE]))
        final = _report(draw, names, trial.steps, lineage + trial.steps, bad)
        if as_failure:  # what a worker reports: the attempt fails, not retried
            return trial.model_copy(update={
                "status": TrialStatus.FAILED, "steps_done": trial.steps, "metrics": [*trial.metrics, final],
                "failures": 1, "error": f"objective {names[0]} is {bad} (not finite)",
            })
        # A record the format allows (and Trial.usable guards against): completed, non-finite.
        return trial.model_copy(update={
            "status": TrialStatus.COMPLETED, "steps_done": trial.steps, "objective": bad,
            "metrics": [*trial.metrics, final], "checkpoint": f"{trial.study}/checkpoints/{trial.id}/final",
        })
    steps = draw(st.integers(trial.steps_done, trial.steps - 1)) if trial.steps > trial.steps_done else trial.steps_done
    metrics = list(trial.metrics)
    if steps > 0 and (not metrics or metrics[-1].step < steps) and draw(st.booleans()):
        metrics.append(_report(draw, names, steps, lineage + steps))
    if outcome == "run":
        return trial.model_copy(update={"status": TrialStatus.RUNNING, "steps_done": steps, "metrics": metrics})
    if outcome == "fail":
        return trial.model_copy(update={"status": TrialStatus.FAILED, "steps_done": steps, "metrics": metrics,
                                        "failures": 3, "error": "RuntimeError: the trainer raised"})
    assert outcome == "stop", outcome
    return trial.model_copy(update={"status": TrialStatus.STOPPED, "steps_done": trial.steps_done,
                                    "error": "stopped early by the policy"})


def kept_by_gc(trials: Sequence[Trial], candidates: set[str], spec: StudySpec) -> set[str]:
    """What the controller's collector keeps (``Controller._maybe_gc``): the policy's parent
    candidates, trials in flight and the best trial, with the whole ancestry of each."""
    roots = set(candidates) | {t.id for t in trials if not t.status.terminal}
    best = best_trial(trials, spec.objective)
    if best is not None:
        roots.add(best.id)
    by_id = {t.id: t for t in trials}
    keep: set[str] = set()
    for root in roots:
        node = by_id.get(root)
        while node is not None and node.id not in keep:
            keep.add(node.id)
            node = by_id.get(node.parent) if node.parent else None
    return keep


def _collect(trials: list[Trial], keep: set[str]) -> None:
    """Mark freed what the collector would delete: every usable checkpoint not kept."""
    for i, t in enumerate(trials):
        if t.usable and t.checkpoint and not t.checkpoint_deleted and t.id not in keep:
            trials[i] = t.model_copy(update={"checkpoint_deleted": True})


def drive(
    policy: Policy,
    spec: StudySpec,
    draw: Callable[..., Any],
    *,
    rounds: int = 12,
    max_k: int = 6,
    outcomes: Sequence[str] = OUTCOMES,
    extra_metrics: Sequence[str] = (),
) -> History:
    """Generate one history by asking ``policy``, round after round, as the controller would."""
    names = metric_names(spec, extra_metrics)
    choices = st.sampled_from(list(outcomes))
    history = History(spec)
    trials = history.trials
    for index in range(rounds):
        k = draw(st.integers(0, max_k), label="k")
        seen = [t.model_copy() for t in trials]
        seen_json = [t.model_dump_json() for t in seen]
        suggestions = policy.suggest(seen, k)
        stopped = as_decisions(policy.early_stop(seen))
        candidates = policy.parent_candidates(seen)
        history.calls.append(Call(index, k, seen, seen_json, suggestions, stopped, candidates))
        for s in suggestions:
            trials.append(_create(trials, s, spec.name, len(seen)))
        # The controller's garbage collection runs after the new trials are recorded.
        roots = policy.parent_candidates([t.model_copy() for t in trials])
        kept = kept_by_gc(trials, roots, spec)
        usable = {t.id for t in trials if t.usable and not t.checkpoint_deleted}
        collected = draw(st.booleans(), label="gc")
        history.gc_points.append(GCPoint(index, roots, kept, usable, collected))
        if collected:
            _collect(trials, kept)
        for i, trial in enumerate(trials):
            if trial.status.terminal:
                continue
            outcome = draw(choices)
            if trial.id in {d.trial_id for d in stopped} and trial.status is TrialStatus.RUNNING:
                outcome = "stop"  # the controller asked its worker to stop: it does at its next chunk
            trials[i] = _advance(draw, trial, outcome, names)
        if k > 0 and not suggestions and all(t.status.terminal for t in trials):
            break  # the policy is done and nothing is in flight: the study has ended
    return history


# --- an in-memory study for example-based checks ----------------------------------------------------


class Simulator:
    """Runs a policy in memory to the end, one round at a time, every trial of a round finishing.

    The objective is a smooth function of the parameters plus half the parent's, so it rewards
    both good values and good ancestry; ``fail`` lists trial numbers that fail instead.
    """

    def __init__(self, policy: Policy, fail: set[int] | None = None, extra_metrics: Sequence[str] = ()) -> None:
        self.policy = policy
        self.spec = policy.spec
        self.trials: list[Trial] = []
        self.fail = fail or set()
        self.names = metric_names(self.spec, extra_metrics)

    def score(self, trial: Trial) -> float:
        own = -sum((p.to_unit(trial.params[n]) - 0.3) ** 2 for n, p in self.spec.parameters.items())
        parent = next((t for t in self.trials if t.id == trial.parent), None) if trial.parent else None
        return own + 0.5 * (parent.objective if parent is not None and parent.objective is not None else 0.0)

    def create(self, s: Suggestion, created_after: int | None = None) -> Trial:
        """Record suggestion ``s``; ``created_after``: trials the policy had seen (default: all so far)."""
        seen = len(self.trials) if created_after is None else created_after
        trial = _create(self.trials, s, self.spec.name, seen).model_copy(update={"status": TrialStatus.RUNNING})
        self.trials.append(trial)
        return trial

    def finish(self, trial: Trial) -> Trial:
        if trial.number in self.fail:
            done = trial.model_copy(update={"status": TrialStatus.FAILED, "steps_done": 1, "error": "boom"})
        else:
            q = self.score(trial)
            report = MetricReport(step=trial.steps, lineage_step=trial.lineage_steps + trial.steps,
                                  values={name: q for name in self.names})
            done = trial.model_copy(update={
                "status": TrialStatus.COMPLETED, "steps_done": trial.steps, "objective": q, "metrics": [report],
                "checkpoint": f"{trial.study}/checkpoints/{trial.id}/step-{trial.steps:09d}",
            })
        self.trials[trial.number] = done
        return done

    def run(self, k: int, rounds: int = 1000) -> list[Trial]:
        for _ in range(rounds):
            seen = len(self.trials)
            new = [self.create(s, seen) for s in self.policy.suggest(self.trials, k)]
            if not new:
                break
            for trial in new:
                self.finish(trial)
        return self.trials


# --- the suite ---------------------------------------------------------------------------------------


class PolicyContract:
    """Properties every policy keeps, over generated histories and whole in-memory studies.

    **Required fixture** ``spec`` — the :class:`~pbt.spec.StudySpec` whose ``algorithm`` is the
    policy under test, with a small budget (a few dozen trials) so histories reach its end. The
    suite varies its ``seed`` (and, in the example-based tests, its ``budget``).

    **Optional fixture** ``make_policy`` — ``StudySpec -> Policy``; default
    :func:`pbt.controller.policies.make_policy` (built-in names and ``module:Class`` paths).

    **Optional class attributes**: ``max_examples`` (histories per property), ``rounds`` and
    ``max_k`` (their length and parallelism), ``outcomes`` (what may happen to a trial in a
    round, from :data:`OUTCOMES`; repeat one to make it likelier), ``extra_metrics`` (metric
    names, besides the objective, that trials should report).
    """

    max_examples: ClassVar[int] = 25
    rounds: ClassVar[int] = 12
    max_k: ClassVar[int] = 6
    outcomes: ClassVar[tuple[str, ...]] = OUTCOMES
    extra_metrics: ClassVar[tuple[str, ...]] = ()

    @pytest.fixture
    def spec(self) -> StudySpec:
        pytest.fail(f"{type(self).__name__} must define a `spec` fixture (see PolicyContract)", pytrace=False)

    @pytest.fixture
    def make_policy(self) -> PolicyFactory:
        return make_builtin_policy

    def for_histories(
        self,
        request: pytest.FixtureRequest,
        spec: StudySpec,
        make_policy: PolicyFactory,
        check: Callable[[History, PolicyFactory], None],
        *,
        outcomes: Sequence[str] | None = None,
    ) -> None:
        """Run ``check(history, make_policy)`` on generated histories of ``spec``'s policy.

        Under an ``xfail`` marker (a property the policy is known not to keep yet) the examples
        are derandomized and not shrunk: the known failure is found the same way on every run,
        quickly, so ``strict=True`` holds, and an XPASS means the policy was fixed.
        """
        known_failure = request.node.get_closest_marker("xfail") is not None

        def run(data: st.DataObject) -> None:
            seeded = with_seed(spec, data.draw(st.integers(0, 2**16), label="seed"))
            history = drive(make_policy(seeded), seeded, data.draw, rounds=self.rounds, max_k=self.max_k,
                            outcomes=outcomes or self.outcomes, extra_metrics=self.extra_metrics)
            check(history, make_policy)

        # One example database entry per suite class and property, not one shared by every
        # `run` defined here (hypothesis keys its database by the test function's source).
        key = f"{type(self).__module__}.{type(self).__qualname__}.{check.__name__}"
        run._hypothesis_internal_add_digest = key.encode()  # type: ignore[attr-defined]
        options: dict[str, Any] = dict(
            max_examples=self.max_examples, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        if known_failure:
            options.update(derandomize=True, database=None, max_examples=4 * self.max_examples,
                           phases=(Phase.explicit, Phase.generate))
        settings(**options)(given(data=st.data())(run))()

    # --- properties over generated histories ---------------------------------------------------

    def test_at_most_k_suggestions(self, request: Request, spec: StudySpec, make_policy: PolicyFactory) -> None:
        self.for_histories(request, spec, make_policy, check_at_most_k)

    def test_suggested_values_are_in_the_space(
        self, request: Request, spec: StudySpec, make_policy: PolicyFactory
    ) -> None:
        self.for_histories(request, spec, make_policy, check_values_in_the_space)

    def test_parents_are_usable_trials(self, request: Request, spec: StudySpec, make_policy: PolicyFactory) -> None:
        self.for_histories(request, spec, make_policy, check_parents_are_usable)

    def test_immutable_parameters_are_inherited(
        self, request: Request, spec: StudySpec, make_policy: PolicyFactory
    ) -> None:
        self.for_histories(request, spec, make_policy, check_immutable_parameters_are_inherited)

    def test_parents_were_kept_by_every_earlier_gc(
        self, request: Request, spec: StudySpec, make_policy: PolicyFactory
    ) -> None:
        self.for_histories(request, spec, make_policy, check_parents_were_kept)

    def test_parents_were_parent_candidates_at_every_earlier_gc(
        self, request: Request, spec: StudySpec, make_policy: PolicyFactory
    ) -> None:
        self.for_histories(request, spec, make_policy, check_parents_were_candidates)

    def test_suggestions_fit_the_budget(self, request: Request, spec: StudySpec, make_policy: PolicyFactory) -> None:
        self.for_histories(request, spec, make_policy, check_budget)

    def test_early_stop_names_only_running_trials(
        self, request: Request, spec: StudySpec, make_policy: PolicyFactory
    ) -> None:
        self.for_histories(request, spec, make_policy, check_early_stop_running)

    def test_same_input_same_output(self, request: Request, spec: StudySpec, make_policy: PolicyFactory) -> None:
        self.for_histories(request, spec, make_policy, check_deterministic)

    def test_the_trial_list_is_not_mutated(
        self, request: Request, spec: StudySpec, make_policy: PolicyFactory
    ) -> None:
        self.for_histories(request, spec, make_policy, check_not_mutated)

    # --- whole studies in memory (every trial of a round finishes) ------------------------------

    def test_same_seed_same_decisions(self, spec: StudySpec, make_policy: PolicyFactory) -> None:
        spec = with_budget(spec, total_steps=120)
        runs = [Simulator(make_policy(spec), extra_metrics=self.extra_metrics).run(k=3) for _ in range(2)]
        assert [(t.params, t.parent, t.steps) for t in runs[0]] == [(t.params, t.parent, t.steps) for t in runs[1]]
        assert len(runs[0]) > 3

    def test_at_most_k_and_budget_respected(self, spec: StudySpec, make_policy: PolicyFactory) -> None:
        spec = with_budget(spec, total_steps=120)
        sim = Simulator(make_policy(spec), extra_metrics=self.extra_metrics)
        for k in (1, 2, 5):
            new = sim.policy.suggest(sim.trials, k)
            assert len(new) <= k
            for s in new:
                sim.finish(sim.create(s))
        trials = sim.run(k=4)
        assert sum(t.steps for t in trials) <= 120
        assert make_policy(spec).suggest(trials, 10) == []  # budget spent: nothing more

    def test_values_stay_in_the_space_and_parents_are_usable(
        self, spec: StudySpec, make_policy: PolicyFactory
    ) -> None:
        sim = Simulator(make_policy(with_budget(spec, total_steps=200)), fail={2, 7, 11},
                        extra_metrics=self.extra_metrics)
        trials = sim.run(k=3)
        by_id = {t.id: t for t in trials}
        space = sim.policy.space
        for t in trials:
            assert all(space[n].contains(v) for n, v in t.params.items())
            if t.parent is not None:
                assert by_id[t.parent].usable, f"{t.id} copied from unusable {t.parent}"

    def test_max_trials_budget(self, spec: StudySpec, make_policy: PolicyFactory) -> None:
        spec = with_budget(spec, total_steps=10_000, max_trials=5)
        assert len(Simulator(make_policy(spec), extra_metrics=self.extra_metrics).run(k=2)) == 5


# --- the properties -----------------------------------------------------------------------------------


def check_at_most_k(history: History, make_policy: PolicyFactory) -> None:
    for call in history.calls:
        assert len(call.suggestions) <= call.k, f"call {call.index}: {len(call.suggestions)} suggestions for k={call.k}"


def check_values_in_the_space(history: History, make_policy: PolicyFactory) -> None:
    space = history.spec.parameters
    for call in history.calls:
        for s in call.suggestions:
            assert set(s.params) == set(space), f"call {call.index}: parameters {sorted(s.params)}"
            for name, value in s.params.items():
                check_value(space[name], value)


def check_parents_are_usable(history: History, make_policy: PolicyFactory) -> None:
    for call in history.calls:
        by_id = {t.id: t for t in call.seen}
        for s in call.suggestions:
            if s.parent is None:
                continue
            parent = by_id.get(s.parent)
            assert parent is not None, f"call {call.index}: parent {s.parent!r} is not a trial of the study"
            assert parent.usable, f"call {call.index}: parent {parent.id} is {parent.status.value}, " \
                                  f"objective {parent.objective}"
            assert parent.checkpoint and not parent.checkpoint_deleted, \
                f"call {call.index}: parent {parent.id}'s checkpoint was garbage-collected"


def check_immutable_parameters_are_inherited(history: History, make_policy: PolicyFactory) -> None:
    """A warm-started trial keeps its parent's value of every ``mutable: false`` parameter
    (an architecture choice the parent's weights were trained for)."""
    fixed = [name for name, p in history.spec.parameters.items() if not p.mutable]
    for call in history.calls:
        by_id = {t.id: t for t in call.seen}
        for s in call.suggestions:
            parent = by_id.get(s.parent) if s.parent else None
            if parent is None:
                continue
            for name in fixed:
                assert s.params[name] == parent.params[name], (
                    f"call {call.index}: {name} went from {parent.params[name]!r} ({parent.id}) to {s.params[name]!r}"
                )


def check_parents_were_kept(history: History, make_policy: PolicyFactory) -> None:
    """GC safety: the collector kept a parent's checkpoint at every pass since it became usable."""
    for call in history.calls:
        for s in call.suggestions:
            if s.parent is None:
                continue
            for point in history.gc_points[: call.index]:
                if s.parent in point.usable:
                    assert s.parent in point.kept, (
                        f"call {call.index} copies {s.parent}, which the collector could have deleted after call "
                        f"{point.after_call}: neither a parent candidate, in flight, the best, nor an ancestor of one"
                    )


def check_parents_were_candidates(history: History, make_policy: PolicyFactory) -> None:
    """The policy's own promise: a parent was one of its parent_candidates at every collection
    since it became usable, without help from the collector's other roots (the best, in flight)."""
    for call in history.calls:
        for s in call.suggestions:
            if s.parent is None:
                continue
            for point in history.gc_points[: call.index]:
                if s.parent in point.usable:
                    assert s.parent in point.candidates, (
                        f"call {call.index} copies {s.parent}, which parent_candidates left out after call "
                        f"{point.after_call}"
                    )


def check_budget(history: History, make_policy: PolicyFactory) -> None:
    budget = history.spec.budget
    for call in history.calls:
        if budget.total_steps is not None:
            spent = sum(committed(t) for t in call.seen)
            promised = sum(s.steps for s in call.suggestions)
            assert spent + promised <= budget.total_steps or not call.suggestions, (
                f"call {call.index}: {spent} steps committed + {promised} suggested > {budget.total_steps}"
            )
        if budget.max_trials is not None:
            assert len(call.seen) + len(call.suggestions) <= budget.max_trials or not call.suggestions


def check_early_stop_running(history: History, make_policy: PolicyFactory) -> None:
    for call in history.calls:
        running = {t.id for t in call.seen if t.status is TrialStatus.RUNNING}
        named = {d.trial_id for d in call.stopped}
        assert named <= running, f"call {call.index}: early_stop named {named - running}, which are not running"


def check_deterministic(history: History, make_policy: PolicyFactory) -> None:
    """A policy rebuilt from the spec and asked again, in reverse order, answers the same."""
    fresh = make_policy(history.spec)
    for call in reversed(history.calls):
        seen = [Trial.model_validate_json(j) for j in call.seen_json]
        again = fresh.suggest(seen, call.k)
        assert [s.model_dump_json() for s in again] == [s.model_dump_json() for s in call.suggestions], (
            f"call {call.index}: another answer to the same question"
        )
        assert as_decisions(fresh.early_stop(seen)) == call.stopped
        assert fresh.parent_candidates(seen) == call.candidates


def check_not_mutated(history: History, make_policy: PolicyFactory) -> None:
    for call in history.calls:
        assert [t.model_dump_json() for t in call.seen] == call.seen_json, (
            f"call {call.index}: the policy changed the trial list it was given"
        )
