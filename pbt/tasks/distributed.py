"""The distributed executor: trials as Celery tasks on Redis, results back on a Redis Stream.

The controller talks to Redis through one reused client and a handful of round trips per tick,
however many trials the tick handles:

* **publishing** — a tick's attempts go out in one pipeline (:meth:`CeleryExecutor.flush`):
  each message is built by Celery's own protocol (``app.amqp.as_task_v2``) and stored exactly as
  kombu's Redis transport stores it (its JSON envelope, the body base64-encoded, LPUSHed onto the
  trial queue), beside the attempt numbers (one HSET). Workers stay ordinary Celery workers: Flower
  shows every attempt, an unacknowledged message comes back after a SIGKILL. No "task sent"
  event is published (it used to cost as much as the task itself).
* **results** — workers XADD one entry per result (and one per progress report with metrics) to
  the study's stream ``pbt:<study>:results``; the controller reads it with XREADGROUP (one
  consumer group per study) and XACKs (and XDELs) a tick's entries in one call, only after the
  controller has journalled them (:meth:`CeleryExecutor.ack`). Entries left pending by a
  controller that died are read again first when the next one starts. An entry that does not
  decode or validate is dead-lettered and acknowledged: it never blocks the stream.
* **liveness** — keys the workers refresh. The controller reads only the keys of attempts whose
  next check is due (a heap of deadlines), not every in-flight attempt on every poll: an attempt
  is looked at when its lease is close to lapsing, so the cost is per lease, not per tick.

A trial whose key lapsed and whose message is no longer waiting in the queue is reported lost
so the controller's lease can re-publish it. Redis may restart under it (even FLUSHALL): every
call here survives a dropped connection, and the stream's group is created again when it is gone.
"""

from __future__ import annotations

import base64
import heapq
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Sequence

import pydantic
import redis

from pbt.errors import StudyLockedError
from pbt.spec import StudySpec
from pbt.tasks import channels, deadletter
from pbt.tasks.celery_app import TASK_NAME, make_app
from pbt.tasks.executor import Event, Executor
from pbt.trial import Progress, TrialResult, TrialStatus, TrialTask
from pbt.urls import redact_url

log = logging.getLogger("pbt.distributed")

_RECOVERABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, ConnectionError)

READ_BATCH = 1000  # stream entries read per round trip
#: Batching. A tick has a fixed cost (a journal write, a publication round trip, a read, caches
#: gone cold while the controller slept) of about a millisecond. When results come faster than
#: BATCH_ABOVE per second, the controller waits between reads of the result stream until about
#: BATCH results are there, but never longer than BATCH_SECONDS: the tick's cost is then shared
#: by all of them. Slower, it reads each result as it comes (no delay where batching would save
#: nothing worth having). It adds at most BATCH_SECONDS to the time from a result to the next
#: trial's publication, only under load.
BATCH_SECONDS = float(os.environ.get("PBT_BATCH_SECONDS", 0.15))
BATCH_ABOVE = 20.0  # results per second
BATCH = 30
DRAIN_SECONDS = 2.0  # at most this long reading on through a flood of dead letters in one poll
SCAN_LIMIT = 20_000  # queued messages looked through when a lease lapsed, at most


