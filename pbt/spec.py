"""The study file's models: everything a controller needs to run a study, as validated data.

Unknown fields are refused and every bound is checked by the models themselves. Reading a file,
formatting errors by field path, validating the algorithm's options against the policy that
will use them and resolving the trainer's import path happen one level up, in
:mod:`pbt.study_file`, so that this module depends on neither the policies nor the trainers
(both of which read a :class:`StudySpec`).
"""

from __future__ import annotations

import json
import keyword
import math
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from pbt.errors import SpecError
from pbt.importing import import_path
from pbt.names import validate_name
from pbt.space import SearchSpace
from pbt.urls import redact_secrets, redact_url

# Pydantic names the member of a tagged union it tried ("parameters.h0.float.low"): drop the tag.
_UNION_TAGS = {"float", "int", "discrete", "categorical"}
_TYPE_NAMES = "float, int, discrete, categorical"
#: What a broker URL may start with: the schemes Celery's Redis transport serves.
BROKER_SCHEMES = ("redis://", "rediss://", "redis+socket://")


def format_errors(exc: ValidationError, prefix: str = "") -> str:
    """One indented line per error: ``  <prefix><dotted.field.path>: <reason>``."""
    lines = []
    for err in exc.errors():
        parts = list(err["loc"])
        if parts[:1] == ["further_objectives"] and len(parts) > 1 and isinstance(parts[1], int):
            parts = ["objective", parts[1] + 1, *parts[2:]]  # the list the user wrote, not our split of it
        loc = ".".join(str(p) for p in parts if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            msg = f"unknown type; expected one of {_TYPE_NAMES}"
        lines.append(f"  {prefix}{loc}: {msg}" if loc else f"  {prefix}{msg}")
    return "\n".join(lines)


class _Model(BaseModel):
    # Strict: a study file says what it means. No bool for a number, no "4" for 4, no 2.0 for an int
    # (a silent cast hides a typo), and no infinite or NaN bound.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        """Built from Python (``pbt.StudySpec(...)``): a bad field raises SpecError, as in a study file."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise SpecError(f"{type(self).__name__} is invalid:\n{format_errors(exc)}") from None

    # Validation (a study file, a nested mapping) never calls __init__, as for pydantic's own: only a
    # person constructing a model in Python reaches the translation above (pydantic-settings does the same).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


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


#: ``trainer.config`` travels in every trial message: plain JSON, at most this many bytes.
MAX_TRAINER_CONFIG_BYTES = 1 << 20


class TrainerSpec(_Model):
    path: str = Field(description="import path, 'package.module:ClassName' (or ':function')")
    config: dict[str, Any] = Field(default_factory=dict)

    @field_validator("path", mode="before")
    @classmethod
    def _object_to_path(cls, v: Any) -> Any:
        """A class or function given from Python becomes its import path (:mod:`pbt.importing`)."""
        return v if isinstance(v, str) or not callable(v) else import_path(v)

    @field_validator("config")
    @classmethod
    def _plain_json(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(v, allow_nan=False, default=str))  # a date or a path travels as text
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"must be plain JSON data (strings, finite numbers, booleans, null, lists, mappings): {exc}"
            ) from None
        if size > MAX_TRAINER_CONFIG_BYTES:
            raise ValueError(f"is {size:,} bytes as JSON; at most {MAX_TRAINER_CONFIG_BYTES:,} (it travels with "
                             "every trial): put large data in a file the trainer reads")
        return v


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
    max_worker_failures: int | None = Field(
        default=None, ge=1,
        description="end the study after this many attempts in a row failed because of the workers' "
                    "environment (out of memory, storage or GPU unusable), none succeeding since "
                    "(default: max(10, 2 x parallelism))",
    )
    lease_seconds: float | None = Field(
        default=None, gt=0, le=7 * 24 * 3600,
        description="re-publish a trial whose worker went silent this long (default: 4 heartbeats)",
    )
    heartbeat_seconds: float = Field(default=2.0, ge=0.1, le=3600)
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

    @model_validator(mode="after")
    def _lease_outlasts_heartbeats(self) -> Execution:
        if self.lease_seconds is not None and self.lease_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(f"lease_seconds ({self.lease_seconds:g}) must be at least two heartbeats "
                             f"(2 x heartbeat_seconds = {2 * self.heartbeat_seconds:g})")
        return self

    @property
    def lease(self) -> float:
        """Seconds of silence after which a trial's worker counts as gone (``lease_seconds``)."""
        return self.lease_seconds or 4 * self.heartbeat_seconds

    @property
    def worker_failure_limit(self) -> int:
        """Worker-scoped failures in a row that end the study (``max_worker_failures``)."""
        return self.max_worker_failures or max(10, 2 * self.parallelism)

    @property
    def initial_failure_limit(self) -> int:
        """Trials failed with an error, before any completed, that end the study (``max_initial_failures``)."""
        return self.max_initial_failures or max(5, 2 * self.parallelism)


