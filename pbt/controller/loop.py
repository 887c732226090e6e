"""The controller: the only part of pbt that decides anything.

Each tick it receives results and heartbeats from the executor, records them durably (and only
then acknowledges them), asks the policy for new trials for the free slots, records and
publishes those, re-publishes trials whose lease expired, and stops what the policy wants
stopped. It holds no state that cannot be rebuilt from the study store: kill it at any moment
and start it again, and it resumes.

**Ordering.** With ``execution.ordering: deterministic`` (the default) results are *applied* —
made visible to the policy — in trial-number order, one at a time, and the policy is asked for
the free slots after each. A result that arrives early is recorded at once but stays hidden
until every older trial has ended. The policy therefore sees the same sequence of trial lists
whatever the number of workers, their speed or their failures, so a study is reproducible from
its seed, embedded or distributed. ``arrival`` applies results as they come: no worker waits
on a straggler, at the price of reproducibility.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from pbt.controller.gc import CheckpointCollector
from pbt.controller.lease import Lease
from pbt.controller.policies import make_policy
from pbt.controller.view import TrialView
from pbt.errors import FatalError, SpecError
from pbt.spec import StudySpec
from pbt.storage.base import ObjectStore
from pbt.storage.checkpoints import CheckpointStore
from pbt.storage.study_store import StudyStore
from pbt.tasks.executor import Event, Executor
from pbt.trial import Progress, Suggestion, Trial, TrialResult, TrialStatus, TrialTask

log = logging.getLogger("pbt.controller")

#: Fields that define what a study *is*; a resumed study must match them. Budget and
#: execution may change between runs (give a study more steps, more parallelism).
IDENTITY_FIELDS = ("objective", "parameters", "algorithm", "trainer", "seed")
FALLBACK_DEPTH = 3


@dataclass
class Snapshot:
    """What observers (progress bars, status) see after each tick."""

    trials: int
    by_status: dict[str, int]
    steps_done: int
    budget_steps: int | None
    budget_trials: int | None
    best: Trial | None
    in_flight: int
    finished: bool
    elapsed: float
    gc_bytes_freed: int = 0
    paused: bool = False  # `pbt stop` asked to pause and nothing is in flight any more


class Controller:
    def __init__(
        self,
        spec: StudySpec,
        executor: Executor,
        objects: ObjectStore,
        lease: Lease,
        *,
        observer: Callable[[Snapshot], None] | None = None,
        poll_interval: float = 0.2,
        gc_interval: float = 5.0,
    ) -> None:
        self.spec = spec
        self.executor = executor
        self.lease = lease
        self.store = StudyStore(objects, spec.name)
        self.collector = CheckpointCollector(CheckpointStore(objects), spec.name)
        self.storage_uri = objects.uri
        self.policy = make_policy(spec)
        self.observer = observer
        self.poll_interval = poll_interval
        self.gc_interval = gc_interval
        self.deterministic = spec.execution.ordering == "deterministic"
        self.trials: list[Trial] = []
        self.view = TrialView()  # what the policy sees (lags self.trials in deterministic mode)
        self.frontier = 0  # deterministic mode: trials below this number are applied
        self.last_step = -1  # the frontier value at which the policy was last asked
        self.exhausted = False  # the policy returned nothing at the latest step
        self.pending_step = True  # arrival mode: something changed since the policy was last asked
        self.tasks: dict[str, TrialTask] = {}  # in-flight trial id -> its current attempt's task
        self.last_seen: dict[str, float] = {}
        self.stop_sent: set[str] = set()
        self.last_lease_check = 0.0
        self.paused = False
        self.last_control = 0.0
        self.reported: set[str] = set()  # in-flight trials whose current attempt has reported in
        self.dirty: dict[str, Trial] = {}
        self.outbox: list[TrialTask] = []
        self.best: Trial | None = None
        self.gc_candidates: set[str] = set()
        self.gc_bytes_freed = 0
        self.status_counts: dict[str, int] = {}
        self.steps_total = 0
        self.last_gc = 0.0
        self.started = time.time()

    # Start-up and resume -------------------------------------------------------------------

    def _open(self) -> None:
        spec_doc = self.spec.public_dict()
        if self.store.exists():
            stored = self.store.read_spec()
            changed = [f for f in IDENTITY_FIELDS if stored.get(f) != spec_doc.get(f)]
            if changed:
                raise SpecError(
                    f"study {self.spec.name!r} already exists in {self.storage_uri} with different "
                    f"{', '.join(changed)}; use another study name (or storage) for a new study"
                )
            self.trials = self.store.load_trials()
            for trial in self.trials:
                self._count(trial, +1)
        self.store.write_spec(spec_doc)
        previous = self.store.read_doc("state") or {}
        self.gc_bytes_freed = int(previous.get("gc_bytes_freed", 0))  # a resumed study keeps counting
        for trial in self.trials:
            if trial.usable and (self.best is None or self._better(trial, self.best)):
                self.best = trial
            if trial.status is TrialStatus.COMPLETED and trial.checkpoint and not trial.checkpoint_deleted:
                self.gc_candidates.add(trial.id)
        if self.deterministic:
            self.frontier = max((t.metadata.get("created_after", 0) for t in self.trials), default=0)
            self.last_step = self.frontier if self.trials else -1
            for trial in self.trials:
                self.view.append(trial if trial.number < self.frontier else self._placeholder(trial))
        else:
            for trial in self.trials:
                self.view.append(trial)
        now = time.time()
        for trial in self.trials:
            if trial.status.terminal:
                continue
            if self.executor.survives_controller:
                self.tasks[trial.id] = task = self._task(trial, trial.attempts)
                self.executor.adopt(task)
                self.last_seen[trial.id] = now  # give the running attempt a lease to report in
            else:
                self._publish(trial)
        if self.trials:
            log.info("resumed study %s: %d trials, %d in flight", self.spec.name, len(self.trials), len(self.tasks))

    # The loop -----------------------------------------------------------------------------

    def run(self, max_seconds: float | None = None) -> Snapshot:
        """Drive the study until the policy has nothing more to do and nothing is in flight."""
        self.lease.acquire()
        try:
            self._open()
            self._refresh_control()
            self._advance()
            self._send()
            deadline = None if max_seconds is None else time.time() + max_seconds
            while True:
                events = self.executor.events(self.poll_interval)
                for event in events:
                    self._handle(event)
                self._refresh_control()
                self._advance()
                self._check_leases()
                self._early_stop()
                self._maybe_gc()
                self._send()  # one durable write per tick, then acks and publications
                self.executor.ack(events)
                self.lease.renew()
                snapshot = self.snapshot()
                if self.observer:
                    self.observer(snapshot)
                if snapshot.finished or snapshot.paused or (deadline is not None and time.time() > deadline):
                    break
            self._maybe_gc(final=True)
            self._flush()
            self.store.write_doc(
                "state",
                {"finished": snapshot.finished, "paused": snapshot.paused, "at": time.time(),
                 "best": self.best.id if self.best else None, "gc_bytes_freed": self.gc_bytes_freed,
                 "checkpoints_kept": sum(1 for t in self.trials if t.checkpoint and not t.checkpoint_deleted)},
            )
            self.store.compact()
            return self.snapshot()
        finally:
            self.collector.close()
            self.store.close()
            self.lease.release()

    def snapshot(self) -> Snapshot:
        by_status = {k: v for k, v in self.status_counts.items() if v}
        finished = not self.tasks and self.exhausted and not self.paused
        return Snapshot(
            paused=self.paused and not self.tasks,
            trials=len(self.trials),
            by_status=by_status,
            steps_done=self.steps_total,
            budget_steps=self.spec.budget.total_steps,
            budget_trials=self.spec.budget.max_trials,
            best=self.best,
            in_flight=len(self.tasks),
            finished=finished,
            elapsed=time.time() - self.started,
            gc_bytes_freed=self.gc_bytes_freed,
        )

    # Events -------------------------------------------------------------------------------

    def _handle(self, event: Event) -> None:
        message = event.message
        trial = self._trial(message.trial_id)
        if trial is None or trial.status.terminal:
            return  # a duplicate delivery, or a late attempt of a finished trial: recorded once
        self.last_seen[trial.id] = time.time()
        if isinstance(message, Progress):
            self._progress(trial, message)
        else:
            self._result(trial, message)

    def _progress(self, trial: Trial, p: Progress) -> None:
        if p.attempt == trial.attempts:
            self.reported.add(trial.id)
        changes: dict = {"worker": p.worker}
        if trial.status is TrialStatus.PENDING:
            changes.update(status=TrialStatus.RUNNING, started_at=trial.started_at or p.at)
        if p.attempt == trial.attempts:
            changes["steps_done"] = p.step
        if p.metrics and (not trial.metrics or trial.metrics[-1].step < p.metrics.step):
            changes["metrics"] = [*trial.metrics, p.metrics]
        self._update(trial, **changes)

    def _result(self, trial: Trial, r: TrialResult) -> None:
        timings = trial.timings.add(r.timings)
        retry = r.status is TrialStatus.FAILED and r.retryable
        if retry and r.attempt != trial.attempts:
            return  # a superseded attempt failed; the current one is still running
        if retry and trial.failures + 1 < self.spec.execution.max_attempts:
            log.warning("trial %s attempt %d failed, retrying: %s", trial.id, r.attempt, _first_line(r.error))
            trial = self._update(trial, timings=timings, worker=r.worker, error=r.error, failures=trial.failures + 1)
            self._publish(trial)
            return
        changes: dict = dict(
            failures=trial.failures + (r.status is TrialStatus.FAILED),
            status=r.status,
            steps_done=r.steps_done,
            metrics=r.metrics or trial.metrics,
            timings=timings,
            objective=r.objective if r.status is TrialStatus.COMPLETED else None,
            checkpoint=r.checkpoint,
            resumed_from_step=r.resumed_from_step,
            error=r.error,
            worker=r.worker,
            finished_at=r.finished_at or time.time(),
        )
        if r.warm_start:  # recorded always: the record shows the load happened, not only a fallback
            changes["warm_start"] = r.warm_start
            if r.warm_start != trial.parent_checkpoint:
                # The parent's checkpoint failed verification and the worker fell back to an
                # older ancestor's: the lineage (and the steps along it) now runs through that one.
                log.warning("trial %s warm-started from fallback checkpoint %s", trial.id, r.warm_start)
                ancestor = self._trial(trial.parent)
                while ancestor is not None and ancestor.checkpoint != r.warm_start:
                    ancestor = self._trial(ancestor.parent)
                if ancestor is not None:
                    changes.update(parent=ancestor.id, parent_checkpoint=ancestor.checkpoint,
                                   start_lineage_steps=ancestor.lineage_steps,
                                   metadata={**trial.metadata, "intended_parent": trial.parent})
        trial = self._update(trial, **changes)
        self.tasks.pop(trial.id, None)
        self.last_seen.pop(trial.id, None)
        if trial.usable:
            if self.best is None or self._better(trial, self.best):
                self.best = trial
            self.gc_candidates.add(trial.id)
        if r.status is TrialStatus.FAILED:
            log.warning("trial %s failed: %s", trial.id, _first_line(r.error))
        self.pending_step = True

    def _better(self, a: Trial, b: Trial) -> bool:
        return self.spec.objective.better(a.objective, b.objective)  # type: ignore[arg-type]

    # Suggestions --------------------------------------------------------------------------

    def _refresh_control(self) -> None:
        """Read ``pbt stop``/``pbt resume``'s flag, every couple of seconds."""
        now = time.time()
        if now - self.last_control < 2.0:
            return
        self.last_control = now
        try:
            control = self.store.read_doc("control") or {}
        except Exception as exc:  # storage hiccup: keep the last known state
            log.warning("could not read the study's control document: %s", exc)
            return
        if bool(control.get("paused")) != self.paused:
            self.paused = bool(control.get("paused"))
            state = "paused: finishing in-flight trials" if self.paused else "resumed"
            log.warning("study %s %s", self.spec.name, state)

    def _advance(self) -> None:
        """Apply what can be applied and ask the policy to fill free slots, step by step."""
        if self.paused:
            # Results are still recorded, but nothing is applied or suggested: a resumed study
            # then takes exactly the decisions it would have taken without the pause.
            return
        created: list[Trial] = []  # published by _send once their records are durable
        if self.deterministic:
            while True:
                if self.frontier > self.last_step:
                    self.last_step = self.frontier
                    created += self._step()
                if self.frontier < len(self.trials) and self.trials[self.frontier].status.terminal:
                    self.view.replace(self.trials[self.frontier])
                    self.frontier += 1
                    continue
                break
        elif self.pending_step:
            self.pending_step = False
            created += self._step()

    def _free(self) -> int:
        in_flight = len(self.trials) - self.frontier if self.deterministic else len(self.tasks)
        return max(0, self.spec.execution.parallelism - in_flight)

    def _step(self) -> list[Trial]:
        free = self._free()
        suggestions = self.policy.suggest(self.view, free) if free > 0 else []
        self.exhausted = not suggestions
        return [self._create(s) for s in suggestions[:free]]

    def _create(self, s: Suggestion) -> Trial:
        number = len(self.trials)
        parent = self._trial(s.parent) if s.parent else None
        if s.parent and (parent is None or not parent.usable or not parent.checkpoint or parent.checkpoint_deleted):
            raise FatalError(f"policy {self.spec.algorithm.name} chose {s.parent!r} as a parent, which is not usable")
        missing = [name for name in self.spec.parameters if name not in s.params]
        if missing:
            raise FatalError(f"policy {self.spec.algorithm.name} suggested no value for {missing}")
        trial = Trial(
            id=f"t{number:06d}",
            study=self.spec.name,
            number=number,
            params=s.params,
            parent=s.parent,
            parent_checkpoint=parent.checkpoint if parent else None,
            member=s.member,
            generation=s.generation,
            steps=s.steps,
            start_lineage_steps=parent.lineage_steps if parent else 0,
            created_at=time.time(),
            metadata={**s.metadata, "created_after": self.frontier if self.deterministic else self._applied()},
        )
        self.trials.append(trial)
        self._count(trial, +1)
        self.view.append(self._placeholder(trial) if self.deterministic else trial)
        return self._publish(trial)

    def _applied(self) -> int:
        return sum(1 for t in self.trials if t.status.terminal)

    @staticmethod
    def _placeholder(trial: Trial) -> Trial:
        """The policy's view of a trial whose result is not applied yet: still running."""
        return trial.model_copy(
            update={"status": TrialStatus.RUNNING, "objective": None, "metrics": [], "steps_done": 0}
        )

    def _publish(self, trial: Trial) -> Trial:
        """Queue a new attempt; :meth:`_send` submits it after its record is durable."""
        # A new attempt waits for a worker again: nobody is running it yet.
        trial = self._update(trial, attempts=trial.attempts + 1, status=TrialStatus.PENDING, worker=None)
        self.reported.discard(trial.id)
        self.tasks[trial.id] = task = self._task(trial, trial.attempts)
        self.last_seen[trial.id] = time.time()
        self.outbox.append(task)
        return trial

    def _send(self) -> None:
        self._flush()
        outbox, self.outbox = self.outbox, []
        for task in outbox:
            if self.tasks.get(task.trial_id) is task:  # not superseded or finished meanwhile
                self.executor.submit(task)

    def _task(self, trial: Trial, attempt: int) -> TrialTask:
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
            seed=self.spec.seed,
            checkpoint_every=self.spec.execution.checkpoint_every,
            evaluate_every_checkpoint=self.spec.execution.evaluate_every_checkpoint,
            published_at=time.time(),
            heartbeat_seconds=self.spec.execution.heartbeat_seconds,
            lease_seconds=self.spec.execution.lease_seconds,
        )

    def _fallbacks(self, trial: Trial) -> list[str]:
        """Older checkpoints along the lineage, tried in order if the parent's fails to verify."""
        out: list[str] = []
        node = self._trial(trial.parent) if trial.parent else None
        node = self._trial(node.parent) if node and node.parent else None
        while node is not None and len(out) < FALLBACK_DEPTH:
            if node.checkpoint and not node.checkpoint_deleted:
                out.append(node.checkpoint)
            node = self._trial(node.parent) if node.parent else None
        return out

    # Leases, early stopping, garbage collection ----------------------------------------------

    def _check_leases(self) -> None:
        now = time.time()
        if now - self.last_lease_check < min(1.0, self.spec.execution.heartbeat_seconds):
            return  # O(in-flight) work: not on every tick
        self.last_lease_check = now
        lease = self.spec.execution.lease_seconds
        expired = [self.tasks[i] for i, seen in self.last_seen.items() if now - seen > lease and i in self.tasks]
        if not expired:
            return
        held = self.executor.in_broker(expired)
        for task in expired:
            trial = self._trial(task.trial_id)
            if trial is None:
                continue
            if task.trial_id in held:
                self.last_seen[task.trial_id] = now  # still queued: not lost, just waiting for a worker
                continue
            if task.trial_id not in self.reported:
                # The broker lost the message before any worker ran it (a Redis restart or
                # FLUSHALL): publish again; this is not the trial's fault and costs no attempt.
                log.warning("trial %s: attempt %d vanished from the broker; re-publishing", trial.id, trial.attempts)
                self._publish(trial)
            elif trial.failures + 1 >= self.spec.execution.max_attempts:
                self._result(trial, TrialResult(
                    study=trial.study, trial_id=trial.id, attempt=trial.attempts, status=TrialStatus.FAILED,
                    error=f"worker went silent for {lease:g}s on attempt {trial.attempts}; attempts exhausted",
                    finished_at=now,
                ))
            else:
                log.warning("trial %s: worker silent for %.0fs, re-publishing (attempt %d)", trial.id, lease,
                            trial.attempts + 1)
                trial = self._update(trial, failures=trial.failures + 1)
                self._publish(trial)

    def _early_stop(self) -> None:
        for trial_id in self.policy.early_stop(self.view):
            task = self.tasks.get(trial_id)
            if task is not None and trial_id not in self.stop_sent:
                self.stop_sent.add(trial_id)
                self.executor.stop(task)

    def _maybe_gc(self, final: bool = False) -> None:
        """Hand checkpoints nobody can use any more to the collector (see pbt.controller.gc)."""
        self._collect_freed()
        now = time.time()
        if self.spec.execution.keep_checkpoints or (not final and now - self.last_gc < self.gc_interval):
            return
        self.last_gc = now
        # Roots: what a future trial may warm-start from, what is running or not yet applied, and
        # the best. Their whole ancestry stays too: any future best descends from a root, so its
        # lineage stays complete (replay, inspection), and a corrupt checkpoint can fall back to
        # its parent's. In PBT lineages coalesce, so the ancestry adds a thin trunk, not a tree.
        roots = self.policy.parent_candidates(self.view)
        roots.update(self.tasks)
        if self.deterministic:
            roots.update(t.id for t in self.trials[self.frontier :])
        if self.best is not None:
            roots.add(self.best.id)
        keep: set[str] = set()
        for root in roots:
            node = self._trial(root)
            while node is not None and node.id not in keep:
                keep.add(node.id)
                node = self._trial(node.parent)
        self.collector.delete(sorted(self.gc_candidates - keep))
        if final:
            self._collect_freed(wait=True)

    def _collect_freed(self, wait: bool = False) -> None:
        for freed in self.collector.done(wait=wait):
            trial = self._trial(freed.trial_id)
            if trial is not None:
                self._update(trial, checkpoint_deleted=True)
            self.gc_bytes_freed += freed.bytes
            self.gc_candidates.discard(freed.trial_id)

    # Records ------------------------------------------------------------------------------

    def _trial(self, trial_id: str | None) -> Trial | None:
        if not trial_id or not trial_id.startswith("t"):
            return None
        try:
            number = int(trial_id[1:])
        except ValueError:
            return None
        return self.trials[number] if 0 <= number < len(self.trials) else None

    def _update(self, trial: Trial, **changes) -> Trial:
        """Records are immutable: replace the trial everywhere it is referenced."""
        new = trial.model_copy(update=changes)
        self._count(self.trials[new.number], -1)
        self.trials[new.number] = new
        self._count(new, +1)
        if not self.deterministic or new.number < self.frontier:
            self.view.replace(new)
        if self.best is not None and self.best.id == new.id:
            self.best = new
        self.dirty[new.id] = new
        return new

    def _count(self, trial: Trial, sign: int) -> None:
        """Keep the per-status and step totals incremental: a tick must not scan the whole study."""
        self.status_counts[trial.status.value] = self.status_counts.get(trial.status.value, 0) + sign
        self.steps_total += sign * trial.steps_done

    def _flush(self) -> None:
        if self.dirty:
            self.store.append(self.dirty.values())
            self.dirty = {}


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""
