"""What a worker accepts from a trial message: its own configuration decides, never the message.

Anyone who can write to the broker can put a message on the trial queue. A worker therefore
checks every field of a task it is about to use (DESIGN.md, "Trust model"):

* **shape and values**: the body is Celery's ``[args, kwargs, embed]`` with exactly one keyword,
  ``task``; the task validates strictly as a :class:`~pbt.trial.TrialTask` (no string for a
  number, no NaN); the study name and trial ids pass the controller's own validators
  (:mod:`pbt.names`); the checkpoints it names belong to that study; numbers are in range.
  A message that fails here is :class:`Malformed`: it is dead-lettered and nothing runs.
* **storage**: the task's storage URI must be one the worker serves, or below one:
  ``pbt worker --storage URI[,URI...]``, else ``PBT_WORKER_STORAGE``, else ``PBT_STORAGE`` (the
  variable ``pbt run`` reads), else the folder the worker was started in (``file://`` and below,
  as the embedded default keeps its records under the folder ``pbt run`` starts in; never the
  filesystem root, where a worker configured with nothing serves nothing). Without this, a
  message could make a worker write checkpoints anywhere it can write, or load a checkpoint —
  which for most trainers means unpickling — from a bucket the sender controls.
* **trainer**: the trainer's import path must start with one of the operator's prefixes:
  pbt's own trainers (``pbt.trainers``, ``pbt.wavenet``) plus ``pbt worker --trainers
  pkg.mod,...`` (or ``PBT_WORKER_TRAINERS``). Nothing is imported before this check, since
  importing a module runs its code. ``*`` allows any trainer: only for a broker nobody else
  can write to.

A well-formed task for a storage or trainer this worker does not serve is :class:`NotServed`:
dead-lettered too, and reported to its study as a worker-scoped failure, so the controller
re-publishes it (another worker may serve it) and ends a study that no worker can serve.

Someone with broker access can therefore waste compute and end studies; they cannot run code
on a worker or make it write outside the storages it serves.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pbt.errors import PbtError
from pbt.names import validate_name, validate_trial_id
from pbt.spec import MAX_TRAINER_CONFIG_BYTES
from pbt.storage import normalize_uri
from pbt.storage.keys import checkpoint_name, checkpoint_step
from pbt.trial import TrialTask

ENV_STORAGE = "PBT_WORKER_STORAGE"
ENV_TRAINERS = "PBT_WORKER_TRAINERS"
BUILTIN_TRAINERS = ("pbt.trainers", "pbt.wavenet")

MAX_FALLBACKS = 16
MAX_STEPS = 10**12
_TRAINER_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_.]*$")
_CHECKPOINT = re.compile(r"^(?P<study>[^/]+)/checkpoints/(?P<trial>[^/]+)/step-(?P<step>[0-9]{9})$")


class Refused(PbtError):
    """A task this worker will not run; the message says why in one line."""


class Malformed(Refused):
    """The message is not a valid trial task: dead-lettered, nothing runs, nobody is told."""


class NotServed(Refused):
    """A valid task for a storage or trainer this worker does not serve: dead-lettered, and its
    study gets a worker-scoped failure so that the controller can act on it."""

    def __init__(self, reason: str, task: TrialTask) -> None:
        super().__init__(reason)
        self.task = task


def _working_directory() -> str:
    """The default storage a worker serves: its working directory, unless that is ``/``."""
    cwd = os.path.realpath(os.getcwd())
    return "" if cwd == os.path.sep else cwd


@dataclass(frozen=True)
class WorkerTrust:
    """The storages and trainers one worker serves, from its own configuration."""

    storages: tuple[str, ...] = ()  # normalised URIs; a task's storage must be one of these or below
    trainers: tuple[str, ...] = BUILTIN_TRAINERS  # import prefixes; "*" for any

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerTrust:
        env = os.environ if env is None else env
        raw = env.get(ENV_STORAGE) or env.get("PBT_STORAGE") or _working_directory()
        storages = tuple(normalize_uri(s.strip()) for s in raw.split(",") if s.strip())
        extra = tuple(t.strip() for t in env.get(ENV_TRAINERS, "").split(",") if t.strip())
        return cls(storages, BUILTIN_TRAINERS + extra)

    def describe(self) -> str:
        storages = ", ".join(self.storages) or f"none (set --storage or {ENV_STORAGE})"
        return f"storage {storages}; trainers {', '.join(self.trainers)}"

    def serves_storage(self, uri: str) -> bool:
        return any(uri == root or uri.startswith(root.rstrip("/") + "/") for root in self.storages)

    def serves_trainer(self, path: str) -> bool:
        module = path.partition(":")[0]
        for prefix in self.trainers:
            if prefix == "*":
                return True
            if ":" in prefix:
                if path == prefix:
                    return True
            elif module == prefix or module.startswith(prefix + "."):
                return True
        return False

    def check(self, task: TrialTask) -> TrialTask:
        """Raise :class:`NotServed` unless this worker serves the task's storage and trainer."""
        try:
            storage = normalize_uri(task.storage)
        except PbtError as exc:
            raise Malformed(f"storage: {exc}") from None
        if not self.serves_storage(storage):
            raise NotServed(
                f"this worker does not serve storage {storage} (it serves: "
                f"{', '.join(self.storages) or 'none'}); start it with --storage or {ENV_STORAGE}",
                task,
            )
        if not self.serves_trainer(task.trainer):
            raise NotServed(
                f"this worker does not run trainer {task.trainer!r} (allowed import prefixes: "
                f"{', '.join(self.trainers)}); start it with --trainers or {ENV_TRAINERS}",
                task,
            )
        return task.model_copy(update={"storage": storage})