class StudySpec(_Model):
    """A whole study, as a study file holds it; build it from Python as ``pbt.StudySpec(...)``.

    Fields (defaults in brackets): ``name`` (letters, digits, ``. _ -``; records live under
    ``STORAGE/NAME/``), ``objective`` (``{"metric": str, "mode": "min" | "max"}``),
    ``parameters`` (``{name: {"type": "float" | "int", "low", "high"[, "scale": "log"]}`` or
    ``{"type": "discrete", "values": [numbers]}`` or ``{"type": "categorical", "values":
    [strings]}``), ``algorithm`` [``{"name": "pbt", "options": {}}``], ``budget``
    (``total_steps`` and/or ``max_trials``), ``trainer`` (``{"path": "pkg.mod:Name", "config":
    {...}}``, or the class or function itself), ``execution`` [parallelism 4, ...], ``storage``
    [``"runs"``], ``broker`` [None: embedded workers], ``seed`` [0]. Nested parts may be given as
    dicts or as the models of this module; the README's configuration reference lists every
    field. A bad field raises :class:`~pbt.errors.SpecError` naming it and the reason.
    """

    name: str
    objective: Objective
    further_objectives: list[Objective] = Field(default_factory=list, exclude=True)
    parameters: SearchSpace = Field(min_length=1)
    algorithm: Algorithm = Field(default_factory=Algorithm)
    budget: Budget
    trainer: TrainerSpec
    execution: Execution = Field(default_factory=Execution)
    storage: str = "runs"
    broker: str | None = None
    seed: int = Field(default=0, ge=0, le=2**63 - 1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_name(v, "study name")

    @field_validator("broker")
    @classmethod
    def _broker(cls, v: str | None) -> str | None:
        """A Redis URL, or nothing: anything else would only fail later, as a traceback."""
        if not v:
            return v  # "" (an empty --broker or PBT_BROKER_URL): embedded workers, as unset
        shown = redact_secrets(v)  # not redact_url: it parses the URL, which may be what is wrong
        if not v.startswith(BROKER_SCHEMES):
            raise ValueError(f"{shown!r} is not a Redis URL (redis://[:password@]host:port/db or rediss://)")
        try:
            _ = urlsplit(v).port
        except ValueError:
            raise ValueError(f"{shown!r}: the port is not a number from 0 to 65535") from None
        return v

    @model_validator(mode="before")
    @classmethod
    def _several_objectives(cls, data: Any) -> Any:
        """``objective: [{...}, {...}]`` names several objectives; the first is the primary one."""
        if isinstance(data, dict) and isinstance(data.get("objective"), (list, tuple)):
            objectives = list(data["objective"])
            if not objectives:
                raise ValueError("objective: name at least one {metric, mode}")
            data = {**data, "objective": objectives[0], "further_objectives": objectives[1:]}
        return data

    @model_validator(mode="after")
    def _distinct_objectives(self) -> StudySpec:
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objective: each metric may appear once, got {metrics}")
        return self

    @model_serializer(mode="wrap")
    def _join_objectives(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if self.further_objectives:
            data["objective"] = [data["objective"], *(o.model_dump() for o in self.further_objectives)]
        return data

    @property
    def objectives(self) -> list[Objective]:
        """Every objective, the primary one first: what a Pareto front is taken over."""
        return [self.objective, *self.further_objectives]

    @field_validator("trainer", mode="before")
    @classmethod
    def _trainer_object(cls, v: Any) -> Any:
        """``trainer=MyTrainer`` (a class or function, from Python) is ``trainer={"path": MyTrainer}``."""
        return {"path": v} if callable(v) and not isinstance(v, BaseModel) else v

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
