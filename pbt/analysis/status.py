"""A study at a glance, from its records alone: what ``pbt status`` shows and ``--watch`` refreshes.

Everything is derived from trial records, so it works from any machine that can read the
storage, whatever the executor, and even when the controller is down. Workers are known only
through the trials they ran (a trial's ``worker`` field): a worker is *busy* while one of its
trials is running and *idle* if it finished a trial recently and runs none now. A worker that
has quit looks idle until the window passes; Flower is the place for the broker's view of
workers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pbt.analysis.budget import BudgetUse
from pbt.lineage import best_trial, pareto_front
from pbt.spec import StudySpec
from pbt.study_state import Ending, StudyState, ending, study_state
from pbt.trial import Trial, TrialStatus

#: Seconds over which the progress rate (and so the ETA) is measured, and a worker counts as seen.
WINDOW = 600.0
_PID = re.compile(r"\s*\(pid \d+\)$")


def worker_name(raw: str) -> str:
    """``"pbt@gpu-3 (pid 4242)"`` → ``"pbt@gpu-3"``: a restarted pool child is the same worker."""
    return _PID.sub("", raw)


@dataclass
class Overview:
    study: str
    algorithm: str
    metric: str
    mode: str
    state: StudyState
    trials: int
    counts: dict[str, int]
    budget: BudgetUse
    best: Trial | None
    busy: dict[str, Trial] = field(default_factory=dict)  # worker -> the trial it runs
    idle: list[str] = field(default_factory=list)
    steps_per_second: float | None = None
    eta_seconds: float | None = None
    ending: Ending | None = None  # how the controller's last run ended, once it has
    objectives: list[tuple[str, str]] = field(default_factory=list)  # (metric, mode) of every objective
    front: list[Trial] = field(default_factory=list)  # the Pareto front, with several objectives

    @property
    def steps_done(self) -> int:
        return self.budget.steps_done


def overview(
    spec: StudySpec,
    trials: Sequence[Trial],
    state: dict[str, Any] | None = None,
    control: dict[str, Any] | None = None,
    now: float | None = None,
    window: float = WINDOW,
) -> Overview:
    """Summarise ``trials`` as of ``now`` (default: the current time)."""
    now = time.time() if now is None else now
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.status.value] = counts.get(t.status.value, 0) + 1
    in_flight = [t for t in trials if not t.status.terminal]
    busy = {worker_name(t.worker): t for t in in_flight if t.status is TrialStatus.RUNNING and t.worker}
    recent = {worker_name(t.worker) for t in trials if t.worker and t.finished_at and t.finished_at >= now - window}
    ov = Overview(
        study=spec.name,
        algorithm=spec.algorithm.name,
        metric=spec.objective.metric,
        mode=spec.objective.mode,
        state=study_state(len(in_flight), state, control),
        ending=None if in_flight else ending(state),
        trials=len(trials),
        counts=dict(sorted(counts.items())),
        budget=BudgetUse.of(spec.budget, trials),
        best=best_trial(trials, spec.objective),
        objectives=[(o.metric, o.mode) for o in spec.objectives],
        front=pareto_front(trials, spec.objectives) if len(spec.objectives) > 1 else [],
        busy=dict(sorted(busy.items())),
        idle=sorted(recent - set(busy)),
    )
    _rates(ov, trials, now, window)
    return ov


def _rates(ov: Overview, trials: Sequence[Trial], now: float, window: float) -> None:
    """Steps (and trials) per second over the last ``window`` seconds, and the ETA they imply.

    A trial's steps are counted when it finishes: coarse for long trials, but it needs nothing
    beyond the records and never double-counts a trial that was retried.
    """
    starts = [t.started_at or t.created_at for t in trials if (t.started_at or t.created_at)]
    if not starts:
        return
    since = max(now - window, min(starts))
    span = now - since
    done = [t for t in trials if t.status.terminal and t.finished_at and t.finished_at >= since]
    if span <= 0 or not done:
        return
    if not ov.state.active:
        return  # a rate measured up to now means nothing for a study that is not running
    steps_rate = sum(t.steps_done for t in done) / span
    trials_rate = sum(1 for t in done if t.status is TrialStatus.COMPLETED) / span
    ov.steps_per_second = steps_rate
    etas = []
    use = ov.budget
    if use.total_steps and steps_rate > 0:
        etas.append(max(0, use.total_steps - use.steps_done) / steps_rate)
    if use.max_trials and trials_rate > 0:
        etas.append(max(0, use.max_trials - use.completed) / trials_rate)
    ov.eta_seconds = min(etas) if etas else None
