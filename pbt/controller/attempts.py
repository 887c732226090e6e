"""The life cycle of trial attempts: publish, retry, leases, lost messages, early stops.

An *attempt* is one publication of a trial to the executor. Its task is published only after
the trial's record is durable (:meth:`Attempts.send` runs after the ledger's flush), so a
published task always has a record. Each attempt holds a lease: a trial that neither reports
nor heartbeats for ``execution.lease_seconds`` (default four heartbeats) is re-published.
``attempts`` on the record counts publications; ``failures`` counts attempts that failed or
whose worker went silent after it had started. A message the broker lost before any worker ran
it (a Redis restart, FLUSHALL) is re-published without costing an attempt, and so is an attempt
that failed because of its *worker* (``FailureScope.WORKER``: out of memory, storage or GPU
unusable there) — up to ``execution.max_worker_failures`` times per trial, after which further
ones are charged like any failure, so that a trial that exhausts every worker it meets cannot
be re-published for ever.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Sequence

from pbt.controller.ledger import Ledger
from pbt.controller.policy import EarlyStopDecision
from pbt.spec import StudySpec
from pbt.tasks.executor import Executor
from pbt.trial import FailureScope, Progress, Trial, TrialResult, TrialStatus, TrialTask

log = logging.getLogger("pbt.controller")

FALLBACK_DEPTH = 3  # older lineage checkpoints a worker may fall back to


class Attempts:
    """The attempts in flight, at most one per trial."""

    def __init__(
        self, spec: StudySpec, executor: Executor, ledger: Ledger, storage_uri: str, clock: Callable[[], float],
        required_metrics: Sequence[str],
    ) -> None:
        self.spec = spec
        # Besides the objective, what every evaluation must report (Policy.required_metrics).
        self.required_metrics = list(required_metrics)
        self.executor = executor
        self.ledger = ledger
        self.storage_uri = storage_uri
        self.clock = clock
        self.tasks: dict[str, TrialTask] = {}  # in-flight trial id -> its current attempt's task
        self.last_seen: dict[str, float] = {}
        # Lease deadlines as a heap, so a lease check looks only at attempts that may have lapsed:
        # (deadline, trial id), the entry current only while ``deadline[trial id]`` says so.
        self.deadlines: list[tuple[float, str]] = []
        self.deadline: dict[str, float] = {}
        self.last_beat: dict[str, tuple[int, float]] = {}  # trial id -> (attempt, at) of its latest heartbeat
        self.reported: set[str] = set()  # in-flight trials whose current attempt has reported in
        self.stop_sent: set[str] = set()
        self.worker_failures: dict[str, int] = {}  # trial id -> worker-scoped failures not charged
        self.outbox: list[TrialTask] = []
        self.last_lease_check = 0.0

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    def resume(self, trial: Trial) -> None:
        """A trial left in flight by a previous controller."""
        if self.executor.survives_controller:
            self.tasks[trial.id] = task = self.task(trial, trial.attempts)
            self.executor.adopt(task)
            self.last_seen[trial.id] = self.clock()  # give the running attempt a lease to report in
            self._expires(trial.id)
        else:
            self.publish(trial)

    def publish(self, trial: Trial) -> Trial:
        """Queue a new attempt; :meth:`send` submits it once its record is durable."""
        # A new attempt waits for a worker again: nobody is running it yet.
        trial = self.ledger.update(trial, attempts=trial.attempts + 1, status=TrialStatus.PENDING, worker=None)
        self.reported.discard(trial.id)
        self.tasks[trial.id] = task = self.task(trial, trial.attempts)
        self.last_seen[trial.id] = self.clock()
        self._expires(trial.id)
        self.outbox.append(task)
        return trial

    def send(self) -> None:
        """Submit what :meth:`publish` queued (call after the ledger's flush)."""
        outbox, self.outbox = self.outbox, []
        for task in outbox:
            if self.tasks.get(task.trial_id) is task:  # not superseded or finished meanwhile
                self.executor.submit(task)
        self.executor.flush()  # the tick's publications in one go

    # Events ---------------------------------------------------------------------------------

    def on_progress(self, trial: Trial, p: Progress) -> None:
        # A heartbeat proves life only when it is new: the liveness key of a worker killed a moment
        # ago still reads the same beat until its TTL runs out. Comparing the beat's own timestamp
        # with the previous one (never with this clock: workers' clocks may be skewed) lets the lease
        # run from the worker's last beat, so a dead attempt is noticed one lease after it died.
        beat = (p.attempt, p.at)
        if p.metrics is not None or not p.at or self.last_beat.get(trial.id) != beat:
            self.last_seen[trial.id] = self.clock()
            self.last_beat[trial.id] = beat
        current = p.attempt == trial.attempts
        if current:
            self.reported.add(trial.id)
        self.ledger.record_progress(trial, p, current)

    def on_result(self, trial: Trial, r: TrialResult) -> Trial | None:
        """Retry a failed attempt that may succeed again; else end the trial. Returns the ended trial."""
        self.last_seen[trial.id] = self.clock()
        retry = r.status is TrialStatus.FAILED and r.retryable
        if retry and r.attempt != trial.attempts:
            return None  # a superseded attempt failed; the current one is still running
        if self.worker_fault(trial, r):
            self.worker_failures[trial.id] = self.worker_failures.get(trial.id, 0) + 1
            log.warning("trial %s attempt %d: its worker could not run it, re-publishing at no cost: %s",
                        trial.id, r.attempt, first_line(r.error))
            trial = self.ledger.update(trial, timings=trial.timings.add(r.timings), worker=r.worker, error=r.error)
            self.publish(trial)
            return None
        if retry and trial.failures + 1 < self.spec.execution.max_attempts:
            log.warning("trial %s attempt %d failed, retrying: %s", trial.id, r.attempt, first_line(r.error))
            trial = self.ledger.update(trial, timings=trial.timings.add(r.timings), worker=r.worker, error=r.error,
                                       failures=trial.failures + 1)
            self.publish(trial)
            return None
        trial = self.ledger.record_result(trial, r, self.clock())
        self.tasks.pop(trial.id, None)
        self.last_seen.pop(trial.id, None)
        self.deadline.pop(trial.id, None)
        self.last_beat.pop(trial.id, None)
        self.worker_failures.pop(trial.id, None)
        if r.status is TrialStatus.FAILED:
            log.warning("trial %s failed: %s", trial.id, first_line(r.error))
        return trial

    def worker_fault(self, trial: Trial, r: TrialResult) -> bool:
        """The current attempt failed because of its worker, and the trial has not used up its free re-publications."""
        return (r.status is TrialStatus.FAILED and r.scope is FailureScope.WORKER and r.attempt == trial.attempts
                and self.worker_failures.get(trial.id, 0) < self.spec.execution.worker_failure_limit)

    # Leases and stops -----------------------------------------------------------------------

    def check_leases(self) -> list[Trial]:
        """Re-publish attempts silent for longer than their lease; returns trials that ended."""
        now = self.clock()
        if now - self.last_lease_check < min(1.0, self.spec.execution.heartbeat_seconds):
            return []  # O(in-flight) work: not on every tick
        self.last_lease_check = now
        lease = self.spec.execution.lease
        expired: dict[str, TrialTask] = {}
        while self.deadlines and self.deadlines[0][0] < now:
            when, trial_id = heapq.heappop(self.deadlines)
            if self.deadline.get(trial_id) != when or trial_id not in self.tasks:
                continue  # superseded by a later deadline, or the trial ended
            if now - self.last_seen[trial_id] > lease:
                expired[trial_id] = self.tasks[trial_id]
            else:  # it reported since: its lease runs from then
                self._expires(trial_id)
        if not expired:
            return []
        expired_tasks = list(expired.values())
        held = self.executor.in_broker(expired_tasks)
        ended = []
        for task in expired_tasks:
            trial = self.ledger.get(task.trial_id)
            if trial is None:
                self.deadline.pop(task.trial_id, None)
                continue
            if task.trial_id in held:
                self.last_seen[task.trial_id] = now  # still queued: not lost, just waiting for a worker
                self._expires(task.trial_id)
            elif task.trial_id not in self.reported:
                # The broker lost the message before any worker ran it (a Redis restart or
                # FLUSHALL): publish again; this is not the trial's fault and costs no attempt.
                log.warning("trial %s: attempt %d vanished from the broker; re-publishing", trial.id, trial.attempts)
                self.publish(trial)
            elif trial.failures + 1 >= self.spec.execution.max_attempts:
                result = self.on_result(trial, TrialResult(
                    study=trial.study, trial_id=trial.id, attempt=trial.attempts, status=TrialStatus.FAILED,
                    error=f"worker went silent for {lease:g}s on attempt {trial.attempts}; attempts exhausted",
                    finished_at=now,
                ))
                if result is not None:
                    ended.append(result)
            else:
                log.warning("trial %s: worker silent for %.0fs, re-publishing (attempt %d)", trial.id, lease,
                            trial.attempts + 1)
                self.publish(self.ledger.update(trial, failures=trial.failures + 1))
        return ended

    def _expires(self, trial_id: str) -> None:
        """(Re)schedule the lease check of ``trial_id`` at its deadline from ``last_seen``."""
        when = self.last_seen[trial_id] + self.spec.execution.lease
        self.deadline[trial_id] = when
        heapq.heappush(self.deadlines, (when, trial_id))

    def stop(self, decisions: Iterable[EarlyStopDecision]) -> None:
        """Ask the executor to stop these running trials (once each), recording why."""
        for decision in decisions:
            task = self.tasks.get(decision.trial_id)
            if task is None or decision.trial_id in self.stop_sent:
                continue
            self.stop_sent.add(decision.trial_id)
            trial = self.ledger.get(decision.trial_id)
            if trial is not None:
                stop = {"stop_reason": decision.reason}
                if decision.step is not None:
                    stop["stop_step"] = decision.step
                self.ledger.update(trial, metadata={**trial.metadata, **stop})
            self.executor.stop(task)

    def abandon(self, reason: str) -> None:
        """The study ends now: stop every attempt in flight and record its trial as stopped."""
        for trial_id, task in list(self.tasks.items()):
            self.executor.stop(task)
            trial = self.ledger.get(trial_id)
            if trial is not None and not trial.status.terminal:
                self.ledger.update(trial, status=TrialStatus.STOPPED, error=f"the study ended: {reason}",
                                   finished_at=self.clock())
        self.tasks.clear()
        self.last_seen.clear()
        self.deadlines.clear()
        self.deadline.clear()
        self.outbox.clear()

    # Tasks ----------------------------------------------------------------------------------

    def task(self, trial: Trial, attempt: int) -> TrialTask:
        """The message for one attempt of ``trial``: everything a worker needs, nothing more."""
        execution = self.spec.execution
        return TrialTask(
            study=self.spec.name,
            trial_id=trial.id,
            number=trial.number,
            attempt=attempt,
            params=trial.params,
            steps=trial.steps,
            start_lineage_steps=trial.start_lineage_steps,
            parent=trial.parent,
            parent_checkpoint=trial.parent_checkpoint,
            fallback_checkpoints=self._fallbacks(trial),
            storage=self.storage_uri,
            trainer=self.spec.trainer.path,
            trainer_config=self.spec.trainer.config,
            objective_metric=self.spec.objective.metric,
            further_objective_metrics=self.required_metrics,
            seed=self.spec.seed,
            checkpoint_every=execution.checkpoint_every,
            evaluate_every_checkpoint=execution.evaluate_every_checkpoint,
            published_at=self.clock(),
            heartbeat_seconds=execution.heartbeat_seconds,
            lease_seconds=execution.lease,
            study_uid=self.study_uid(),
        )

    def study_uid(self) -> str | None:
        """Which run of the study this is: its first trial's creation time, durable before any
        task is published and the same when the study resumes, different when a study of the same
        name is started again after its records were deleted (whose workers may still post an
        earlier run's results to the same stream, for the same trial ids and attempts)."""
        first = self.ledger.get("t000000")
        return f"{first.created_at:.6f}" if first is not None and first.created_at else None

    def _fallbacks(self, trial: Trial) -> list[str]:
        """Older checkpoints along the lineage, tried in order if the parent's fails to verify."""
        out: list[str] = []
        node = self.ledger.get(trial.parent)
        node = self.ledger.get(node.parent) if node else None
        while node is not None and len(out) < FALLBACK_DEPTH:
            if node.checkpoint and not node.checkpoint_deleted:
                out.append(node.checkpoint)
            node = self.ledger.get(node.parent)
        return out


def first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""