class CeleryExecutor(Executor):
    survives_controller = True

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.url = channels.check_broker_url(spec.broker or channels.broker_url())
        self.app = make_app(self.url)
        self.redis = redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=5,
                                          health_check_interval=30)
        self.queue = spec.execution.queue
        self.stream = channels.result_stream(spec.name)
        self.group = channels.RESULT_GROUP
        self.consumer = channels.RESULT_CONSUMER
        self.inflight: dict[str, TrialTask] = {}
        self.outbox: list[TrialTask] = []
        self.acks: list[bytes] = []  # entries to acknowledge with the next flush
        self.unacked_dead: dict[bytes, None] = {}  # dead-lettered entries, acknowledged with the next ack
        self.letters: list[deadletter.DeadLetter] = []  # stored with one round trip per read
        self.pending_first = True  # read what a previous controller left unacknowledged first
        self.uid: str | None = None  # this run of the study (TrialTask.study_uid), from its tasks
        self.pending_after: bytes | str = "0"  # ... after this entry id
        self.group_ready = False
        self.origin = f"{socket.gethostname()} (pid {os.getpid()})"
        # Liveness: when each in-flight attempt's key is next read, and the beat last seen.
        self.checks: list[tuple[float, str]] = []
        self.next_check: dict[str, float] = {}
        self.check_gap: dict[str, float] = {}
        self.beats: dict[str, bytes] = {}
        self.last_liveness = 0.0
        self.last_read = 0.0
        self.rate = 0.0  # results (and progress reports) per second, a moving average

    # Publishing -----------------------------------------------------------------------------

    def submit(self, task: TrialTask) -> None:
        """Track ``task``; it is published with the rest of the tick's by :meth:`flush`."""
        self.inflight[task.trial_id] = task
        self._watch(task.trial_id, first=True)
        self.outbox.append(task)
        self.uid = task.study_uid or self.uid

    def flush(self) -> None:
        """One round trip for the tick: its acknowledgements (:meth:`ack`), then its attempts'
        numbers and messages."""
        outbox, self.outbox = self.outbox, []
        acks, self.acks = self.acks, []
        if not outbox and not acks:
            return
        pipe = self.redis.pipeline(transaction=False)
        if acks:
            pipe.xack(self.stream, self.group, *acks)
            pipe.xdel(self.stream, *acks)
        if outbox:
            attempts = channels.attempts_key(self.spec.name)
            numbers: dict[str, int | str] = {task.trial_id: task.attempt for task in outbox}
            if self.uid:  # which run the numbers are of: workers skip an earlier run's tasks
                numbers[channels.RUN_FIELD] = self.uid
            pipe.hset(attempts, mapping=numbers)
            pipe.expire(attempts, channels.FLAG_TTL)
            # One LPUSH of every message, in order: workers pop from the other end, first published first.
            pipe.lpush(self.queue, *[self.message(task) for task in outbox])
        try:
            pipe.execute()  # redis-py retries a dropped connection itself
        except (redis.exceptions.RedisError, OSError) as exc:
            # Not sent again from here (a pipeline that failed midway may have been applied in
            # part): an attempt not published is re-published by its lease, free of charge; an
            # entry not acknowledged is read again (pending) and recorded once.
            log.warning("could not publish %d attempts and acknowledge %d results: %s", len(outbox), len(acks), exc)
            if acks:
                self.pending_first = True
                self.pending_after = "0"
            return
        if acks and self.unacked_dead:
            acked = set(acks)
            self.unacked_dead = {i: None for i in self.unacked_dead if i not in acked}

    def message(self, task: TrialTask) -> str:
        """The message kombu's Redis transport would store for ``send_task`` of this attempt."""
        timeout = self.spec.execution.trial_timeout
        task_id = channels.task_id(task.study, task.trial_id, task.attempt)
        headers, properties, body, _ = self.app.amqp.as_task_v2(
            task_id, TASK_NAME, kwargs={"task": None},
            soft_time_limit=timeout, time_limit=timeout + 60 if timeout else None, origin=self.origin,
            argsrepr="()",
            kwargsrepr=f"study={task.study} trial={task.trial_id} attempt={task.attempt} params={task.params}",
        )
        properties.update(
            delivery_mode=2, priority=0, body_encoding="base64", delivery_tag=str(uuid.uuid4()),
            delivery_info={"exchange": "", "routing_key": self.queue},
        )
        args, _, embed = body  # protocol 2: (args, kwargs, embed); the task serialised by pydantic
        body_json = f'[{json.dumps(args)}, {{"task": {task.model_dump_json()}}}, {json.dumps(embed)}]'
        return json.dumps({
            "body": base64.b64encode(body_json.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        })

    def adopt(self, task: TrialTask) -> None:
        self.uid = task.study_uid or self.uid
        self.inflight[task.trial_id] = task
        self._watch(task.trial_id, first=True)

    def stop(self, task: TrialTask) -> None:
        try:
            self.redis.set(channels.stop_key(task.study, task.trial_id), 1, ex=channels.FLAG_TTL)
        except _RECOVERABLE as exc:
            log.warning("could not flag %s to stop: %s", task.trial_id, exc)

    # Receiving ------------------------------------------------------------------------------

    def events(self, timeout: float) -> list[Event]:
        out: list[Event] = []
        if self.rate > BATCH_ABOVE:
            pause = self.last_read + min(BATCH_SECONDS, BATCH / self.rate) - time.time()
            if pause > 0:
                time.sleep(pause)
                timeout = max(0.0, timeout - pause)
        entries: list[tuple[bytes, dict]] = []
        started, read = time.time(), 0
        try:
            entries = self._read(timeout)
            while True:
                read += len(entries)
                for entry_id, fields in entries:
                    event = self._event(entry_id, fields)
                    if event is not None:
                        out.append(event)
                # A full read of nothing but dead letters (a flood): read on, so that the results
                # behind it are recorded before their leases are judged (they used to lapse behind
                # 50,000 junk entries and each trial was charged a failure).
                if len(entries) < READ_BATCH or out or time.time() - started > DRAIN_SECONDS:
                    break
                entries = self._read(0)
        except (redis.exceptions.RedisError, OSError) as exc:
            # A reply lost with the connection leaves its entries pending: read those again first.
            log.warning("result stream unavailable (%s); retrying", exc)
            self.group_ready = False
            self.pending_first = True
            self.pending_after = "0"
            time.sleep(min(timeout, 1.0))
        if self.letters:
            letters, self.letters = self.letters, []
            deadletter.push_many(self.redis, letters)
        now = time.time()
        if self.last_read:
            self.rate = 0.7 * self.rate + 0.3 * read / max(now - self.last_read, 1e-3)
        self.last_read = now
        out += self._liveness()
        return out

    def _read(self, timeout: float) -> list[tuple[bytes, dict]]:
        if not self.group_ready:
            self._create_group()
        try:
            if self.pending_first:  # entries delivered before but never acknowledged, oldest first
                entries = self._xread(self.pending_after, None)
                if entries:
                    self.pending_after = entries[-1][0]
                    return entries
                self.pending_first = False
                self.pending_after = "0"
            return self._xread(">", int(timeout * 1000) if timeout > 0 else None)
        except redis.exceptions.ResponseError as exc:
            # NOGROUP: Redis restarted empty; UNBLOCKED: the stream was deleted (FLUSHALL) under a
            # blocked read. Either way the group is created again (and the stream with it).
            log.warning("the result stream is gone (%s); creating it again", exc)
            self.group_ready = False
            self.pending_first = True
            self.pending_after = "0"
            return []

    def _xread(self, start: str, block: int | None) -> list[tuple[bytes, dict]]:
        reply = self.redis.xreadgroup(self.group, self.consumer, {self.stream: start}, count=READ_BATCH, block=block)
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return next(iter(reply.values()))[0] if reply else []
        return reply[0][1]

    def _create_group(self) -> None:
        try:
            self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.group_ready = True

    def _event(self, entry_id: bytes, fields: dict | None) -> Event | None:
        raw = (fields or {}).get(b"m")
        kind = (fields or {}).get(b"k")
        try:
            if raw is None:
                raise ValueError("an entry without a message (field 'm')")
            if kind == b"result":  # the common case, validated straight from the JSON text
                result = self._check(TrialResult.model_validate_json(raw))
                return self._result(result, entry_id)
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError(f"a message that is not an object: {type(body).__name__}")
            kind = body.pop("kind", "result")
            if kind == "progress":
                return Event(self._check(Progress.model_validate(body)), receipt=entry_id)
            if kind != "result":
                raise ValueError(f"unknown kind {kind!r}")
            result = self._check(TrialResult.model_validate(body))
        except (ValueError, TypeError, pydantic.ValidationError) as exc:  # ValidationError: a ValueError
            if fields is not None and entry_id not in self.unacked_dead:  # None: deleted, yet pending
                self.letters.append(deadletter.letter(self.stream, f"{type(exc).__name__}: {exc}",
                                                      raw if raw is not None else repr(fields), "controller"))
            self.unacked_dead[entry_id] = None
            return None
        return self._result(result, entry_id)

    def _check(self, message: TrialResult | Progress) -> TrialResult | Progress:
        """Refuse (ValueError: dead-lettered) what no worker of this study can have sent: a
        message for another study or an earlier run of it, an attempt this controller never published, a completed
        result without its final checkpoint (a forged one made the next generation's parent
        unusable and ended the study with an internal error)."""
        if message.study != self.spec.name:
            raise ValueError(f"a message for study {message.study!r} on {self.spec.name!r}'s stream")
        if self.uid and message.study_uid and message.study_uid != self.uid:
            raise ValueError(f"{message.trial_id} attempt {message.attempt} is from an earlier run of study "
                             f"{message.study!r} (run {message.study_uid}, this one is {self.uid})")
        task = self.inflight.get(message.trial_id)
        if task is not None and message.attempt > task.attempt:
            raise ValueError(f"{message.trial_id} attempt {message.attempt} was never published "
                             f"(its current attempt is {task.attempt})")
        if isinstance(message, TrialResult) and message.status is TrialStatus.COMPLETED and not message.checkpoint:
            raise ValueError(f"{message.trial_id} attempt {message.attempt}: a completed result without a checkpoint")
        return message

    def _result(self, result: TrialResult, entry_id: bytes) -> Event:
        task = self.inflight.get(result.trial_id)
        if task is not None and task.attempt <= result.attempt:
            self._forget(result.trial_id)
        return Event(result, receipt=entry_id)

    def ack(self, events: Sequence[Event]) -> None:
        """Acknowledge (XACK and XDEL) the entries of recorded events, and the dead letters, with
        the tick's :meth:`flush`: one round trip for both."""
        self.acks = [e.receipt for e in events if e.receipt is not None] + list(self.unacked_dead)

    # Liveness -------------------------------------------------------------------------------

    def _forget(self, trial_id: str) -> None:
        self.inflight.pop(trial_id, None)
        self.next_check.pop(trial_id, None)
        self.check_gap.pop(trial_id, None)
        self.beats.pop(trial_id, None)

    def _watch(self, trial_id: str, first: bool = False, gap: float | None = None) -> None:
        """Schedule the next read of ``trial_id``'s liveness key."""
        half = self.spec.execution.heartbeat_seconds / 2
        if first:
            gap = half
            self.beats.pop(trial_id, None)
        elif gap is None:  # no new beat: look again soon, backing off while it waits in the queue
            gap = min(2 * self.check_gap.get(trial_id, half), self._recheck())
        when = time.time() + gap
        self.check_gap[trial_id] = gap
        self.next_check[trial_id] = when
        heapq.heappush(self.checks, (when, trial_id))

    def _recheck(self) -> float:
        """After a new beat, the key is read again one heartbeat before the lease would lapse."""
        execution = self.spec.execution
        return max(execution.heartbeat_seconds / 2, execution.lease - execution.heartbeat_seconds)

    def _liveness(self) -> list[Event]:
        """Heartbeats of the in-flight attempts whose check is due: O(due), not O(in flight)."""
        now = time.time()
        if not self.checks or now - self.last_liveness < self.spec.execution.heartbeat_seconds / 2:
            return []
        self.last_liveness = now
        due: list[TrialTask] = []
        while self.checks and self.checks[0][0] <= now:
            when, trial_id = heapq.heappop(self.checks)
            if self.next_check.get(trial_id) == when and trial_id in self.inflight:
                due.append(self.inflight[trial_id])
        if not due:
            return []
        try:
            values = self.redis.mget([channels.alive_key(t.study, t.trial_id) for t in due])
        except _RECOVERABLE as exc:
            log.warning("liveness keys unreadable: %s", exc)
            for task in due:
                self._watch(task.trial_id, gap=self.spec.execution.heartbeat_seconds)
            return []
        out = []
        for task, raw in zip(due, values):
            if raw is None or raw == self.beats.get(task.trial_id):
                if raw is not None:  # an old beat: the lease runs; look again at half a heartbeat
                    self._watch(task.trial_id, gap=self.spec.execution.heartbeat_seconds / 2)
                else:
                    self._watch(task.trial_id)
                continue
            self.beats[task.trial_id] = raw
            self._watch(task.trial_id, gap=self._recheck())
            try:
                beat = json.loads(raw)
                out.append(Event(Progress(study=task.study, trial_id=task.trial_id, attempt=int(beat["attempt"]),
                                          step=int(beat.get("step", 0)), worker=beat.get("worker"),
                                          at=float(beat.get("at", now)))))
            except (ValueError, KeyError, TypeError, pydantic.ValidationError) as exc:
                log.warning("unreadable liveness key of %s: %s", task.trial_id, exc)
        return out

    def in_broker(self, tasks: Sequence[TrialTask]) -> set[str]:
        """Trials whose current attempt is still waiting in the trial queue, or was just taken
        from it by a worker (:meth:`_just_started`).

        Called only for attempts whose lease lapsed; looks through at most ``SCAN_LIMIT`` queued
        messages (oldest first, the end workers take from), and beyond that assumes the rest are
        still queued rather than lost.
        """
        wanted = {channels.task_id(t.study, t.trial_id, t.attempt): t.trial_id for t in tasks}
        found: set[str] = set()
        try:
            length = self.redis.llen(self.queue)
            for start in range(0, min(length, SCAN_LIMIT), 1000):
                for raw in self.redis.lrange(self.queue, -start - 1000, -start - 1):
                    tid = _message_id(raw)
                    if tid in wanted:
                        found.add(wanted[tid])
                if len(found) == len(wanted):
                    break
            if length > SCAN_LIMIT:
                return {t.trial_id for t in tasks}  # not all looked at: none is declared lost
            found |= self._just_started([t for t in tasks if t.trial_id not in found])
        except _RECOVERABLE as exc:
            log.warning("cannot inspect the trial queue: %s; assuming the tasks are still queued", exc)
            return {t.trial_id for t in tasks}
        return found

    def _just_started(self, tasks: Sequence[TrialTask]) -> set[str]:
        """Attempts a worker took from the queue since their liveness was last read: their key
        holds a beat of this attempt the controller has not seen. (Liveness is read on a schedule,
        so an attempt that waited in the queue about a lease and was taken just before its lease
        was checked used to be declared vanished and published again: duplicate work.) A worker
        that died leaves only a beat already seen, or none once its key's TTL ran out."""
        if not tasks:
            return set()
        values = self.redis.mget([channels.alive_key(t.study, t.trial_id) for t in tasks])
        out = set()
        for task, raw in zip(tasks, values):
            if raw is None or raw == self.beats.get(task.trial_id):
                continue
            try:
                if int(json.loads(raw)["attempt"]) == task.attempt:
                    out.add(task.trial_id)
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def close(self) -> None:
        try:
            self.flush()  # what the last tick acknowledged
            self.redis.close()
        except Exception:
            pass


_ID = re.compile(rb'"id": "([^"\\]+)"')  # the headers' "id" as kombu's JSON writes it


def _message_id(raw: bytes) -> str | None:
    """The Celery task id of a queued message, without parsing all of it (a regex, else JSON)."""
    match = _ID.search(raw)
    if match:
        return match.group(1).decode(errors="replace")
    try:
        return json.loads(raw)["headers"]["id"]
    except (ValueError, KeyError, TypeError):
        return None


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
        raise self._locked(info)

    def _locked(self, info: dict) -> StudyLockedError:
        left = self.client.pttl(self.key) / 1000
        return StudyLockedError(
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
