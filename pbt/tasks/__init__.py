"""Where trials execute: the trial function, the embedded pool and the Celery app.

``celery -A pbt.tasks worker`` finds the Celery app as ``pbt.tasks.app``; it is imported
lazily so that the embedded executor never imports Celery.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        from pbt.tasks.worker import app

        return app
    raise AttributeError(f"module 'pbt.tasks' has no attribute {name!r}")
