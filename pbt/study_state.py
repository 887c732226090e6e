"""Where a study stands, in one vocabulary: what ``pbt status`` shows, ``pbt report`` sums up and ``pbt stop`` checks.

A study's state is derived, never stored: from how many of its trials are in flight (records not
yet terminal) and two small documents kept beside its records —

* ``state``, written by the controller when a run of it ends: ``{"finished": bool, "paused": bool,
  "outcome": Outcome, "reason": EndReason, "message": str or None, "error": str or None, "at": unix seconds,
  "best": trial id or None, "gc_bytes_freed": int, "checkpoints_kept": int}``;
* ``control``, written by ``pbt stop`` / ``pbt resume``: ``{"paused": bool, "at": unix seconds,
  "by": command}``, read by the controller every couple of seconds.

Trials in flight come first: the records are the truth while anything runs, whatever a document
from an earlier run says. It lives here, below the controller and the readers alike, because the
controller writes what it is derived from.

*Why* a run ended is a separate fact, not a sixth state: :class:`Outcome` (did it produce a
result) and :class:`EndReason` (what ended it), in the ``state`` document, read by :func:`ending`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any


class StudyState(str, Enum):
    """Where a study stands, derived from its records: running, pausing, paused, finished or idle."""

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


class Outcome(str, Enum):
    """What a run of the controller produced: succeeded, failed or paused; decides ``pbt run``'s exit status."""

    SUCCEEDED = "succeeded"  # ended with a best trial
    FAILED = "failed"  # aborted (a fatal error, too many failures) or ended with no usable trial
    PAUSED = "paused"  # `pbt stop`: nothing in flight, `pbt resume` continues it

    def __str__(self) -> str:
        return self.value


class EndReason(str, Enum):
    """What ended a run of the controller (``reason.text`` says it in words); values below."""

    TOTAL_STEPS = "total_steps"  # budget.total_steps is spent
    MAX_TRIALS = "max_trials"  # budget.max_trials trials were created
    ALGORITHM = "algorithm"  # the algorithm has nothing more to try (grid done, num_trials reached)
    FATAL_ERROR = "fatal_error"  # an error every trial would hit (the trainer and the study disagree)
    MAX_FAILED_TRIALS = "max_failed_trials"  # execution.max_failed_trials trials failed
    INITIAL_FAILURES = "initial_failures"  # execution.max_initial_failures trials failed before any completed
    NO_USABLE_TRIAL = "no_usable_trial"  # the budget ended with no completed trial
    PAUSED = "paused"  # `pbt stop`

    def __str__(self) -> str:
        return self.value

    @property
    def text(self) -> str:
        """The reason in words, for status lines and reports."""
        return _REASON_TEXT[self]


_REASON_TEXT = {
    EndReason.TOTAL_STEPS: "the step budget is spent",
    EndReason.MAX_TRIALS: "the trial budget is spent",
    EndReason.ALGORITHM: "the algorithm has nothing more to try",
    EndReason.FATAL_ERROR: "a trial hit an error every trial would hit",
    EndReason.MAX_FAILED_TRIALS: "too many trials failed (execution.max_failed_trials)",
    EndReason.INITIAL_FAILURES: "trials kept failing before any completed (execution.max_initial_failures)",
    EndReason.NO_USABLE_TRIAL: "no trial completed",
    EndReason.PAUSED: "paused with pbt stop",
}


@dataclass(frozen=True)
class Ending:
    """How the controller's last run ended: outcome, reason, and for a failure what went wrong."""

    outcome: Outcome
    reason: EndReason
    message: str | None = None  # one line for people
    error: str | None = None  # the failed trial's whole error, with its traceback

    def summary(self) -> str:
        """``succeeded: the step budget is spent`` / ``failed: <message>``."""
        return f"{self.outcome}: {self.message or self.reason.text}"


def ending(state: Mapping[str, Any] | None) -> Ending | None:
    """How the controller's last run ended, None before one ended (or for a study written
    before runs recorded why they ended)."""
    state = state or {}
    try:
        return Ending(Outcome(state["outcome"]), EndReason(state["reason"]), state.get("message"), state.get("error"))
    except (KeyError, ValueError):
        return None
