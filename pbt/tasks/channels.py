"""The names and connections workers and the controller share through Redis.

Celery carries the trial tasks; everything else a trial says travels here:

* **result stream** ``pbt:<study>:results`` (a Redis Stream, one entry per result or progress
  report with metrics; fields ``k``: its kind, ``m``: the JSON message): read by the controller
  through the consumer group ``controller`` and acknowledged only after it has recorded them
  durably;
* **liveness** ``pbt:<study>:alive:<trial>``: a key with a TTL that a thread in the worker
  refreshes while the attempt runs — its absence is how the controller notices a lost worker;
* **attempts** ``pbt:<study>:attempts``: a hash of each trial's current attempt number, so a stale
  delivery of an older attempt (restored by the broker after a crash) is skipped instead of re-run,
  and so is a task of an earlier run of the study (field ``~run``: the run the numbers are of);
* **stop** ``pbt:<study>:stop:<trial>``: the policy early-stopped this trial.

Only ``redis://`` and ``rediss://`` brokers are supported: these keys need Redis.
"""

from __future__ import annotations

import os
from functools import lru_cache

import redis

from pbt.errors import SpecError
from pbt.urls import redact_url

FLAG_TTL = 7 * 24 * 3600  # attempt and stop flags outlive any reasonable trial


def check_broker_url(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "redis+socket://")):
        raise SpecError(f"broker: {redact_url(url)!r} is not a Redis URL (redis://[:password@]host:port/db or rediss://)")
    return url


def broker_url(explicit: str | None = None) -> str:
    """The broker URL: explicit, else ``PBT_BROKER_URL``, else ``CELERY_BROKER_URL``, else local Redis."""
    url = explicit or os.environ.get("PBT_BROKER_URL") or os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0"
    return check_broker_url(url)


RESULT_GROUP = "controller"  # the stream's consumer group: one per study (one stream per study)
RESULT_CONSUMER = "controller"  # one controller per study at a time (its lease): one consumer name,
# so a successor reads what its predecessor left pending


def result_stream(study: str) -> str:
    return f"pbt:{study}:results"


def alive_key(study: str, trial_id: str) -> str:
    return f"pbt:{study}:alive:{trial_id}"


def attempts_key(study: str) -> str:
    """A hash: trial id -> its current attempt number (one HSET publishes a tick's)."""
    return f"pbt:{study}:attempts"


RUN_FIELD = "~run"  # in the attempts hash: the run (TrialTask.study_uid) the numbers are of; no trial id


def stop_key(study: str, trial_id: str) -> str:
    return f"pbt:{study}:stop:{trial_id}"


def task_id(study: str, trial_id: str, attempt: int) -> str:
    """Celery task ids that read well in Flower: ``toy.t000042.a2``."""
    return f"{study}.{trial_id}.a{attempt}"


@lru_cache(maxsize=8)
def _client(url: str, pid: int) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)


def redis_client(url: str) -> redis.Redis:
    """One client (connection pool) per process and URL; rebuilt after fork."""
    return _client(url, os.getpid())
