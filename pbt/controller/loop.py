"""The controller: the only part of pbt that decides anything.

Each tick it receives results and heartbeats from the executor, records them, asks the policy
for new trials for the free slots, re-publishes trials whose lease expired, stops what the
policy wants stopped, and garbage-collects checkpoints — then makes **one durable journal
write**, and only after it acknowledges the events and publishes the new tasks. A published
task therefore always has a durable record, and a result is acknowledged only once it is
durable. Kill the controller at any moment and start it again, and it resumes.

The tick composes small parts, each with one job: the :class:`~pbt.controller.ledger.Ledger`
(records and totals), the :mod:`~pbt.controller.ordering` (when the policy sees a result), the
:class:`~pbt.controller.attempts.Attempts` (publish, retry, leases, stops), the
:class:`~pbt.controller.gc.GarbageCollector` and the operator's
:class:`~pbt.controller.control.Control` switches. Time comes from an injectable ``clock``, so
the decisions can be unit-tested with an in-memory executor and a fake clock
(:mod:`pbt.testing.memory`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from pbt.controller.attempts import Attempts
from pbt.controller.control import Control
from pbt.controller.failures import Abort, FailureRules, ending
from pbt.controller.gc import CheckpointCollector, GarbageCollector
from pbt.controller.lease import Lease
from pbt.controller.ledger import Ledger, Listener, Snapshot
from pbt.controller.ordering import make_ordering
from pbt.controller.policies import make_policy
from pbt.controller.stopping import EarlyStopping
from pbt.errors import SpecError, StudyFailedError, TemporaryPolicyError
from pbt.spec import StudySpec
from pbt.storage.base import ObjectStore
from pbt.storage.checkpoints import CheckpointStore
from pbt.storage.study_store import StudyStore
from pbt.study_state import EndReason
from pbt.tasks.executor import Event, Executor
from pbt.trial import FailureScope, Progress, Suggestion, Trial

log = logging.getLogger("pbt.controller")

#: Fields that define what a study *is*; a resumed study must match them. Budget and
#: execution may change between runs (give a study more steps, more parallelism).
IDENTITY_FIELDS = ("objective", "parameters", "algorithm", "trainer", "seed")

__all__ = ["IDENTITY_FIELDS", "Controller", "Snapshot"]


class Controller:
    def __init__(
        self,
        spec: StudySpec,
        executor: Executor,
        objects: ObjectStore,
        lease: Lease,
        *,
        observer: Callable[[Snapshot], None] | None = None,
        record_listeners: Sequence[Listener] = (),
        poll_interval: float = 0.2,
        gc_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.executor = executor
        self.lease = lease
        self.observer = observer
        self.poll_interval = poll_interval
        self.clock = clock
        self.store = StudyStore(objects, spec.name)
        self.policy = make_policy(spec)
        self.ledger = Ledger(self.store, spec.objective)
        # Told of every record change, on the tick's thread: keep them to a dictionary update
        # (pbt.tensorboard.LiveTensorBoard hands the writing to a thread of its own).
        self.ledger.listeners.extend(record_listeners)
        self.ordering = make_ordering(spec.execution.ordering, self.ledger)
        self.attempts = Attempts(spec, executor, self.ledger, objects.uri, clock, self.policy.required_metrics())
        self.control = Control(self.store, clock)
        self.failures = FailureRules(spec.execution, self.ledger)
        self.stopping = EarlyStopping(self.policy, self.ordering, self.ledger, self.attempts)
        self.abort: Abort | None = None  # set when the study cannot succeed: the run ends now
        self.gc = GarbageCollector(
            CheckpointCollector(CheckpointStore(objects), spec.name), self.ledger, self._gc_roots, clock,
            interval=gc_interval, enabled=not spec.execution.keep_checkpoints,
        )
        self.exhausted = False  # the policy returned nothing at the latest decision point
        self.spec_written = False  # the study's spec is in storage (set by start and the first tick)
        self.started = clock()
        self.last_heard = self.started  # when an event last arrived

    def run(self, max_seconds: float | None = None) -> Snapshot:
        """Drive the study until the policy has nothing more to do and nothing is in flight."""
        self.lease.acquire()
        try:
            self.start()
            deadline = None if max_seconds is None else self.clock() + max_seconds
            events: list[Event] = []
            while True:
                self.tick(events)
                snapshot = self.snapshot()
                if self.observer:
                    self.observer(snapshot)
                if snapshot.finished or snapshot.paused or (deadline is not None and self.clock() > deadline):
                    break
                events = self.executor.events(self.poll_interval)
            self.finish(snapshot)
            return self.snapshot()
        finally:
            self.gc.close()
            self.store.close()
            self.lease.release()

    def tick(self, events: list[Event]) -> None:
        """Record ``events``, decide, then one durable write, then acknowledge and publish."""
        for event in events:
            self._handle(event)
        now = self.clock()
        if events:
            self.last_heard = now
        elif self.abort is None and self.attempts.in_flight:
            self.abort = self.failures.stalled(now - self.last_heard)
        self.control.refresh()
        if self.abort is None:
            self._decide()
        if self.abort is None:
            for ended in self.attempts.check_leases():
                self._ended(ended, FailureScope.TRIAL)
            self.stopping.tick()
        if self.abort is not None:
            self.attempts.abandon(self.abort.message)
        self.gc.collect()
        if not self.spec_written and self.ledger.dirty:
            self.store.write_spec(self.spec.public_dict())  # a new study exists once it has a trial
            self.spec_written = True
        self.ledger.flush()  # one durable write per tick, then acks and publications
        self.executor.ack(events)
        self.attempts.send()  # ends with the executor's flush: publications (and acks) in one go
        self.lease.renew()

    def snapshot(self) -> Snapshot:
        in_flight = self.attempts.in_flight
        paused = self.control.paused and not in_flight and self.abort is None
        finished = self.abort is not None or (not in_flight and self.exhausted and not self.control.paused)
        outcome, reason, message, error = (
            ending(self.abort, self.control.paused, self.ledger, self.ordering.view, self.spec.budget)
            if finished or paused else (None, None, None, None)
        )
        return Snapshot(
            paused=paused,
            trials=len(self.ledger),
            by_status={k: v for k, v in self.ledger.counts.items() if v},
            steps_done=self.ledger.steps_done,
            budget_steps=self.spec.budget.total_steps,
            budget_trials=self.spec.budget.max_trials,
            best=self.ledger.best,
            in_flight=in_flight,
            finished=finished,
            elapsed=self.clock() - self.started,
            gc_bytes_freed=self.gc.bytes_freed,
            outcome=outcome,
            reason=reason,
            message=message,
            error=error,
        )

    # Start and end --------------------------------------------------------------------------

    def start(self) -> None:
        """Open (or resume) the study: check its identity, load its records, re-publish what was in flight.

        A new study's spec is written with its first trial records, in the first tick's one
        durable write, so a study whose first suggestion fails leaves nothing behind. A study an
        older version left half-created (a spec but no trial record) is taken over, whatever
        its stored spec says: there is nothing in it to be inconsistent with.
        """
        spec_doc = self.spec.public_dict()
        self.spec_written = False
        if self.store.exists():
            stored = self.store.read_spec()
            self.ledger.load()
            changed = [f for f in IDENTITY_FIELDS if stored.get(f) != spec_doc.get(f)]
            if changed and len(self.ledger):
                raise SpecError(
                    f"study {self.spec.name!r} already exists in {self.store.objects.uri} with different "
                    f"{', '.join(changed)}; use another study name (or storage) for a new study, or "
                    f"delete it with `pbt clear {self.spec.name} --storage ... --force`"
                )
            self.failures.restore()
            if changed:
                log.warning("study %s was left half-created (a spec, no trial) by an earlier run; replacing its spec",
                            self.spec.name)
            if len(self.ledger):
                self.store.write_spec(spec_doc)  # budget and execution may have changed
                self.spec_written = True
        previous = self.store.read_doc("state") or {}
        self.gc.bytes_freed = int(previous.get("gc_bytes_freed", 0))  # a resumed study keeps counting
        for trial in self.ledger:
            self.gc.track(trial)
        self.ordering.restore()
        for trial in self.ledger:
            if not trial.status.terminal:
                self.attempts.resume(trial)
        if len(self.ledger):
            log.info("resumed study %s: %d trials, %d in flight", self.spec.name, len(self.ledger),
                     self.attempts.in_flight)

    def finish(self, snapshot: Snapshot) -> None:
        """Final garbage collection, the last records, and the study's state document."""
        if not self.spec_written:
            return  # no trial was ever created: the study was never written, nor is its end
        self.gc.collect(final=True)
        self.ledger.flush()
        ending = {"outcome": snapshot.outcome, "reason": snapshot.reason, "message": snapshot.message,
                  "error": snapshot.error} if snapshot.outcome else {}
        self.store.write_doc("state", {
            "finished": snapshot.finished, "paused": snapshot.paused, **ending, "at": self.clock(),
            "best": self.ledger.best.id if self.ledger.best else None, "gc_bytes_freed": self.gc.bytes_freed,
            "checkpoints_kept": sum(1 for t in self.ledger if t.checkpoint and not t.checkpoint_deleted),
        })
        self.store.compact()

    # Events and decisions -------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        message = event.message
        trial = self.ledger.get(message.trial_id)
        if trial is None or trial.status.terminal:
            return  # a duplicate delivery, or a late attempt of a finished trial: recorded once
        if isinstance(message, Progress):
            self.attempts.on_progress(trial, message)
            self.stopping.on_progress(self.ledger[trial.number])
            return
        trial, result = self.stopping.on_result(trial, message)
        if self.abort is None:
            self.abort = self.failures.on_attempt(result, current=result.attempt == trial.attempts)
            if self.abort is not None:
                log.error("study %s cannot succeed: %s", self.spec.name, self.abort.message)
        ended = self.attempts.on_result(trial, result)
        if ended is not None:
            self._ended(ended, result.scope)

    def _ended(self, trial: Trial, scope: FailureScope) -> None:
        self.gc.track(trial)
        if self.abort is None:
            self.abort = self.failures.check(trial, scope)
            if self.abort is not None:
                log.error("study %s cannot succeed: %s", self.spec.name, self.abort.message)

    def _decide(self) -> None:
        """Apply what the ordering allows and ask the policy to fill the free slots at each point."""
        if self.control.paused:
            # Results are still recorded, but nothing is applied or suggested: a resumed study
            # then takes exactly the decisions it would have taken without the pause.
            return
        for _ in self.ordering.decision_points():
            free = self.ordering.free(self.spec.execution.parallelism, self.attempts.in_flight)
            suggestions = self._suggest(free)
            if suggestions is None:
                self.ordering.ask_again()
                return
            self.exhausted = not suggestions
            for s in suggestions[:free]:
                trial = self.ledger.create(
                    s, study=self.spec.name, parameters=set(self.spec.parameters), now=self.clock(),
                    metadata={"created_after": self.ordering.position()},
                )
                self.attempts.publish(trial)

    def _suggest(self, free: int) -> list[Suggestion] | None:
        """The policy's suggestions, or None when it asks to be asked again later."""
        if free <= 0:
            return []
        try:
            return self.policy.suggest(self.ordering.view, free)
        except TemporaryPolicyError as exc:
            log.warning("policy %s cannot decide yet (%s); asking again next tick", self.spec.algorithm.name, exc)
            return None
        except StudyFailedError as exc:
            self.abort = Abort(EndReason.FATAL_ERROR, f"policy {self.spec.algorithm.name}: {exc}")
            return None

    def _gc_roots(self) -> set[str]:
        """What a future trial may warm-start from, what is running or not yet applied, and the best."""
        roots = self.policy.parent_candidates(self.ordering.view)
        roots.update(self.attempts.tasks)
        roots.update(self.ledger[n].id for n in self.ordering.unapplied())
        if self.ledger.best is not None:
            roots.add(self.ledger.best.id)
        return roots
