"""Random search: the reference policy, and the paper's first baseline.

Each trial draws its hyperparameters from the prior and trains from scratch for its share of
the budget (``total_steps / num_trials``), as the paper's baselines do. With
``median_stopping`` it also answers ``early_stop`` the way Vizier's default automated stopping
does: a running trial whose latest intermediate objective is worse than the median of the
other trials' objectives at the same step is stopped.

Read this file first if you are writing a policy: it is the whole interface, used plainly.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import Field

from pbt.controller.policy import EarlyStopDecision, FromScratch, Options
from pbt.space import sample_params
from pbt.trial import Suggestion, Trial, TrialStatus


class RandomOptions(Options):
    num_trials: int | None = Field(default=None, gt=0, description="default: budget.max_trials")
    steps_per_trial: int | None = Field(default=None, gt=0, description="default: total_steps / num_trials")
    median_stopping: bool = False
    min_completed_for_stopping: int = Field(default=3, ge=1)


class RandomSearch(FromScratch):
    Options = RandomOptions
    options: RandomOptions

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.num_trials = self.resolve_num_trials(self.options.num_trials)
        self.steps_per_trial = self.share_steps(self.num_trials, self.options.steps_per_trial)

    def suggest(self, trials: Sequence[Trial], k: int) -> list[Suggestion]:
        rng = self.rng(trials)
        out: list[Suggestion] = []
        while len(out) < k and len(trials) + len(out) < self.num_trials:
            if not self.room_for(trials, out, self.steps_per_trial):
                break
            out.append(Suggestion(params=sample_params(self.space, rng), steps=self.steps_per_trial))
        return out

    def early_stop(self, trials: Sequence[Trial]) -> list[EarlyStopDecision]:
        if not self.options.median_stopping:
            return []
        finished = [t for t in trials if t.usable]
        if len(finished) < self.options.min_completed_for_stopping:
            return []
        stop = []
        for trial in trials:
            if trial.status is not TrialStatus.RUNNING or not trial.metrics:
                continue
            latest = trial.metrics[-1]
            value = latest.values.get(self.objective.metric)
            peers = [_value_at(t, latest.step, self.objective.metric) for t in finished]
            peers = [v for v in peers if v is not None]
            if value is None or len(peers) < self.options.min_completed_for_stopping:
                continue
            median = statistics.median(peers)
            if self.objective.better(median, value):
                reason = (f"{self.objective.metric} {value:.6g} at step {latest.step} is worse than the median "
                          f"{median:.6g} of {len(peers)} completed trials at that step")
                stop.append(EarlyStopDecision(trial.id, reason))
        return stop


def _value_at(trial: Trial, step: int, metric: str) -> float | None:
    """The trial's metric at the last evaluation at or before ``step``."""
    value = None
    for report in trial.metrics:
        if report.step > step:
            break
        value = report.values.get(metric, value)
    return value
