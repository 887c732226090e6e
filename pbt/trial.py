"""Value types that cross process boundaries: trial records, tasks, results, progress.

All are pydantic models so they serialise to JSON (the only format workers accept) and are
validated on the way in: a worker never trusts a message it did not parse.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pbt.space import Value


class TrialStatus(str, Enum):
    PENDING = "pending"  # created and published, not yet picked up
    RUNNING = "running"  # a worker reported progress
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"  # early-stopped by the policy

    @property
    def terminal(self) -> bool:
        return self in (TrialStatus.COMPLETED, TrialStatus.FAILED, TrialStatus.STOPPED)


class FailureScope(str, Enum):
    """Who a failed attempt's error belongs to (DESIGN.md, "Failure policy")."""

    TRIAL = "trial"  # this trial: retried up to execution.max_attempts, never a parent
    STUDY = "study"  # the same for every trial (trainer and study disagree): the study ends
    WORKER = "worker"  # the worker's environment (memory, storage, credentials, GPU): not the trial's fault


class _Model(BaseModel):
    # NaN and inf are information (a diverged trial), not null: keep them through JSON.
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="constants")


class MetricReport(_Model):
    """Metrics from one evaluation; ``step`` counts this trial's steps, ``lineage_step`` all of them."""

    step: int
    lineage_step: int
    values: dict[str, float]


class Timings(_Model):
    """Seconds per phase of a trial (the paper's Figure 8 breakdown), summed over attempts."""

    queue_wait: float = 0.0
    checkpoint_load: float = 0.0
    train: float = 0.0
    evaluate: float = 0.0
    checkpoint_save: float = 0.0

    def add(self, other: Timings) -> Timings:
        return Timings(**{k: getattr(self, k) + getattr(other, k) for k in Timings.model_fields})


class Suggestion(_Model):
    """What a policy asks for: train ``params`` for ``steps``, warm-started from ``parent``."""

    params: dict[str, Value]
    steps: int = Field(gt=0)
    parent: str | None = None  # trial id whose final checkpoint to start from
    member: int | None = None  # population slot (PBT); None for independent trials
    generation: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)


class Trial(_Model):
    """The durable record of one trial, the unit the controller reasons about."""

    id: str
    study: str
    number: int  # creation order, 0-based; also the deterministic apply order
    params: dict[str, Value]
    parent: str | None = None
    parent_checkpoint: str | None = None
    member: int | None = None
    generation: int = 0
    steps: int  # steps this trial is asked to train
    steps_done: int = 0  # steps it has trained so far
    start_lineage_steps: int = 0  # steps along the lineage before this trial (the parent's total)
    metrics: list[MetricReport] = Field(default_factory=list)
    objective: float | None = None  # the objective metric at the end (None until completed)
    status: TrialStatus = TrialStatus.PENDING
    attempts: int = 0  # times published (a lost message re-published counts here)
    failures: int = 0  # attempts that failed or whose worker went silent mid-trial
    error: str | None = None
    checkpoint: str | None = None  # key of the final checkpoint
    checkpoint_deleted: bool = False
    resumed_from_step: int | None = None
    warm_start: str | None = None  # the checkpoint actually loaded (differs from parent's on fallback)
    diverged: bool = False  # failed because its objective was not finite: bad hyperparameters, not an error
    timings: Timings = Field(default_factory=Timings)
    worker: str | None = None
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def lineage_steps(self) -> int:
        return self.start_lineage_steps + self.steps_done

    @property
    def usable(self) -> bool:
        """Completed with a finite objective: the only trials a policy may copy from."""
        return self.status is TrialStatus.COMPLETED and self.objective is not None and math.isfinite(self.objective)


class TrialTask(_Model):
    """The message a worker receives: everything needed to run one attempt of one trial."""

    study: str
    trial_id: str
    number: int
    attempt: int
    params: dict[str, Value]
    steps: int
    start_lineage_steps: int = 0
    parent: str | None = None
    parent_checkpoint: str | None = None
    fallback_checkpoints: list[str] = Field(default_factory=list)  # older lineage checkpoints
    storage: str
    trainer: str
    trainer_config: dict[str, Any] = Field(default_factory=dict)
    objective_metric: str
    # Metrics besides the objective every evaluation must report and keep finite: the study's
    # other objectives and what the policy's fitness weighs (Policy.required_metrics).
    further_objective_metrics: list[str] = Field(default_factory=list)
    seed: int
    checkpoint_every: int | None = None
    evaluate_every_checkpoint: bool = True
    published_at: float = 0.0
    heartbeat_seconds: float = 2.0  # distributed workers refresh their liveness key this often
    lease_seconds: float = 8.0  # ... with this TTL
    # Which run of the study published it (a study deleted and started again under its name is
    # another run): results and progress carry it back, so the controller refuses an earlier run's.
    study_uid: str | None = None


class TrialResult(_Model):
    """What a worker reports when an attempt ends, however it ends."""

    study: str
    trial_id: str
    attempt: int
    status: TrialStatus  # COMPLETED, FAILED or STOPPED
    steps_done: int = 0
    metrics: list[MetricReport] = Field(default_factory=list)
    objective: float | None = None
    checkpoint: str | None = None
    resumed_from_step: int | None = None
    warm_start: str | None = None
    error: str | None = None
    retryable: bool = False  # a failure that another attempt may not repeat
    scope: FailureScope = FailureScope.TRIAL  # whose fault a failure is
    diverged: bool = False  # the objective was not finite at an evaluation (a failure, not an error)
    recycle: bool = False  # the process that ran it is unfit (out of memory, CUDA error): replace it
    timings: Timings = Field(default_factory=Timings)
    worker: str | None = None
    finished_at: float = 0.0
    study_uid: str | None = None  # the task's, echoed by distributed workers


class Progress(_Model):
    """A heartbeat: the attempt is alive, at ``step``, with optional intermediate metrics."""

    study: str
    trial_id: str
    attempt: int
    step: int
    metrics: MetricReport | None = None
    worker: str | None = None
    at: float = 0.0
    study_uid: str | None = None  # the task's, echoed by distributed workers


def trial_seed(seed: int, number: int) -> int:
    """A per-trial seed that does not collide across trials of one study."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])
