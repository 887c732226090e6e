"""pbt: black-box Population Based Training as a service.

The controller (``pbt.controller``) decides, tasks (``pbt.tasks``) execute the user's
trainer (``pbt.trainers``), storage (``pbt.storage``) remembers.

From Python (the names in ``__all__``; each has its own docstring)::

    import pbt

    study = pbt.run("examples/toy.yaml", trainer=my_train_function, storage="runs")
    print(study.best.id, study.best.objective, study.schedule())
    study.to_dataframe(per="evaluation")        # needs the pandas extra

    handle = pbt.start(spec, broker="redis://host:6379/0")   # returns at once
    handle.status(); handle.stop(); handle.wait()

    pbt.load_study("toy", "s3://bucket/studies")  # from any machine that reads the storage

``import pbt`` stays light: every name is imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "run": "pbt.api.running",
    "start": "pbt.api.running",
    "StudyRun": "pbt.api.running",
    "load_study": "pbt.api.study",
    "Study": "pbt.api.study",
    "StudySpec": "pbt.spec",
    "TrainContext": "pbt.trainers.function",
    "StudyState": "pbt.study_state",
    "Outcome": "pbt.study_state",
    "EndReason": "pbt.study_state",
    "Ending": "pbt.study_state",
    "PbtError": "pbt.errors",
    "SpecError": "pbt.errors",
    "StudyNotFoundError": "pbt.errors",
    "StudyLockedError": "pbt.errors",
    "StorageUnavailableError": "pbt.errors",
    "StudyFailedError": "pbt.errors",
}
_RENAMED = {"TrainContext": "Context"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pbt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # next time without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
