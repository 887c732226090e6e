"""Dead letters: messages nobody could decode or validate, set aside instead of retried forever.

A worker that receives a trial message it cannot decode or validate, and a controller that
receives such a result or progress message, acknowledge it (so it never comes back to block a
queue or kill the next worker) and copy it here with the reason: a bounded Redis list,
newest first, that ``pbt status`` counts and ``pbt deadletters`` shows. Only a prefix of each
body is kept, so a flood of large messages cannot grow Redis without bound.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger("pbt.deadletter")

KEY = "pbt:deadletters"
MAX_LETTERS = 1000  # the list is trimmed to this many, newest kept
MAX_BODY = 2000  # characters of each body kept


@dataclass(frozen=True)
class DeadLetter:
    """One message set aside: where it came from, why, and the start of its body."""

    at: float  # unix seconds
    queue: str  # the queue it was read from
    reason: str  # why it was refused (decode or validation error, in one line)
    seen_by: str  # "worker <host>" or "controller <host>"
    body: str  # the first MAX_BODY characters of the raw body

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def letter(queue: str, reason: str, body: Any, seen_by: str) -> DeadLetter:
    """A dead letter for ``body`` (bytes, str or anything else: stored as text, truncated)."""
    if isinstance(body, bytes):
        text = body[:MAX_BODY].decode("utf-8", errors="replace")
    elif isinstance(body, str):
        text = body[:MAX_BODY]
    else:
        text = repr(body)[:MAX_BODY]
    reason = " ".join(str(reason).split())[:500]
    return DeadLetter(time.time(), queue, reason, f"{seen_by} {socket.gethostname()}", text)


def push(client: Any, dead: DeadLetter) -> None:
    """Store ``dead`` (newest first, at most MAX_LETTERS kept); never raises."""
    log.warning("dead-lettered a message from %s: %s", dead.queue, dead.reason)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.lpush(KEY, json.dumps(dead.to_json()))
        pipe.ltrim(KEY, 0, MAX_LETTERS - 1)
        pipe.execute()
    except Exception as exc:  # the broker is down: the message is dropped, the log line stays
        log.warning("could not store the dead letter: %s", exc)


def push_many(client: Any, letters: list[DeadLetter], shown: int = 3) -> None:
    """Store ``letters`` in one round trip, logging the first ``shown`` and a count of the rest
    (a flood of junk must cost neither a round trip nor a log line per message); never raises."""
    for dead in letters[:shown]:
        log.warning("dead-lettered a message from %s: %s", dead.queue, dead.reason)
    if len(letters) > shown:
        log.warning("dead-lettered %d more messages from %s", len(letters) - shown, letters[shown].queue)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.lpush(KEY, *[json.dumps(dead.to_json()) for dead in letters[-MAX_LETTERS:]])
        pipe.ltrim(KEY, 0, MAX_LETTERS - 1)
        pipe.execute()
    except Exception as exc:  # the broker is down: the messages are dropped, the log lines stay
        log.warning("could not store %d dead letters: %s", len(letters), exc)


def count(client: Any) -> int:
    return int(client.llen(KEY))


def read(client: Any, limit: int = 50) -> list[DeadLetter]:
    """The newest ``limit`` dead letters."""
    out = []
    for raw in client.lrange(KEY, 0, max(0, limit - 1)):
        try:
            out.append(DeadLetter(**json.loads(raw)))
        except (ValueError, TypeError):
            continue
    return out


def clear(client: Any) -> int:
    """Drop every dead letter; returns how many there were."""
    pipe = client.pipeline()
    pipe.llen(KEY)
    pipe.delete(KEY)
    n, _ = pipe.execute()
    return int(n)
