"""The worker side: the one Celery task that runs a trial attempt (``celery -A pbt.tasks worker``).

The task is thin: parse the JSON message, skip it if it is a stale attempt, run
:func:`pbt.tasks.attempt.run_attempt` with a reporter that talks to Redis, post the result to the
study's result queue. Reliability comes from configuration: JSON only, late acks, a task whose
worker dies is rejected back to the queue, prefetch of one, and a Redis visibility timeout
longer than any trial (``PBT_VISIBILITY_TIMEOUT``, seconds) so a message held by a dead worker
comes back. Because a message may still be delivered twice (celery#5935), the trial function is
idempotent: a redelivered attempt resumes from its checkpoints and the controller records a
trial's result once.

Preemption: on SIGTERM (a spot instance's notice, ``kubectl delete pod``, ``systemctl stop``)
the running attempt saves an in-trial checkpoint at its next chunk and hands its message back
with ``Reject(requeue=True)``, so another worker resumes it instead of starting over.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from typing import Any

from celery import signals
from celery.exceptions import Reject

from pbt.tasks import channels
from pbt.tasks.attempt import Interrupt, Preempted, run_attempt
from pbt.tasks.celery_app import TASK_NAME, make_app
from pbt.trial import Progress, TrialResult, TrialStatus, TrialTask

log = logging.getLogger("pbt.worker")

app = make_app()  # the worker's app: ``celery -A pbt.tasks`` finds it as pbt.tasks.app

# --- the task --------------------------------------------------------------------------------

_sigterm = threading.Event()  # set in a pool child when the worker is shutting down


class _RedisReporter:
    def __init__(self, task: TrialTask, client, worker: str) -> None:
        self.task = task
        self.client = client
        self.worker = worker
        self.step = 0

    def progress(self, progress: Progress) -> None:
        self.step = progress.step
        if progress.metrics is not None:  # liveness alone is the heartbeat thread's job
            _post(self.task.study, progress.model_dump(mode="json") | {"kind": "progress"})

    def interrupt(self) -> Interrupt:
        from celery.worker import state

        if _sigterm.is_set() or state.should_stop or state.should_terminate:
            return "preempt"
        try:
            if self.client.exists(channels.stop_key(self.task.study, self.task.trial_id)):
                return "stop"
        except Exception as exc:  # Redis blip: keep training, ask again next chunk
            log.debug("stop flag unreadable: %s", exc)
        return None


class _Heartbeat(threading.Thread):
    """Refreshes the attempt's liveness key while it runs, whatever the trainer is doing."""

    def __init__(self, reporter: _RedisReporter) -> None:
        super().__init__(name="pbt-heartbeat", daemon=True)
        self.reporter = reporter
        self.done = threading.Event()

    def run(self) -> None:
        task = self.reporter.task
        key = channels.alive_key(task.study, task.trial_id)
        ttl = max(1, int(task.lease_seconds))
        while True:
            body = {"attempt": task.attempt, "step": self.reporter.step, "worker": self.reporter.worker,
                    "at": time.time()}
            try:
                self.reporter.client.set(key, json.dumps(body), ex=ttl)
            except Exception as exc:  # the broker restarts: keep trying, the lease absorbs it
                log.debug("heartbeat failed: %s", exc)
            if self.done.wait(task.heartbeat_seconds):
                return


def _post(study: str, body: dict[str, Any]) -> None:
    # The anonymous exchange routes by queue name alone. Exchange bindings live in Redis and die
    # with it; a result published through a named exchange after a Redis restart would be dropped.
    queue = channels.result_queue(study)
    with app.producer_or_acquire() as producer:
        producer.publish(
            body, exchange="", routing_key=queue.name, serializer="json", delivery_mode="persistent", retry=True,
            retry_policy={"max_retries": 30, "interval_start": 0.5, "interval_step": 1, "interval_max": 5},
        )


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_trial_task(self, task: dict[str, Any]) -> dict[str, Any]:
    t = TrialTask.model_validate(task)
    _install_sigterm()
    client = channels.redis_client(app.conf.broker_url)
    worker = f"{self.request.hostname or socket.gethostname()} (pid {os.getpid()})"
    current = client.get(channels.attempt_key(t.study, t.trial_id))
    if current is not None and int(current) > t.attempt:
        log.info("skipping %s attempt %d: attempt %s superseded it", t.trial_id, t.attempt, int(current))
        return {"skipped": "superseded"}
    if client.exists(channels.stop_key(t.study, t.trial_id)):
        result = TrialResult(study=t.study, trial_id=t.trial_id, attempt=t.attempt, status=TrialStatus.STOPPED,
                             error="stopped early by the policy before it started", worker=worker,
                             finished_at=time.time())
    else:
        reporter = _RedisReporter(t, client, worker)
        heartbeat = _Heartbeat(reporter)
        heartbeat.start()
        try:
            result = run_attempt(t, reporter, worker=worker)
        except Preempted as exc:
            raise Reject(str(exc), requeue=True) from None
        finally:
            heartbeat.done.set()
            heartbeat.join(timeout=5)
            try:  # the attempt is over: do not let its liveness key outlive it
                client.delete(channels.alive_key(t.study, t.trial_id))
            except Exception as exc:
                log.debug("could not clear the liveness key: %s", exc)
    _post(t.study, result.model_dump(mode="json") | {"kind": "result"})
    return {"trial": t.trial_id, "attempt": t.attempt, "status": result.status.value, "objective": result.objective}


# --- preemption ------------------------------------------------------------------------------


def _install_sigterm() -> None:
    """In a pool child: SIGTERM means "save and hand back", not "die now".

    Installed when a task starts, not at ``worker_process_init``: billiard resets the child's
    signal handlers after that hook runs. In the main process (``-P solo``) Celery's own handler
    stays, and the reporter reads its shutdown flag instead.
    """
    from billiard.process import current_process

    if current_process().name != "MainProcess" and signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _on_sigterm(*_: Any) -> None:
    _sigterm.set()


@signals.worker_shutting_down.connect
def _forward_sigterm(sig: str = "", how: str = "", **_: Any) -> None:
    """Kubernetes and Docker signal only the main process; tell the pool children too."""
    if how != "Warm":
        return
    from billiard import process

    for child in process.active_children():
        try:
            os.kill(child.pid, signal.SIGTERM)
        except (ProcessLookupError, TypeError):
            pass
