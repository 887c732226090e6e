"""The study file's models: everything a controller needs to run a study, as validated data.

Unknown fields are refused and every bound is checked by the models themselves. Reading a file,
formatting errors by field path, validating the algorithm's options against the policy that
will use them and resolving the trainer's import path happen one level up, in
:mod:`pbt.study_file`, so that this module depends on neither the policies nor the trainers
(both of which read a :class:`StudySpec`).
"""

from __future__ import annotations

import keyword
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pbt.names import validate_name
from pbt.space import SearchSpace
from pbt.urls import redact_url


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objective(_Model):
    metric: str = Field(min_length=1)
    mode: Literal["min", "max"]

    def better(self, a: float, b: float) -> bool:
        """True when value ``a`` is strictly better than ``b``.

        A non-finite value (NaN, +inf, -inf) is the worst possible value in either mode: it is
        never better than anything, and every finite value is better than it.
        """
        if not math.isfinite(a):
            return False
        if not math.isfinite(b):
            return True
        return a < b if self.mode == "min" else a > b

    def sign(self) -> float:
        """Multiply a metric by this to get a fitness where larger is better."""
        return -1.0 if self.mode == "min" else 1.0


class Algorithm(_Model):
    name: str = "pbt"
    options: dict[str, Any] = Field(default_factory=dict)


class Budget(_Model):
    total_steps: int | None = Field(default=None, gt=0)
    max_trials: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_limit(self) -> Budget:
        if self.total_steps is None and self.max_trials is None:
            raise ValueError("set total_steps and/or max_trials")
        return self


class TrainerSpec(_Model):
    path: str = Field(description="import path, 'package.module:ClassName'")
    config: dict[str, Any] = Field(default_factory=dict)


class Execution(_Model):
    parallelism: int = Field(default=4, ge=1, description="trials in flight at once")
    checkpoint_every: int | None = Field(
        default=None, gt=0, description="in-trial checkpoint interval (steps); bounds work lost to a crash"
    )
    evaluate_every_checkpoint: bool = True
    trial_timeout: float | None = Field(default=None, gt=0, description="seconds before an attempt is killed")
    max_attempts: int = Field(default=3, ge=1, description="attempts per trial before it is marked failed")
    max_failed_trials: int | None = Field(
        default=None, ge=1, description="end the study once this many trials have failed (default: no limit)"
    )
    max_initial_failures: int | None = Field(
        default=None, ge=1,
        description="end the study when this many trials failed with an error before any completed "
        "(default: max(5, 2 × parallelism))",
    )
    ordering: Literal["deterministic", "arrival"] = Field(
        default="deterministic",
        description="apply results in trial order (reproducible) or as they arrive (no waiting on stragglers)",
    )
    lease_seconds: float = Field(default=120.0, gt=0, description="re-publish a trial silent for this long")
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    queue: str = "pbt.trials"
    keep_checkpoints: bool = Field(default=False, description="disable garbage collection of checkpoints")
    tensorboard: str | None = Field(
        default=None, min_length=1,
        description="a local folder: the controller writes TensorBoard events of every trial to FOLDER/NAME/ "
                    "as they come (`pbt run --tensorboard`; needs the `tensorboard` extra)",
    )

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, v: str) -> str:
        return validate_name(v, "queue name")

    @property
    def initial_failure_limit(self) -> int:
        """Trials failed with an error, before any completed, that end the study (``max_initial_failures``)."""
        return self.max_initial_failures or max(5, 2 * self.parallelism)


class StudySpec(_Model):
    name: str
    objective: Objective
    parameters: SearchSpace = Field(min_length=1)
    algorithm: Algorithm = Field(default_factory=Algorithm)
    budget: Budget
    trainer: TrainerSpec
    execution: Execution = Field(default_factory=Execution)
    storage: str = "runs"
    broker: str | None = None
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "study name")

    @field_validator("parameters")
    @classmethod
    def _param_names(cls, v: SearchSpace) -> SearchSpace:
        for name in v:
            if not name.isidentifier() or keyword.iskeyword(name):
                raise ValueError(f"parameter name {name!r} must be a Python identifier")
        return v

    def public_dict(self) -> dict[str, Any]:
        """The spec as JSON-able data, with credentials stripped from URLs."""
        data = self.model_dump(mode="json")
        if data.get("broker"):
            data["broker"] = redact_url(data["broker"])
        return data
