"""Test doubles for the controller: a fake clock, an in-memory executor and a no-op lease.

With these, a :class:`~pbt.controller.loop.Controller` runs a study in this process, tick by
tick, in milliseconds: the test decides what each attempt reports and when, and time moves
only when the test (or an idle tick) moves it, so lease expiry needs no sleeping::

    clock = FakeClock()
    executor = InMemoryExecutor(clock)
    controller = Controller(spec, executor, LocalObjectStore(tmp_path), NoLease(), clock=clock)
    controller.start()
    executor.complete("t000000", objective=0.5)
    controller.tick(executor.events(0))

Shipped with the package, as dramatiq ships its stub broker, so that users can test a policy
of their own through the real controller.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pbt.storage.keys import checkpoint_name
from pbt.tasks.executor import Event, Executor
from pbt.trial import MetricReport, Progress, TrialResult, TrialStatus, TrialTask


class FakeClock:
    """A clock that moves only when told to: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class NoLease:
    """A study lease that is always granted (one controller per test)."""

    def acquire(self) -> None:
        pass

    def renew(self) -> None:
        pass

    def release(self) -> None:
        pass


Runner = Callable[[TrialTask], TrialResult]


class InMemoryExecutor(Executor):
    """Holds submitted tasks until the test answers them; nothing runs on its own.

    * ``submitted`` — every task ever submitted, in order; ``waiting`` — the current attempt of
      each trial not yet answered, by trial id; ``stops`` — trial ids asked to stop;
      ``acked`` — events acknowledged by the controller.
    * :meth:`complete`, :meth:`fail`, :meth:`progress` queue what the attempt reports;
      :meth:`lose` forgets a task as a broker that lost its message would; ``held`` is the set
      of trial ids :meth:`in_broker` claims are still queued.
    * With ``runner`` (a function of the task returning its result), every submitted task is
      answered at the next :meth:`events` call, in submission order: a whole study runs.
    * :meth:`events` returns what is queued; when nothing is, it advances the clock by the
      ``timeout`` a real executor would have waited.
    """

    def __init__(self, clock: FakeClock, runner: Runner | None = None, *, survives_controller: bool = False) -> None:
        self.clock = clock
        self.runner = runner
        self.survives_controller = survives_controller
        self.submitted: list[TrialTask] = []
        self.waiting: dict[str, TrialTask] = {}
        self.stops: list[str] = []
        self.acked: list[Event] = []
        self.held: set[str] = set()
        self._events: list[Event] = []

    # Executor -------------------------------------------------------------------------------

    def submit(self, task: TrialTask) -> None:
        self.submitted.append(task)
        self.waiting[task.trial_id] = task

    def adopt(self, task: TrialTask) -> None:
        self.waiting[task.trial_id] = task

    def events(self, timeout: float) -> list[Event]:
        if self.runner is not None:
            for task in list(self.waiting.values()):
                self._answer(self.runner(task))
        out, self._events = self._events, []
        if not out:
            self.clock.advance(timeout)
        return out

    def ack(self, events: Sequence[Event]) -> None:
        self.acked.extend(events)

    def stop(self, task: TrialTask) -> None:
        self.stops.append(task.trial_id)

    def in_broker(self, tasks: Sequence[TrialTask]) -> set[str]:
        return {t.trial_id for t in tasks if t.trial_id in self.held}

    def close(self) -> None:
        pass

    # What attempts report -------------------------------------------------------------------

    def task(self, trial_id: str) -> TrialTask:
        """The waiting attempt of ``trial_id`` (KeyError if none)."""
        return self.waiting[trial_id]

    def complete(self, trial_id: str, objective: float, *, steps: int | None = None) -> TrialResult:
        """The waiting attempt completes with ``objective`` and a final checkpoint."""
        return self._answer(completed(self.task(trial_id), objective, steps=steps))

    def fail(self, trial_id: str, error: str = "boom", *, retryable: bool = True, steps: int = 0) -> TrialResult:
        task = self.task(trial_id)
        return self._answer(TrialResult(
            study=task.study, trial_id=task.trial_id, attempt=task.attempt, status=TrialStatus.FAILED,
            steps_done=steps, error=error, retryable=retryable, finished_at=self.clock(),
        ))

    def progress(self, trial_id: str, step: int, metrics: dict[str, float] | None = None) -> Progress:
        """A heartbeat from the waiting attempt at ``step``, with optional intermediate metrics."""
        task = self.task(trial_id)
        report = None
        if metrics is not None:
            report = MetricReport(step=step, lineage_step=task.start_lineage_steps + step, values=metrics)
        p = Progress(study=task.study, trial_id=trial_id, attempt=task.attempt, step=step, metrics=report,
                     worker="memory", at=self.clock())
        self._events.append(Event(p))
        return p

    def lose(self, trial_id: str) -> TrialTask:
        """Forget the waiting attempt without a word, as a broker that lost its message."""
        return self.waiting.pop(trial_id)

    def _answer(self, result: TrialResult) -> TrialResult:
        self.waiting.pop(result.trial_id, None)
        self._events.append(Event(result))
        return result


def completed(task: TrialTask, objective: float, *, steps: int | None = None) -> TrialResult:
    """A completed result for ``task``: ``steps`` trained (default: all), ``objective`` reported."""
    steps = task.steps if steps is None else steps
    metrics = [MetricReport(step=steps, lineage_step=task.start_lineage_steps + steps,
                            values={task.objective_metric: objective})]
    return TrialResult(
        study=task.study, trial_id=task.trial_id, attempt=task.attempt, status=TrialStatus.COMPLETED,
        steps_done=steps, metrics=metrics, objective=objective,
        checkpoint=checkpoint_name(task.study, task.trial_id, steps), warm_start=task.parent_checkpoint,
        worker="memory",
    )
