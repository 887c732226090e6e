"""What a report shows, computed from trial records alone: no plotting, no I/O.

Kept apart from the figures so that the numbers behind every plot can be tested (and written
to ``report.json`` for scripts) without looking at pixels, and so that a running study — with
pending trials, partial metrics and no final objective — goes through the same code as a
finished one.

Vocabulary: a trial's *root* is the generation-0 trial its lineage starts from; colouring by
root shows which initial member's weights survived. An *exploit* is a trial that began by
copying another member's checkpoint (``metadata.exploit``); a trial whose parent is its own
member's previous trial merely continued. A trial *stopped early* by the policy
(``metadata.stop_step``, ``metadata.stop_reason``) ends, in the report as for the policy, at the
evaluation that stopped it: the few steps its worker trained before it noticed are left out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from pbt.analysis.budget import BudgetUse
from pbt.analysis.status import worker_name
from pbt.lineage import best_trial, lineage, pareto_front, schedule
from pbt.space import Value
from pbt.spec import StudySpec
from pbt.study_state import ending, study_state
from pbt.trial import Timings, Trial, TrialStatus

PHASES: tuple[str, ...] = tuple(Timings.model_fields)
TOP_TRIALS = 20


@dataclass(frozen=True)
class FrontPoint:
    """A usable trial's value of every objective, and whether no other usable trial dominates it."""

    trial: str
    values: list[float]
    on_front: bool


@dataclass(frozen=True)
class Series:
    """One trial's objective against lineage steps (what the objective plot draws).

    ``anchor`` is the parent's last point, so a child's line starts where its weights came
    from; an exploit therefore shows as a line from the copied member's curve.
    """

    trial: str
    member: int | None
    root: str
    status: str
    exploit: bool
    steps: list[int]
    values: list[float]
    anchor: tuple[int, float] | None = None
    stopped_at: int | None = None  # lineage step of the evaluation that stopped it early


@dataclass(frozen=True)
class Exploit:
    """``trial`` (member ``member``) copied ``parent`` (member ``from_member``) at lineage step ``step``."""

    trial: str
    parent: str
    member: int | None
    from_member: int | None
    step: int
    value: float | None  # the parent's objective when it was copied


@dataclass(frozen=True)
class Segment:
    """A hyperparameter value in force from ``start`` to ``end`` lineage steps during ``trial``."""

    trial: str
    start: int
    end: int
    value: Value
    root: str
    exploit: bool = False  # the trial began by copying another member's weights


@dataclass
class ParamSchedule:
    name: str
    kind: str  # float | int | discrete | categorical
    log: bool
    categories: list[str] | None
    best: list[Segment]  # along the best lineage, in order
    population: list[Segment]  # every trial that trained at least one step


@dataclass(frozen=True)
class Node:
    """A trial in the lineage tree: a bar on ``row`` (its member) from ``start`` to ``end``."""

    trial: str
    row: int
    start: int
    end: int
    status: str
    root: str
    exploit: bool
    on_best: bool
    stop_reason: str | None = None  # stopped early by the policy: why (the bar ends at the stop)


@dataclass(frozen=True)
class Edge:
    """``parent`` → ``child``: the child warm-started from the parent's final checkpoint."""

    parent: str
    child: str
    exploit: bool


@dataclass(frozen=True)
class TrialTimes:
    trial: str
    number: int
    seconds: dict[str, float]


@dataclass(frozen=True)
class TopRow:
    rank: int
    trial: str
    objective: float
    member: int | None
    generation: int
    lineage_steps: int
    parent: str | None
    params: dict[str, Value]


@dataclass(frozen=True)
class RootFate:
    """A generation-0 trial and what became of its lineage: still among the latest trials of the
    population (``survives``), or last trained up to lineage step ``last_step``."""

    root: str
    survives: bool
    last_step: int
    trials: int  # trials descending from it, itself included


