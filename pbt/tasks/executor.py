"""What the controller needs from whatever runs trials: submit, receive events, stop, close.

Two implementations: :class:`pbt.tasks.embedded.EmbeddedExecutor` (worker processes on this
machine, the default) and :class:`pbt.tasks.distributed.CeleryExecutor` (Celery workers
anywhere, through Redis). Both run the same :func:`pbt.tasks.attempt.run_attempt`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pbt.trial import Progress, TrialResult, TrialTask


@dataclass
class Event:
    """A result or a heartbeat, plus whatever the executor needs to acknowledge it later."""

    message: TrialResult | Progress
    receipt: Any = field(default=None, repr=False)


class Executor(ABC):
    #: Whether tasks keep running when the controller process dies (Celery: yes; embedded: no).
    #: A resumed controller re-publishes in-flight trials at once only when this is False.
    survives_controller: bool = False

    @abstractmethod
    def submit(self, task: TrialTask) -> None: ...

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Publish what :meth:`submit` was given this tick; called once per tick, after the submits
        and the tick's :meth:`ack` (an executor may send its acknowledgements with its publications)."""

    @abstractmethod
    def events(self, timeout: float) -> list[Event]:
        """Wait up to ``timeout`` seconds for results and heartbeats."""

    def ack(self, events: Sequence[Event]) -> None:  # noqa: B027 - optional hook
        """Called once the events are durably recorded; at-least-once executors ack here."""

    def adopt(self, task: TrialTask) -> None:  # noqa: B027 - optional hook
        """Track an attempt published by a previous controller (executors that survive it)."""

    @abstractmethod
    def stop(self, task: TrialTask) -> None:
        """Ask the attempt running ``task`` to stop (cooperatively, at its next chunk)."""

    def in_broker(self, tasks: Sequence[TrialTask]) -> set[str]:
        """Trial ids whose task the broker still holds (queued or unacked); used for leases."""
        return {t.trial_id for t in tasks}

    @abstractmethod
    def close(self) -> None: ...
