"""The study file: everything a controller needs to run a study, validated before anything runs.

A typo in a study file should cost seconds, not a GPU-hour: unknown fields are refused, every
bound is checked, the algorithm's options are validated by the policy that will use them, and
the trainer's import path is resolved. Errors come back as one :class:`~pbt.errors.SpecError`
listing each bad field by its dotted path and the reason.
"""

from __future__ import annotations

import keyword
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pbt.errors import SpecError
from pbt.space import SearchSpace
from pbt.storage.keys import validate_name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Objective(_Model):
    metric: str = Field(min_length=1)
    mode: Literal["min", "max"]

    def better(self, a: float, b: float) -> bool:
        """True when value ``a`` is strictly better than ``b``."""
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
    ordering: Literal["deterministic", "arrival"] = Field(
        default="deterministic",
        description="apply results in trial order (reproducible) or as they arrive (no waiting on stragglers)",
    )
    lease_seconds: float = Field(default=120.0, gt=0, description="re-publish a trial silent for this long")
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    queue: str = "pbt.trials"
    keep_checkpoints: bool = Field(default=False, description="disable garbage collection of checkpoints")

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, v: str) -> str:
        return validate_name(v, "queue name")


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


def redact_url(url: str) -> str:
    """``redis://:secret@host`` → ``redis://:***@host``: URLs are logged, passwords never."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@" if parts.password is not None else f"{user}@"
    netloc += parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _format(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in _UNION_TAGS))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "union_tag_invalid":
            msg = f"unknown type; expected one of {_TYPE_NAMES}"
        lines.append(f"  {prefix}{loc}: {msg}")
    return "\n".join(lines)


_UNION_TAGS = {"float", "int", "discrete", "categorical"}
_TYPE_NAMES = "float, int, discrete, categorical"


def parse_spec(data: Any, *, source: str = "study", check_trainer: bool = True) -> StudySpec:
    """Validate raw data (a parsed YAML mapping) into a StudySpec, or raise SpecError."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"{source} is invalid:\n{_format(exc)}") from None
    # Imported here: policies depend on the spec module, not the other way round.
    from pbt.controller.policies import validate_options

    try:
        options = validate_options(spec)
    except ValidationError as exc:
        raise SpecError(f"{source} is invalid:\n{_format(exc, 'algorithm.options.')}") from None
    except SpecError as exc:
        raise SpecError(f"{source} is invalid:\n  {exc}") from None
    spec.algorithm.options = options
    if check_trainer:
        from pbt.trainers.base import load_trainer_class

        try:
            load_trainer_class(spec.trainer.path)
        except SpecError as exc:
            raise SpecError(f"{source} is invalid:\n  {exc}") from None
    return spec


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None, check_trainer: bool = True) -> StudySpec:
    """Read a YAML study file, apply command-line overrides (``None`` means "keep"), validate."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict):
        for key, value in (overrides or {}).items():
            if value is not None:
                section, _, field = key.partition(".")
                if field:
                    data.setdefault(section, {})[field] = value
                else:
                    data[key] = value
    return parse_spec(data, source=str(path), check_trainer=check_trainer)