@dataclass(frozen=True)
class TimeUse:
    """The numbers that explain the time breakdown (see :func:`time_use`)."""

    workers: int  # distinct workers seen in the records (0: none recorded)
    parallelism: int  # execution.parallelism: trials in flight at once
    wall_seconds: float  # from the first trial's creation to the last one's end
    worker_seconds: float  # every phase but the queue wait, over all trials
    queue_seconds: float
    trials: int

    @property
    def queue_share(self) -> float:
        total = self.worker_seconds + self.queue_seconds
        return self.queue_seconds / total if total > 0 else 0.0

    @property
    def busy(self) -> float | None:
        """Share of the workers' wall time spent in a trial's phases (None when unknown)."""
        if not self.workers or self.wall_seconds <= 0:
            return None
        return min(1.0, self.worker_seconds / (self.workers * self.wall_seconds))

    def explain(self) -> list[str]:
        """Why the queue wait is what it is, in sentences for the report (empty without trials)."""
        if not self.trials:
            return []
        share = 100 * self.queue_share
        out = [f"Queue wait is the time from a trial's publication to a worker starting it, summed over "
               f"trials: {share:.2g}% of the time recorded here. It is time trials waited, not time workers lost."]
        why = []
        if self.workers and self.parallelism > self.workers:
            why.append(f"up to {self.parallelism} trials are in flight (execution.parallelism) for "
                       f"{self.workers} worker{'s' if self.workers != 1 else ''}, so a published trial "
                       "usually waits for a worker to finish another one first")
        work = self.worker_seconds / self.trials
        if work < 1.0:
            why.append(f"each trial's work is short ({work:.2g} s on average), so even the fixed delay of "
                       "handing a trial to a worker and its result back outweighs it; trials of more steps "
                       "make that delay small")
        if why:
            out.append("Here " + "; and ".join(why) + ".")
        if self.busy is not None:
            lead = "What does cost time is idle workers: the" if share >= 20 else "The"
            out.append(f"{lead} {self.workers} worker"
                       f"{'s' if self.workers != 1 else ''} spent {100 * self.busy:.0f}% of the study's "
                       f"{self.wall_seconds:.3g} s loading, training, evaluating and saving; the rest of the "
                       "time they were between trials: handing them over, or waiting for the controller's next "
                       "decision.")
        return out


@dataclass(frozen=True)
class ScheduleRun:
    """Consecutive segments of the best lineage with identical hyperparameters, merged for reading."""

    start: int
    end: int
    first_trial: str
    last_trial: str
    trials: int
    exploit: bool  # the run began with an exploit
    params: dict[str, Value]


