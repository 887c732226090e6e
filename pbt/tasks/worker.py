"""The worker side: the one Celery task that runs a trial attempt (``celery -A pbt.tasks worker``).

The task is thin: parse the JSON message, skip it if it is a stale attempt, run
:func:`pbt.tasks.attempt.run_attempt` with a reporter that talks to Redis, post the result to the
study's result stream. Reliability comes from configuration: JSON only, late acks, a task whose
worker dies is rejected back to the queue, prefetch of one, and a Redis visibility timeout
longer than any trial (``PBT_VISIBILITY_TIMEOUT``, seconds) so a message held by a dead worker
comes back. Because a message may still be delivered twice (celery#5935), the trial function is
idempotent: a redelivered attempt resumes from its checkpoints and the controller records a
trial's result once.

What a message may ask is bounded by the worker's own configuration (:mod:`pbt.tasks.trust`):
a task is decoded and checked field by field, its storage must be one the worker serves and its
trainer one the operator allowed, or it is dead-lettered and runs nothing. Messages Celery
itself cannot read are set aside by :mod:`pbt.tasks.quarantine`, which this module configures.

Sick workers take themselves out: a pool process whose trial ran out of memory (or broke its
CUDA context) exits once it has reported the trial, and the pool starts a fresh one; a worker
whose last ``PBT_WORKER_MAX_ENV_FAILURES`` (default 3) trials failed because of its environment
(storage unreachable or refusing its credentials, no GPU, a full disk) stops taking tasks and
exits with status 5, saying why, so that healthy workers get them.

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

import redis
from celery import signals
from celery.exceptions import Reject

from pbt.tasks import channels, quarantine
from pbt.tasks.attempt import Interrupt, Preempted, run_attempt
from pbt.tasks.celery_app import TASK_NAME, make_app
from pbt.tasks.trust import Malformed, NotServed, WorkerTrust, decode_task
from pbt.trial import FailureScope, Progress, TrialResult, TrialStatus, TrialTask
from pbt.urls import redact_logs

log = logging.getLogger("pbt.worker")

app = make_app()  # the worker's app: ``celery -A pbt.tasks`` finds it as pbt.tasks.app
app.conf.broker_transport = "pbt.tasks.quarantine:Transport"  # undecodable list entries: set aside
app.conf.worker_consumer = "pbt.tasks.quarantine:Consumer"  # malformed task messages: set aside
if app.conf.broker_url.startswith("rediss://") and "ssl_cert_reqs" not in app.conf.broker_url:
    # An explicit transport class hides the scheme from kombu, which would otherwise turn TLS on
    # for rediss:// by itself (with the same certificate settings as here).
    import ssl

    app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_NONE}
if os.environ.get("PBT_WORKER_REMOTE_CONTROL", "1") == "0":
    app.conf.worker_enable_remote_control = False  # nobody on the broker can shut workers down


def _max_env_failures() -> int:
    raw = os.environ.get("PBT_WORKER_MAX_ENV_FAILURES", "3")
    try:
        return max(1, int(raw))
    except ValueError:
        log.warning("PBT_WORKER_MAX_ENV_FAILURES=%r is not a number; using 3", raw)
        return 3


MAX_ENV_FAILURES = _max_env_failures()

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
        # Liveness alone is the heartbeat thread's job, and the last step's metrics travel with
        # the result that follows at once: one message per trial where the trial is one chunk.
        if progress.metrics is not None and progress.step < self.task.steps:
            _post(self.task.study, progress.model_dump(mode="json") | {"kind": "progress",
                                                                         "study_uid": self.task.study_uid})

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
    """One entry on the study's result stream; retried while Redis restarts (about two minutes)."""
    client = channels.redis_client(app.conf.broker_url)
    entry = {"k": body.get("kind", "result"), "m": json.dumps(body)}  # "k": read without parsing "m"
    for attempt in range(30):
        try:
            client.xadd(channels.result_stream(study), entry)
            return
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            if attempt == 29:
                raise
            log.warning("could not post to the result stream (%s); retrying", exc)
            time.sleep(min(0.5 + attempt, 5.0))


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True,
          Request="pbt.tasks.quarantine:TrialRequest")