_UID = re.compile(r"[0-9A-Za-z._-]{1,64}")  # TrialTask.study_uid: compared, never used as a path


def decode_task(args: Any, kwargs: Any) -> TrialTask:
    """The task in a message's arguments, checked field by field; raises :class:`Malformed`."""
    if args not in ((), []) or not isinstance(kwargs, dict) or set(kwargs) != {"task"}:
        raise Malformed(f"expected one keyword argument 'task', got args={_short(args)} kwargs={_short(kwargs)}")
    raw = kwargs["task"]
    if not isinstance(raw, dict):
        raise Malformed(f"task: expected an object, got {type(raw).__name__}")
    try:
        task = TrialTask.model_validate(raw, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Malformed(f"task.{where}: {first['msg']} ({exc.error_count()} error(s))") from None
    try:
        _check_values(task)
    except (ValueError, PbtError) as exc:
        raise Malformed(str(exc)) from None
    return task


def _check_values(task: TrialTask) -> None:
    validate_name(task.study, "study name")
    validate_trial_id(task.trial_id)
    if int(task.trial_id[1:]) != task.number:
        raise ValueError(f"trial id {task.trial_id} does not match number {task.number}")
    if task.parent is not None:
        validate_trial_id(task.parent)
    _in_range("attempt", task.attempt, 1, 10**6)
    _in_range("steps", task.steps, 1, MAX_STEPS)
    _in_range("start_lineage_steps", task.start_lineage_steps, 0, MAX_STEPS)
    _in_range("seed", task.seed, 0, 2**63 - 1)
    if task.study_uid is not None and not _UID.fullmatch(task.study_uid):
        raise ValueError(f"study_uid: {_short(task.study_uid)} is not a run id")
    if task.checkpoint_every is not None:
        _in_range("checkpoint_every", task.checkpoint_every, 1, MAX_STEPS)
    for name in ("published_at", "heartbeat_seconds", "lease_seconds"):
        if not math.isfinite(getattr(task, name)):
            raise ValueError(f"{name} is not finite")
    _in_range("heartbeat_seconds", task.heartbeat_seconds, 0.1, 3600)
    _in_range("lease_seconds", task.lease_seconds, task.heartbeat_seconds, 7 * 24 * 3600)
    if not 0 < len(task.objective_metric) <= 200:
        raise ValueError("objective_metric: 1 to 200 characters")
    if not _TRAINER_PATH.fullmatch(task.trainer):
        raise ValueError(f"trainer {task.trainer[:100]!r} is not 'package.module:ClassName'")
    if len(task.fallback_checkpoints) > MAX_FALLBACKS:
        raise ValueError(f"more than {MAX_FALLBACKS} fallback checkpoints")
    for name in [task.parent_checkpoint, *task.fallback_checkpoints]:
        if name is not None:
            _own_checkpoint(task.study, name)
    for key, value in task.params.items():
        if not key.isidentifier() or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError(f"params: {key[:50]!r} = {value!r} is not a parameter value")
    try:
        size = len(json.dumps(task.trainer_config, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"trainer_config is not plain JSON: {exc}") from None
    if size > MAX_TRAINER_CONFIG_BYTES:
        raise ValueError(f"trainer_config is {size} bytes as JSON (at most {MAX_TRAINER_CONFIG_BYTES})")


def _own_checkpoint(study: str, name: str) -> None:
    """A checkpoint the task may load must be a trial checkpoint of the task's own study."""
    match = _CHECKPOINT.fullmatch(name)
    if not match or match["study"] != study:
        raise ValueError(f"checkpoint {name[:200]!r} is not a checkpoint of study {study}")
    validate_trial_id(match["trial"])
    if checkpoint_name(study, match["trial"], checkpoint_step(name)) != name:
        raise ValueError(f"checkpoint {name[:200]!r} is not a canonical checkpoint name")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} = {value!r} is out of range [{low:g}, {high:g}]")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