@dataclass
class ReportData:
    study: str
    algorithm: str
    metric: str
    mode: str
    state: str  # StudyState.summary: finished | paused | in progress
    ended: str | None  # how the last run ended ("failed: ..."), once it has
    generated_at: float
    parameters: list[str]
    counts: dict[str, int]
    steps_done: int
    budget_steps: int | None
    budget_trials: int | None
    best: str | None
    best_objective: float | None
    best_lineage: list[str]
    roots: dict[str, str]  # trial id -> root trial id
    series: list[Series]
    exploits: list[Exploit]
    schedules: list[ParamSchedule]
    best_runs: list[ScheduleRun]
    nodes: list[Node]
    edges: list[Edge]
    row_label: str  # what a tree row is: "member" or "trial"
    times: list[TrialTimes]
    time_totals: dict[str, float]
    top: list[TopRow]
    storage: str | None = None  # where the records were read (for the commands the page suggests)
    notes: list[str] = field(default_factory=list)
    root_fates: list[RootFate] = field(default_factory=list)  # every lineage root, survivors first
    time_use: TimeUse | None = None  # what the time breakdown means for this study
    objectives: list[tuple[str, str]] = field(default_factory=list)  # (metric, mode), the primary first
    points: list[FrontPoint] = field(default_factory=list)  # usable trials' objectives (several objectives)

    @property
    def front(self) -> list[FrontPoint]:
        """The Pareto front, best primary objective first (empty with one objective)."""
        return [p for p in self.points if p.on_front]

    @property
    def trials(self) -> int:
        return sum(self.counts.values())

    @property
    def budget(self) -> BudgetUse:
        return BudgetUse(self.steps_done, self.counts.get("completed", 0), self.budget_steps, self.budget_trials)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON-able data; non-finite objectives were dropped when the series were built."""
        return asdict(self)


def prepare(
    spec: StudySpec, trials: Sequence[Trial], state: dict[str, Any] | None = None, storage: str | None = None
) -> ReportData:
    """Everything the report draws, from ``spec`` and the records (any subset of a running study)."""
    trials = sorted(trials, key=lambda t: t.number)
    by_id = {t.id: t for t in trials}
    metric = spec.objective.metric
    roots = _roots(trials, by_id)
    best = best_trial(trials, spec.objective)
    best_chain = lineage(trials, best) if best else []
    on_best = {t.id for t in best_chain}

    series = []
    exploits = []
    last_point: dict[str, tuple[int, float]] = {}
    for t in trials:
        steps, values = _points(t, metric)
        stop = stopped_at(t)
        if stop is not None:  # what the policy judged: up to the evaluation that stopped it
            keep = sum(1 for x in steps if x <= stop)
            steps, values = steps[:keep], values[:keep]
        if steps:
            last_point[t.id] = (steps[-1], values[-1])
        parent = by_id.get(t.parent) if t.parent else None
        anchor = last_point.get(parent.id) if parent else None
        exploit = bool(t.metadata.get("exploit"))
        series.append(Series(t.id, t.member, roots[t.id], t.status.value, exploit, steps, values, anchor, stop))
        if exploit and parent is not None:
            exploits.append(
                Exploit(t.id, parent.id, t.member, parent.member, t.start_lineage_steps, anchor[1] if anchor else None)
            )

    member_rows = all(t.member is not None for t in trials)
    nodes = [
        Node(
            t.id,
            t.member if member_rows else t.number,  # type: ignore[arg-type]
            t.start_lineage_steps,
            stop if (stop := stopped_at(t)) is not None else t.lineage_steps,
            t.status.value,
            roots[t.id],
            bool(t.metadata.get("exploit")),
            t.id in on_best,
            t.metadata.get("stop_reason") if stop is not None else None,
        )
        for t in trials
    ]
    edges = [Edge(t.parent, t.id, bool(t.metadata.get("exploit"))) for t in trials if t.parent is not None]

    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    times = [TrialTimes(t.id, t.number, t.timings.model_dump()) for t in trials]
    totals = {p: sum(x.seconds[p] for x in times) for p in PHASES}

    notes = []
    running = sum(1 for t in trials if not t.status.terminal)
    if running:
        notes.append(f"{running} trial(s) still pending or running: their curves and bars are partial.")
    if not member_rows and trials:
        notes.append("trials have no population member (not a PBT study): tree rows are trial numbers.")
    early = [t for t in trials if stopped_at(t) is not None]
    if early:
        trained = sum(int(t.metadata["stop_step"]) for t in early)
        given = sum(t.steps for t in early)
        notes.append(f"{len(early)} trial(s) were stopped early by the policy (marked ✕): they were charged "
                     f"{trained} of the {given} steps they were given, {given - trained} steps saved.")

    return ReportData(
        root_fates=_root_fates(trials, roots, nodes),
        time_use=time_use(spec, trials),
        study=spec.name,
        algorithm=spec.algorithm.name,
        metric=metric,
        mode=spec.objective.mode,
        state=study_state(running, state).summary,
        ended=None if running or (end := ending(state)) is None else end.summary(),
        generated_at=time.time(),
        parameters=list(spec.parameters),
        counts=dict(sorted(counts.items())),
        steps_done=sum(t.steps_done for t in trials),
        budget_steps=spec.budget.total_steps,
        budget_trials=spec.budget.max_trials,
        best=best.id if best else None,
        best_objective=best.objective if best else None,
        best_lineage=[t.id for t in best_chain],
        roots=roots,
        series=series,
        exploits=exploits,
        schedules=_schedules(spec, trials, best_chain, roots),
        best_runs=_runs(best_chain),
        nodes=nodes,
        edges=edges,
        row_label="member" if member_rows else "trial",
        times=times,
        time_totals=totals,
        top=_top(spec, trials),
        storage=storage,
        notes=notes,
        objectives=[(o.metric, o.mode) for o in spec.objectives],
        points=_front_points(spec, trials),
    )


def _front_points(spec: StudySpec, trials: Sequence[Trial]) -> list[FrontPoint]:
    """With several objectives, every usable trial's point; the front first, best primary first."""
    if len(spec.objectives) < 2:
        return []
    front = {t.id for t in pareto_front(trials, spec.objectives)}
    points = []
    for t in trials:
        if t.usable:
            last = t.metrics[-1].values if t.metrics else {}
            values = [t.objective if i == 0 else last.get(o.metric, math.nan) for i, o in enumerate(spec.objectives)]
            points.append(FrontPoint(t.id, [float(v) for v in values], t.id in front))
    sign = spec.objective.sign()
    return sorted(points, key=lambda p: (not p.on_front, -sign * p.values[0], p.trial))