def run_trial_task(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
    client = channels.redis_client(app.conf.broker_url)
    worker = f"{self.request.hostname or socket.gethostname()} (pid {os.getpid()})"
    queue = (self.request.delivery_info or {}).get("routing_key") or "?"
    try:
        t = _trust().check(decode_task(args, kwargs))
    except Malformed as exc:
        quarantine.set_aside(client, queue, str(exc), _body(args, kwargs))
        return {"refused": str(exc)}
    except NotServed as exc:  # well-formed, for another worker: set aside and tell its study
        quarantine.set_aside(client, queue, str(exc), _body(args, kwargs))
        task = exc.task
        _post(task.study, TrialResult(
            study=task.study, trial_id=task.trial_id, attempt=task.attempt, status=TrialStatus.FAILED,
            error=f"{worker}: {exc}", retryable=True, scope=FailureScope.WORKER, worker=worker,
            finished_at=time.time(), study_uid=task.study_uid,
        ).model_dump(mode="json") | {"kind": "result"})
        return {"refused": str(exc)}
    _install_sigterm()
    stale = _stale(client, t)
    if stale:
        log.info("skipping %s attempt %d: %s", t.trial_id, t.attempt, stale)
        return {"skipped": stale}
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
    _post(t.study, result.model_dump(mode="json") | {"kind": "result", "study_uid": t.study_uid})
    _health.after(result)
    return {"trial": t.trial_id, "attempt": t.attempt, "status": result.status.value, "objective": result.objective}


def _stale(client: Any, t: TrialTask) -> str | None:
    """Why ``t`` is not to run: a later attempt superseded it, or it is a task of an earlier run
    of its study (one deleted and started again under the same name); None: run it.

    The controller's attempts hash says (one round trip). A value that is not a number (written
    by someone else with broker access) is no reason to lose the attempt: it runs, with a warning
    (it used to raise in the task, so the attempt was acknowledged unrun and waited for its lease)."""
    raw, run = client.hmget(channels.attempts_key(t.study), [t.trial_id, channels.RUN_FIELD])
    if run is not None and t.study_uid and run.decode(errors="replace") != t.study_uid:
        return f"a task of an earlier run of study {t.study!r} (run {t.study_uid}, now {run.decode(errors='replace')})"
    if raw is None:
        return None
    try:
        current = int(raw)
    except ValueError:
        log.warning("%s: the attempt record of %s is not a number (%r); running attempt %d",
                    channels.attempts_key(t.study), t.trial_id, raw[:40], t.attempt)
        return None
    return f"attempt {current} superseded it" if current > t.attempt else None


def _trust() -> WorkerTrust:
    global _trusted
    if _trusted is None:
        _trusted = WorkerTrust.from_env()
    return _trusted


_trusted: WorkerTrust | None = None


def _body(args: Any, kwargs: Any) -> str:
    try:
        return json.dumps({"args": args, "kwargs": kwargs}, default=repr)[:4000]
    except (TypeError, ValueError, RecursionError):
        return repr((args, kwargs))[:4000]


class _Health:
    """How this process has fared: it leaves when its trials say it is unfit (module docstring)."""

    def __init__(self) -> None:
        self.env_failures = 0

    def after(self, result: TrialResult) -> None:
        worker_fault = result.status is TrialStatus.FAILED and result.scope is FailureScope.WORKER
        self.env_failures = self.env_failures + 1 if worker_fault else 0
        reason = (result.error or "").strip().splitlines()[0] if result.error else ""
        if result.recycle:
            self.leave(f"{result.trial_id} attempt {result.attempt} left this process unfit: {reason}", retire=False)
        elif self.env_failures >= MAX_ENV_FAILURES:
            self.leave(f"the last {self.env_failures} trials failed because of this worker's environment "
                       f"(the last: {reason}); fix it and start the worker again", retire=True)

    def leave(self, reason: str, retire: bool) -> None:
        from billiard.process import current_process

        if current_process().name != "MainProcess":
            log.warning("pool process %d leaves: %s", os.getpid(), reason)
            raise quarantine.ProcessUnfit(reason, retire=retire)  # after the result was posted
        # -P solo or threads: the worker itself is the process; it stops and a supervisor restarts it.
        quarantine.retire(reason)


_health = _Health()


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _redact_logs(logger: Any = None, **_: Any) -> None:
    """Celery set up its handlers: no credentials in any line they write, whatever ``-l`` says."""
    redact_logs(logger)
    redact_logs()


@signals.worker_ready.connect
def _say_what_is_served(sender: Any = None, **_: Any) -> None:
    trust = WorkerTrust.from_env()
    log.info("pbt worker serves %s", trust.describe())
    if not trust.storages:
        log.warning("this worker serves no storage, so it will refuse every trial: start it with "
                    "`pbt worker --storage URI` or set PBT_WORKER_STORAGE (or PBT_STORAGE)")


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
