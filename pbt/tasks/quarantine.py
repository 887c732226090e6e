"""How a plain Celery worker survives messages it cannot read, and takes itself out when unfit.

Celery, left alone, dies on some malformed messages ("Unrecoverable error") and, because the
message is unacknowledged, the broker hands it to the next worker, which dies too. Each way in
is closed with one of Celery's or kombu's own extension points, configured on the worker's app
(:mod:`pbt.tasks.worker`), so that ``celery -A pbt.tasks worker`` stays a plain Celery worker:

* :class:`Transport` (``broker_transport``), kombu's Redis transport with a channel that sets
  aside a list entry that is not JSON, or JSON that is not a kombu message, instead of raising
  out of the event loop (kombu decodes a ``BRPOP`` reply before anyone can catch the error, and
  the entry is already off the list, so nothing else could);
* :class:`Consumer` (``worker_consumer``), Celery's consumer with its ``on_decode_error``,
  ``on_unknown_message``, ``on_unknown_task`` and ``on_invalid_task`` hooks dead-lettering the
  message, and a task handler that does the same for anything Celery's strategy raises on a
  message of the right type but the wrong shape (a body that is not ``[args, kwargs, embed]``)
  and for any task that is not pbt's;
* :class:`TrialRequest` (the task's ``Request``), which lets a pool process leave after it has
  reported its trial: it acknowledges the message instead of treating the exit as a lost worker,
  and for a worker that keeps failing for environment reasons stops the worker.

Every message set aside is acknowledged (so it never returns) and copied to the dead-letter
list (:mod:`pbt.tasks.deadletter`), which ``pbt status`` counts and ``pbt deadletters`` shows.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any

from celery.worker import state
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis
from kombu.utils.objects import cached_property
from vine import promise as vine_promise

from pbt.errors import ServiceError
from pbt.tasks import channels, deadletter
from pbt.tasks.celery_app import TASK_NAME

log = logging.getLogger("pbt.worker")

SEEN_BY = "worker"


class ProcessUnfit(SystemExit):
    """Raised by the task in a pool process *after* it reported its trial: the process exits.

    ``retire``: the whole worker should stop taking tasks (its environment is unusable), not
    only this process (out of memory). Picklable, so the pool can pass it to the main process.
    """

    def __init__(self, reason: str, retire: bool = False) -> None:
        super().__init__(ServiceError.exit_code if retire else 0, reason, retire)
        self.reason = reason
        self.retire = retire

    def __reduce__(self) -> tuple:
        return (type(self), (self.reason, self.retire))


def set_aside(client: Any, queue: str, reason: str, body: Any) -> None:
    """Dead-letter one message (never raises: a broker that is down loses the letter, not the worker)."""
    deadletter.push(client, deadletter.letter(queue or "?", reason, body, SEEN_BY))


def _raw_problem(message: Any) -> str | None:
    """Why a decoded list entry is not a message kombu can build, or None."""
    if not isinstance(message, dict):
        return f"not a kombu message: a JSON {type(message).__name__}"
    properties = message.get("properties")
    if not isinstance(properties, dict):
        return "not a kombu message: no 'properties' object"
    if not isinstance(properties.get("delivery_tag"), str):
        return "not a kombu message: no delivery tag"
    if not isinstance(properties.get("delivery_info", {}), dict):
        return "not a kombu message: 'delivery_info' is not an object"
    for field in ("headers",):
        if message.get(field) is not None and not isinstance(message.get(field), dict):
            return f"not a kombu message: {field!r} is not an object"
    for field in ("content-type", "content-encoding"):
        if message.get(field) is not None and not isinstance(message.get(field), str):
            return f"not a kombu message: {field!r} is not a string"
    body = message.get("body")
    if body is not None and not isinstance(body, str):
        return "not a kombu message: the body is not a string"
    encoding = properties.get("body_encoding")
    if encoding not in (None, "base64"):
        return f"unknown body encoding {str(encoding)[:40]!r}"
    if encoding == "base64" and body:
        try:
            base64.b64decode(body.encode(), validate=True)
        except (binascii.Error, ValueError, UnicodeError):
            return "the body is not valid base64"
    return None


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, but an undecodable list entry is dead-lettered, not raised."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return super()._brpop_read(**options)
        except (ValueError, TypeError) as exc:  # JSONDecodeError, kombu's object hook, bytes mishaps
            self._set_aside(exc)
            return True

    def _get(self, queue: str) -> Any:
        while True:
            try:
                return super()._get(queue)
            except (ValueError, TypeError) as exc:
                self._set_aside(exc, queue)

    def _set_aside(self, exc: Exception, queue: str = "") -> None:
        body = getattr(exc, "doc", None)  # a JSONDecodeError keeps the text it could not parse
        reason = f"not JSON: {exc}" if body is not None else f"cannot decode: {type(exc).__name__}: {exc}"
        try:
            with self.conn_or_acquire() as client:
                set_aside(client, queue or "(a queue of this worker)", reason,
                          body if body is not None else "(not kept)")
        except Exception as err:  # never let the bookkeeping take the worker down
            log.warning("dead-lettered a message (%s) but could not store it: %s", reason, err)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`, checking each entry's shape before delivery."""

    Channel = Channel

    def _deliver(self, message: Any, queue: str) -> None:
        problem = _raw_problem(message)
        if problem is None:
            return super()._deliver(message, queue)
        channel = next((c for c in self.channels if c), None)
        try:
            if channel is not None:
                with channel.conn_or_acquire() as client:
                    set_aside(client, queue, problem, json.dumps(message, default=str))
        except Exception as err:
            log.warning("dead-lettered a message from %s (%s) but could not store it: %s", queue, problem, err)
        return None


