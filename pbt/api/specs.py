"""From whatever a user has to a validated study: a YAML path, a dict, typed objects, a stored study.

``pbt run`` and ``pbt.run`` build their :class:`~pbt.spec.StudySpec` here, so a study file, a
dict and a ``pbt.StudySpec`` are validated alike (:func:`pbt.study_file.parse_spec`: every bad
field named with its reason, in one :class:`~pbt.errors.SpecError`). ``pbt resume`` and
``pbt.run(stored_study)`` continue a stored study through :func:`resume_spec`.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Mapping
from typing import Any

from pbt.analysis.study import StoredStudy
from pbt.errors import SpecError
from pbt.spec import StudySpec
from pbt.study_file import apply_overrides, parse_spec, read_study_file

#: What a study may be given as to ``pbt.run`` / ``pbt.start`` (a stored study aside).
StudyLike = str | os.PathLike | Mapping[str, Any] | StudySpec


def study_spec(
    study: StudyLike,
    *,
    trainer: Any = None,
    storage: str | os.PathLike | None = None,
    broker: str | None = None,
    seed: int | None = None,
    name: str | None = None,
    tensorboard: str | os.PathLike | None = None,
) -> StudySpec:
    """Validate ``study`` with these overrides into a StudySpec; None keeps the study's own value.

    ``study``: a path to a YAML study file, a mapping with the same fields, or a StudySpec.
    ``trainer``: an import path ``"package.module:Name"``, or the class or function itself
    (module-level, see :mod:`pbt.importing`); replaces ``trainer.path`` and keeps
    ``trainer.config``. ``broker=""`` means no broker (embedded workers), as ``--broker ""`` does.
    Raises SpecError naming each bad field (a missing file and bad YAML included).
    """
    if isinstance(study, StudySpec):
        data, source = study.model_dump(mode="python"), f"study {study.name}"
    elif isinstance(study, Mapping):
        data, source = copy.deepcopy(dict(study)), "study"
    elif isinstance(study, (str, os.PathLike)):
        data, source = read_study_file(study), os.fspath(study)
    else:
        raise SpecError(
            f"study: expected a path to a YAML study file, a dict or a pbt.StudySpec, got {type(study).__name__}"
        )
    if not isinstance(data, dict):
        return parse_spec(data, source=source)  # names the problem
    if trainer is not None:
        section = data.get("trainer")
        if hasattr(section, "model_dump"):
            section = section.model_dump()
        data["trainer"] = {**(section if isinstance(section, Mapping) else {}), "path": trainer}
    if isinstance(storage, os.PathLike):
        storage = os.fspath(storage)
    apply_overrides(data, {"storage": storage, "broker": broker, "seed": seed, "name": name,
                           "execution.tensorboard": os.fspath(tensorboard) if tensorboard else None})
    return parse_spec(data, source=source)


def resume_spec(
    stored: StoredStudy,
    storage: str,
    broker: str | None = None,
    *,
    broker_hint: str = "pass broker='redis://...' again",
    by: str = "pbt.run",
    tensorboard: str | os.PathLike | None = None,
) -> StudySpec:
    """The spec to continue a stored study with, and its pause flag cleared (``pbt resume``).

    The stored spec never holds the broker's password, so a study that ran on Celery needs
    ``broker`` again; without it SpecError says so, ending with ``broker_hint`` (how to pass it
    where the caller is). ``by`` is written into the study's ``control`` document.
    """
    data = dict(stored.spec_doc)
    if data.get("broker") and not broker:
        raise SpecError(
            f"study {stored.spec.name} ran on Celery workers ({data['broker']}); the stored spec "
            f"keeps no password: {broker_hint}"
        )
    data.update(storage=storage, broker=broker or None)
    if tensorboard:
        data["execution"] = {**data.get("execution", {}), "tensorboard": os.fspath(tensorboard)}
    spec = parse_spec(data, source=f"the stored spec of {stored.spec.name}", stored=True)
    stored.store.write_doc("control", {"paused": False, "at": time.time(), "by": by})
    return spec


def request_pause(stored: StoredStudy, by: str) -> float:
    """Ask the study's controller, wherever it runs, to pause (``pbt stop``); returns when it was asked.

    The controller reads the flag within about two seconds, publishes nothing new, lets the
    trials in flight finish and exits with the study paused.
    """
    asked = time.time()
    stored.store.write_doc("control", {"paused": True, "at": asked, "by": by})
    return asked


def wait_until_paused(stored: StoredStudy, asked: float, timeout: float, poll: float = 0.5) -> bool:
    """Wait until a controller recorded the study as paused after ``asked``; False after ``timeout`` seconds."""
    deadline = asked + timeout
    while time.time() < deadline:
        state = stored.store.read_doc("state") or {}
        if state.get("paused") and float(state.get("at", 0)) >= asked - 5.0:
            return True
        time.sleep(poll)
    return False

