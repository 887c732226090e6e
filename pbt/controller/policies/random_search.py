"""Random search: the reference policy, and the paper's first baseline.

Each trial draws its hyperparameters from the prior and trains from scratch for its share of
the budget (``total_steps / num_trials``), as the paper's baselines do. With
``median_stopping`` it also stops trials early the way Vizier's default automated stopping
does: a running trial whose latest intermediate objective is worse than the median of the
completed trials' objectives at the same step is stopped. In deterministic ordering the
completed trials are those the policy had seen when the trial was created, so the same seed
stops the same trials in every run (:meth:`~pbt.controller.policy.Policy.peers`).

Read this file first if you are writing a policy: it is the whole interface, used plainly.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from pydantic import Field

from pbt.controller.policy import NEW_STUDY_CHECKS, FromScratch, Options
from pbt.space import sample_params
from pbt.trial import Suggestion, Trial


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
        self.stops_early = self.options.median_stopping
        if not NEW_STUDY_CHECKS.get():
            return  # a stored study: read it as it was written
        if not self.stops_early and "min_completed_for_stopping" in self.options.model_fields_set:
            raise ValueError("min_completed_for_stopping applies to median_stopping, which is off: set "
                             "median_stopping: true, or remove it")
        if self.stops_early:
            every = spec.execution.checkpoint_every
            if every is None or every >= self.steps_per_trial or not spec.execution.evaluate_every_checkpoint:
                raise ValueError(
                    "median_stopping judges intermediate evaluations: set execution.checkpoint_every below "
                    f"steps_per_trial ({self.steps_per_trial}) and keep execution.evaluate_every_checkpoint on"
                )
            if self.options.min_completed_for_stopping >= self.num_trials:
                raise ValueError(
                    f"min_completed_for_stopping ({self.options.min_completed_for_stopping}) must be below "
                    f"num_trials ({self.num_trials}), or median stopping can never stop a trial"
                )

    def suggest(self, trials: Sequence[Trial], k: int) -> list[Suggestion]:
        rng = self.rng(trials)
        room = self.room(trials)
        out: list[Suggestion] = []
        while len(out) < k and len(trials) + len(out) < self.num_trials and room.take(self.steps_per_trial):
            out.append(Suggestion(params=sample_params(self.space, rng), steps=self.steps_per_trial))
        return out

    def should_stop(self, trial: Trial, trials: Sequence[Trial]) -> str | None:
        """Median stopping: worse than the median of its :meth:`peers` at the same step."""
        if not self.options.median_stopping or not trial.metrics:
            return None
        latest = trial.metrics[-1]
        value = latest.values.get(self.objective.metric)
        if value is None:
            return None
        peers = [_value_at(t, latest.step, self.objective.metric) for t in self.peers(trial, trials)]
        peers = [v for v in peers if v is not None]
        if len(peers) < self.options.min_completed_for_stopping:
            return None
        median = statistics.median(peers)
        if not self.objective.better(median, value):
            return None
        return (f"{self.objective.metric} {value:.6g} at step {latest.step} is worse than the median "
                f"{median:.6g} of {len(peers)} completed trials at that step")


def _value_at(trial: Trial, step: int, metric: str) -> float | None:
    """The trial's metric at the last evaluation at or before ``step``."""
    value = None
    for report in trial.metrics:
        if report.step > step:
            break
        value = report.values.get(metric, value)
    return value