def time_use(spec: StudySpec, trials: Sequence[Trial]) -> TimeUse:
    """Workers seen, wall time and worker time of a study, to read its time breakdown by."""
    workers = {worker_name(t.worker) for t in trials if t.worker}
    starts = [t.created_at for t in trials if t.created_at]
    ends = [t.finished_at for t in trials if t.finished_at]
    wall = max(ends) - min(starts) if starts and ends else 0.0
    queue = sum(t.timings.queue_wait for t in trials)
    work = sum(getattr(t.timings, p) for t in trials for p in PHASES if p != "queue_wait")
    return TimeUse(len(workers), spec.execution.parallelism, max(0.0, wall), work, queue, len(trials))


def _root_fates(trials: Sequence[Trial], roots: dict[str, str], nodes: Sequence[Node]) -> list[RootFate]:
    """Every root with its fate: survivors first, then the others by how far they got."""
    latest: dict[object, str] = {}
    for node in nodes:  # the latest trial on each row (member) of the tree
        latest[node.row] = node.trial
    surviving = {roots[t] for t in latest.values()}
    last: dict[str, int] = {}
    count: dict[str, int] = {}
    for t in trials:
        r = roots[t.id]
        last[r] = max(last.get(r, 0), t.lineage_steps)
        count[r] = count.get(r, 0) + 1
    fates = [RootFate(r, r in surviving, last[r], count[r]) for r in dict.fromkeys(roots[t.id] for t in trials)]
    return sorted(fates, key=lambda f: (not f.survives, -f.last_step))


def stopped_at(trial: Trial) -> int | None:
    """The lineage step at which the policy stopped ``trial`` early; None if it did not."""
    step = trial.metadata.get("stop_step")
    if trial.status is not TrialStatus.STOPPED or step is None:
        return None
    return trial.start_lineage_steps + int(step)


def _roots(trials: Sequence[Trial], by_id: dict[str, Trial]) -> dict[str, str]:
    """Root of every trial in one pass: a parent is always created (numbered) before its child."""
    roots: dict[str, str] = {}
    for t in trials:
        if t.parent is None or t.parent not in by_id:
            roots[t.id] = t.id
        else:
            roots[t.id] = roots.get(t.parent, t.parent)
    return roots


def _points(t: Trial, metric: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for m in t.metrics:
        v = m.values.get(metric)
        if v is not None and math.isfinite(v) and (not steps or m.lineage_step > steps[-1]):
            steps.append(m.lineage_step)
            values.append(float(v))
    return steps, values


def _schedules(
    spec: StudySpec, trials: Sequence[Trial], chain: Sequence[Trial], roots: dict[str, str]
) -> list[ParamSchedule]:
    out = []
    segments = schedule(chain)
    for name, p in spec.parameters.items():
        kind = p.type
        out.append(
            ParamSchedule(
                name=name,
                kind=kind,
                log=getattr(p, "scale", "linear") == "log",
                categories=list(p.values) if kind == "categorical" else None,  # type: ignore[union-attr]
                best=[Segment(s.trial, s.start, s.end, s.params[name], roots[s.trial], s.exploit) for s in segments],
                population=[
                    Segment(t.id, t.start_lineage_steps, t.lineage_steps, t.params[name], roots[t.id])
                    for t in trials
                    if t.steps_done > 0 and name in t.params
                ],
            )
        )
    return out


def _runs(chain: Sequence[Trial]) -> list[ScheduleRun]:
    runs: list[ScheduleRun] = []
    for seg in schedule(chain):
        last = runs[-1] if runs else None
        if last is not None and last.params == seg.params and not seg.exploit:
            runs[-1] = ScheduleRun(last.start, seg.end, last.first_trial, seg.trial, last.trials + 1, last.exploit,
                                   last.params)
        else:
            runs.append(ScheduleRun(seg.start, seg.end, seg.trial, seg.trial, 1, seg.exploit, dict(seg.params)))
    return runs


def _top(spec: StudySpec, trials: Sequence[Trial], n: int = TOP_TRIALS) -> list[TopRow]:
    usable = [t for t in trials if t.usable]
    sign = spec.objective.sign()
    usable.sort(key=lambda t: (-sign * t.objective, t.number))  # type: ignore[operator]
    return [
        TopRow(i + 1, t.id, t.objective, t.member, t.generation, t.lineage_steps, t.parent, dict(t.params))  # type: ignore[arg-type]
        for i, t in enumerate(usable[:n])
    ]

