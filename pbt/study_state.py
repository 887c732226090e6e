"""Where a study stands, in one vocabulary: what ``pbt status`` shows, ``pbt report`` sums up and ``pbt stop`` checks.

A study's state is derived, never stored: from how many of its trials are in flight (records not
yet terminal) and two small documents kept beside its records —

* ``state``, written by the controller when a run of it ends: ``{"finished": bool, "paused": bool,
  "at": unix seconds, "best": trial id or None, "gc_bytes_freed": int, "checkpoints_kept": int}``;
* ``control``, written by ``pbt stop`` / ``pbt resume``: ``{"paused": bool, "at": unix seconds,
  "by": command}``, read by the controller every couple of seconds.

Trials in flight come first: the records are the truth while anything runs, whatever a document
from an earlier run says. It lives here, below the controller and the readers alike, because the
controller writes what it is derived from.

*Why* a study ended (budget spent, too many failures, a fatal error, a pause) is a separate fact,
not a sixth state: a controller that records it adds a key to the ``state`` document, read here by
a function beside :func:`study_state`, with its values as an enum beside :class:`StudyState`.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any


class StudyState(str, Enum):
    RUNNING = "running"  # trials in flight
    PAUSING = "pausing"  # trials in flight, a pause asked for: they finish, nothing new is published
    PAUSED = "paused"  # nothing in flight; `pbt resume` continues it
    FINISHED = "finished"  # nothing in flight; the controller ended the study
    IDLE = "idle"  # nothing in flight, neither finished nor paused: not started, or its controller is gone

    def __str__(self) -> str:  # the word, in f-strings too, on every Python version
        return self.value

    @property
    def active(self) -> bool:
        """Trials are in flight: progress rates and an ETA mean something."""
        return self in (StudyState.RUNNING, StudyState.PAUSING)

    @property
    def settled(self) -> bool:
        """Finished or paused: nothing changes until someone runs or resumes it."""
        return self in (StudyState.FINISHED, StudyState.PAUSED)

    @property
    def summary(self) -> str:
        """The state as a report sums it up: ``finished``, ``paused`` or ``in progress``."""
        return self.value if self.settled else "in progress"


def study_state(
    in_flight: int, state: Mapping[str, Any] | None = None, control: Mapping[str, Any] | None = None
) -> StudyState:
    """The state of a study with ``in_flight`` trials not yet terminal and these documents.

    ``state`` and ``control`` are the documents described above, ``None`` when not written yet.
    """
    state = state or {}
    control = control or {}
    if in_flight:
        return StudyState.PAUSING if control.get("paused") else StudyState.RUNNING
    if state.get("finished"):
        return StudyState.FINISHED
    if state.get("paused") or control.get("paused"):
        return StudyState.PAUSED
    return StudyState.IDLE
