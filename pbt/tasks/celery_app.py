"""The Celery app factory shared by the controller and the workers.

Creating the app is a function, not an import side effect: the controller builds one for its
broker (:class:`pbt.tasks.distributed.CeleryExecutor`), the worker module builds the process's
own (``pbt.tasks.worker.app``, which ``celery -A pbt.tasks worker`` finds), and both get the
same configuration from here.
"""

from __future__ import annotations

import math
import os

from celery import Celery

from pbt.errors import SpecError
from pbt.tasks import channels

TASK_NAME = "pbt.run_trial"
DEFAULT_QUEUE = "pbt.trials"


def make_app(broker: str | None = None) -> Celery:
    """A Celery app for ``broker`` (default ``PBT_BROKER_URL``), configured for at-least-once trials."""
    url = channels.broker_url(broker)
    app = Celery("pbt", broker=url, set_as_current=broker is None)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # never pickle: a message is data, not code
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,  # results travel on the study's result stream
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,  # Flower shows trials as they run
        task_send_sent_event=True,
        task_default_queue=DEFAULT_QUEUE,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": env_seconds("PBT_VISIBILITY_TIMEOUT", 6 * 3600),
            "unacked_restore_interval": env_seconds("PBT_UNACKED_RESTORE_INTERVAL", 10),
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
    )
    return app


def env_seconds(name: str, default: float) -> float:
    """A positive, finite number of seconds from the environment variable ``name`` (``default`` when
    unset); SpecError naming the variable otherwise, instead of a traceback from Celery's loader."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SpecError(f"{name}={raw!r}: expected a positive number of seconds")
    return value
