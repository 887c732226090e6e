"""The distributed executor: trials as Celery tasks on Redis, results back on a kombu queue.

The controller publishes each attempt with ``send_task`` (no worker code needed here),
consumes the study's result queue, and acknowledges a result only after the controller has
recorded it (:meth:`CeleryExecutor.ack`). Liveness comes from keys the workers refresh; a trial
whose key lapsed and whose message is no longer waiting in the queue is reported lost so the
controller's lease can re-publish it. Redis may restart under it: every call here survives a
dropped connection and reconnects on the next tick.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

import redis
from kombu import Connection

from pbt.errors import StudyLockedError
from pbt.spec import StudySpec
from pbt.tasks import channels
from pbt.tasks.celery_app import TASK_NAME, make_app
from pbt.tasks.executor import Event, Executor
from pbt.trial import Progress, TrialResult, TrialTask
from pbt.urls import redact_url

log = logging.getLogger("pbt.distributed")

_RECOVERABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, ConnectionError)


class CeleryExecutor(Executor):
    survives_controller = True

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.url = channels.check_broker_url(spec.broker or channels.broker_url())
        self.app = make_app(self.url)
        self.redis = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5)
        self.queue = spec.execution.queue
        self.results = channels.result_queue(spec.name)
        self.inflight: dict[str, TrialTask] = {}
        self.last_liveness = 0.0
        self._conn: Connection | None = None
        self._simple: Any = None

    # Publishing -----------------------------------------------------------------------------

    def submit(self, task: TrialTask) -> None:
        self.inflight[task.trial_id] = task
        timeout = self.spec.execution.trial_timeout
        try:
            self.redis.set(channels.attempt_key(task.study, task.trial_id), task.attempt, ex=channels.FLAG_TTL)
            self.app.send_task(
                TASK_NAME,
                kwargs={"task": task.model_dump(mode="json")},
                queue=self.queue,
                task_id=channels.task_id(task.study, task.trial_id, task.attempt),
                soft_time_limit=timeout,
                time_limit=timeout + 60 if timeout else None,
                kwargsrepr=f"study={task.study} trial={task.trial_id} attempt={task.attempt} params={task.params}",
                retry=True,
                retry_policy={"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2},
            )
        except Exception as exc:  # the broker is down: the lease re-publishes once it is back
            log.warning("could not publish %s (attempt %d): %s", task.trial_id, task.attempt, exc)

    def adopt(self, task: TrialTask) -> None:
        self.inflight[task.trial_id] = task

    def stop(self, task: TrialTask) -> None:
        try:
            self.redis.set(channels.stop_key(task.study, task.trial_id), 1, ex=channels.FLAG_TTL)
        except _RECOVERABLE as exc:
            log.warning("could not flag %s to stop: %s", task.trial_id, exc)

    # Receiving ------------------------------------------------------------------------------

    def _queue(self) -> Any:
        if self._simple is None:
            self._conn = Connection(self.url, transport_options=self.app.conf.broker_transport_options)
            self._simple = self._conn.SimpleQueue(self.results, serializer="json")
        return self._simple

    def _reset(self) -> None:
        for closer in (self._simple, self._conn):
            try:
                if closer is not None:
                    closer.close()
            except Exception:
                pass
        self._simple = self._conn = None

    def events(self, timeout: float) -> list[Event]:
        out: list[Event] = []
        try:
            queue = self._queue()
            try:
                out.append(self._event(queue.get(block=True, timeout=timeout)))
                while len(out) < 200:
                    out.append(self._event(queue.get(block=False)))
            except queue.Empty:
                pass
        except Exception as exc:  # connection errors of every flavour kombu and redis raise
            if not out:
                log.warning("result queue unavailable (%s); retrying", exc)
                self._reset()
                time.sleep(min(timeout, 1.0))
        out += self._liveness()
        return [e for e in out if e is not None]

    def _event(self, message: Any) -> Event | None:
        body = message.payload
        kind = body.pop("kind", "result")
        if kind == "progress":
            event = Event(Progress.model_validate(body), receipt=message)
        else:
            event = Event(TrialResult.model_validate(body), receipt=message)
            task = self.inflight.get(event.message.trial_id)
            if task is not None and task.attempt <= event.message.attempt:
                del self.inflight[event.message.trial_id]
        return event

    def _liveness(self) -> list[Event]:
        """Heartbeats of in-flight attempts, read at most every half heartbeat interval."""
        now = time.time()
        if not self.inflight or now - self.last_liveness < self.spec.execution.heartbeat_seconds / 2:
            return []
        self.last_liveness = now
        tasks = list(self.inflight.values())
        try:
            values = self.redis.mget([channels.alive_key(t.study, t.trial_id) for t in tasks])
        except _RECOVERABLE as exc:
            log.warning("liveness keys unreadable: %s", exc)
            return []
        out = []
        for task, raw in zip(tasks, values):
            if raw is None:
                continue
            beat = json.loads(raw)
            out.append(Event(Progress(study=task.study, trial_id=task.trial_id, attempt=int(beat["attempt"]),
                                      step=int(beat.get("step", 0)), worker=beat.get("worker"),
                                      at=float(beat.get("at", now)))))
        return out

    def ack(self, events: Sequence[Event]) -> None:
        for event in events:
            if event.receipt is not None:
                try:
                    event.receipt.ack()
                except Exception as exc:  # unacked: redelivered later, and recorded once
                    log.warning("could not ack a result: %s", exc)

    def in_broker(self, tasks: Sequence[TrialTask]) -> set[str]:
        """Trials whose current attempt is still waiting in the trial queue."""
        wanted = {channels.task_id(t.study, t.trial_id, t.attempt): t.trial_id for t in tasks}
        found: set[str] = set()
        try:
            for raw in self.redis.lrange(self.queue, 0, -1):
                try:
                    tid = json.loads(raw)["headers"]["id"]
                except (ValueError, KeyError, TypeError):
                    continue
                if tid in wanted:
                    found.add(wanted[tid])
        except _RECOVERABLE as exc:
            log.warning("cannot inspect the trial queue: %s; assuming the tasks are still queued", exc)
            return {t.trial_id for t in tasks}
        return found


    def close(self) -> None:
        self._reset()
        try:
            self.redis.close()
        except Exception:
            pass


class RedisLease:
    """A per-study lock in Redis with a TTL the controller renews every tick.

    A controller that dies stops renewing; its lease lapses after ``ttl`` seconds (or at once,
    if the new controller runs on the same host and the old process is gone).
    """

    def __init__(self, url: str, study: str, ttl: float | None = None) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self.url = url
        self.key = f"pbt:{study}:controller"
        self.study = study
        self.ttl = ttl or float(os.environ.get("PBT_CONTROLLER_LEASE_SECONDS", 30))
        self.token = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()})
        self.held = False
        self.last_renew = 0.0

    def acquire(self) -> None:
        if self.client.set(self.key, self.token, nx=True, px=int(self.ttl * 1000)):
            self.held = True
            self.last_renew = time.time()
            return
        holder = self.client.get(self.key)
        info = json.loads(holder) if holder else {}
        dead_here = info.get("host") == socket.gethostname() and not _pid_alive(int(info.get("pid", 0)))
        # Our own dead predecessor on this machine: take over without waiting for the TTL.
        if dead_here and self.client.delete(self.key) and self.client.set(
            self.key, self.token, nx=True, px=int(self.ttl * 1000)
        ):
            self.held = True
            self.last_renew = time.time()
            return
        left = self.client.pttl(self.key) / 1000
        raise StudyLockedError(
            f"study {self.study!r} is already driven by another controller "
            f"(host {info.get('host', '?')}, pid {info.get('pid', '?')}, via {redact_url(self.url)}); "
            f"stop it first — if it died, its lease lapses in {max(left, 0):.0f}s"
        )

    def renew(self) -> None:
        now = time.time()
        if not self.held or now - self.last_renew < self.ttl / 3:
            return
        try:
            ok = self.client.eval(_RENEW, 1, self.key, self.token, int(self.ttl * 1000))
        except _RECOVERABLE as exc:  # Redis restarting: try again next tick
            log.warning("could not renew the study lease: %s", exc)
            return
        if not ok:
            self.held = False
            raise StudyLockedError(f"study {self.study!r}: another controller took over the lease; stopping")
        self.last_renew = now

    def release(self) -> None:
        if not self.held:
            return
        try:
            self.client.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end",
                             1, self.key, self.token)
        except _RECOVERABLE:
            pass
        self.held = False


# Extend our lease; re-create it if Redis lost it (a restart); refuse if someone else holds it.
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2])
elseif redis.call('exists', KEYS[1]) == 0 then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
else return 0 end
"""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
