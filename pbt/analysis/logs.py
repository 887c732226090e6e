"""Reading what trials printed: the per-attempt logs the workers keep in the study's storage.

Written by :mod:`pbt.tasks.output` (bounded: the head and the tail of a long output), read by
``pbt logs`` and by ``pbt status``, which shows the last lines of a failed trial's log.
"""

from __future__ import annotations

import re

from pbt.errors import NotFoundError
from pbt.storage.base import ObjectStore
from pbt.tasks.output import log_key, logs_prefix

_ATTEMPT = re.compile(r"/attempt-(\d+)\.log$")


def attempts_logged(objects: ObjectStore, study: str, trial_id: str) -> list[int]:
    """The attempts of ``trial_id`` that left a log, in order."""
    found = []
    for info in objects.list(logs_prefix(study, trial_id)):
        match = _ATTEMPT.search(info.key)
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def read_log(objects: ObjectStore, study: str, trial_id: str, attempt: int) -> str:
    return objects.get_bytes(log_key(study, trial_id, attempt)).decode("utf-8", errors="replace")


def last_lines(objects: ObjectStore, study: str, trial_id: str, n: int = 5) -> list[str]:
    """The last ``n`` non-empty lines the trial's latest attempt printed ([] if none kept)."""
    attempts = attempts_logged(objects, study, trial_id)
    if not attempts:
        return []
    try:
        text = read_log(objects, study, trial_id, attempts[-1])
    except NotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()][-n:]