class Consumer(CeleryConsumer):
    """Celery's consumer; every message it cannot turn into a pbt task is dead-lettered."""

    @cached_property
    def _redis(self) -> Any:
        return channels.redis_client(self.app.conf.broker_url)

    def _set_aside(self, message: Any, reason: str) -> None:
        queue = (getattr(message, "delivery_info", None) or {}).get("routing_key") or "?"
        set_aside(self._redis, queue, reason, getattr(message, "body", None))

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._set_aside(message, f"cannot decode ({message.content_type}): {exc}")
        message.ack()

    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._set_aside(message, "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._set_aside(message, f"unknown task: {exc}")
        _reject(message, self.connection_errors)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._set_aside(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)

    def create_task_handler(self, promise: Any = vine_promise) -> Any:
        handle = super().create_task_handler(promise)
        errors = self.connection_errors

        def on_task_received(message: Any) -> Any:
            headers = message.headers if isinstance(message.headers, dict) else {}
            name = headers.get("task")
            if name != TASK_NAME:
                self._set_aside(message, f"not a pbt task ({str(name)[:100]!r}); this worker runs {TASK_NAME} only")
                return _reject(message, errors)
            problem = _envelope_problem(message, headers)
            if problem is not None:
                self._set_aside(message, problem)
                return _reject(message, errors)
            try:
                return handle(message)
            except errors:
                raise
            except Exception as exc:  # Celery's strategy on a body of the wrong shape, and its kin
                self._set_aside(message, f"malformed task message: {type(exc).__name__}: {exc}")
                return _reject(message, errors)

        return on_task_received


def _envelope_problem(message: Any, headers: dict) -> str | None:
    """What is wrong with a ``pbt.run_trial`` message as Celery will read it, before Celery reads it.

    pbt publishes ``[[], {"task": {...}}, {}]`` with no ETA, no expiry and no callbacks, so
    anything else is refused here rather than failing later in the pool, or being held in the
    worker's memory until a far-away ETA, or running callbacks a sender chose.
    """
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= 200:
        return "malformed task message: no usable task id"
    for field in ("eta", "expires", "countdown"):
        if headers.get(field) is not None:
            return f"malformed task message: pbt tasks carry no {field!r}"
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, (list, tuple)) and len(limits) == 2
        and all(x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < 1e9)
                for x in limits)
    ):
        return f"malformed task message: timelimit {str(limits)[:60]} is not [hard, soft] seconds"
    try:
        payload = message.decode()
    except Exception as exc:  # ContentDisallowed (pickle), DecodeError, and their kin
        return f"cannot decode ({message.content_type}): {type(exc).__name__}: {exc}"
    if not (isinstance(payload, (list, tuple)) and len(payload) == 3):
        return f"malformed task message: the body is a {type(payload).__name__}, not [args, kwargs, embed]"
    args, kwargs, embed = payload
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        return "malformed task message: args is not a list or kwargs is not a mapping"
    if embed is not None and not isinstance(embed, dict):
        return "malformed task message: embed is not a mapping"
    if any((embed or {}).get(k) for k in ("callbacks", "errbacks", "chain", "chord")):
        return "malformed task message: pbt tasks carry no callbacks, errbacks, chain or chord"
    return None


def _reject(message: Any, errors: tuple) -> None:
    """Drop ``message`` for good (acknowledged, not requeued), whatever state it is in."""
    if getattr(message, "acknowledged", False):
        return
    try:
        message.reject(requeue=False)
    except errors:
        raise
    except Exception as exc:
        log.warning("could not drop a malformed message: %s", exc)


class TrialRequest(Request):
    """Celery's request, for a pool process that exits on purpose after reporting its trial."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> Any:
        exc = getattr(exc_info, "exception", None)
        exc = getattr(exc, "exc", exc)  # billiard wraps it with its traceback
        if not isinstance(exc, ProcessUnfit):
            return super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
        state.task_ready(self)
        if self.task.acks_late:
            self.acknowledge()  # the trial was reported: the message is done with
        self.send_event("task-succeeded", result=repr(exc.reason), runtime=None)
        if exc.retire:
            retire(exc.reason)
        else:
            log.warning("replaced the pool process that ran %s: %s", self.id, exc.reason)
        return None


def retire(reason: str) -> None:
    """Stop this worker: it takes no more tasks and exits with the environment-error status."""
    log.critical("worker retiring, it takes no more tasks: %s", reason)
    state.should_stop = ServiceError.exit_code
