"""The controller's trial records: every trial of the study, its totals, and durable flushes.

Records are immutable pydantic models: a change makes a new record that replaces the old one
everywhere (:meth:`Ledger.update`). The ledger keeps what a tick must not recompute by scanning
the study — counts per status, steps trained, the best trial — and the set of records changed
since the last durable write, which :meth:`Ledger.flush` appends to the study journal in one
write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pbt.errors import FatalError
from pbt.lineage import is_better
from pbt.spec import Objective
from pbt.storage.study_store import StudyStore
from pbt.study_state import EndReason, Outcome
from pbt.trial import Progress, Suggestion, Trial, TrialResult, TrialStatus

log = logging.getLogger("pbt.controller")

#: Called with (old, new) whenever a record is replaced; ``old`` is None for a new trial.
Listener = Callable[[Trial | None, Trial], None]


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
    outcome: Outcome | None = None  # once the run ended: did it produce a result
    reason: EndReason | None = None  # ... and what ended it
    message: str | None = None  # one line for people when the outcome is a failure
    error: str | None = None  # the failed trial's whole error (with its traceback), if one caused it


class Ledger:
    """Every trial record in creation order (``trial.number`` is its index)."""

    def __init__(self, store: StudyStore, objective: Objective) -> None:
        self.store = store
        self.objective = objective
        self.trials: list[Trial] = []
        self.counts: dict[str, int] = {}
        self.steps_done = 0
        self.best: Trial | None = None
        self.dirty: dict[str, Trial] = {}
        self.listeners: list[Listener] = []

    def load(self) -> None:
        """Read the study's records back (a resumed study)."""
        self.trials = self.store.load_trials()
        for trial in self.trials:
            self._count(trial, +1)
            self._consider(trial)

    def __len__(self) -> int:
        return len(self.trials)

    def __iter__(self) -> Iterator[Trial]:
        return iter(self.trials)

    def __getitem__(self, number: int) -> Trial:
        return self.trials[number]

    def get(self, trial_id: str | None) -> Trial | None:
        """The trial with this id (``t000042``), or None for anything else."""
        if not trial_id or not trial_id.startswith("t"):
            return None
        try:
            number = int(trial_id[1:])
        except ValueError:
            return None
        return self.trials[number] if 0 <= number < len(self.trials) else None

    @property
    def terminal(self) -> int:
        """How many trials have ended (completed, failed or stopped)."""
        return sum(self.counts.get(s.value, 0) for s in TrialStatus if s.terminal)

    # Changes --------------------------------------------------------------------------------

    def create(self, s: Suggestion, *, study: str, parameters: set[str], now: float, metadata: dict) -> Trial:
        """Record a new trial for a policy's suggestion, after checking that the suggestion is sound.

        Raises FatalError when the policy names a parent that cannot be warm-started from or
        leaves a parameter without a value: a bug in the policy, not in a trial.
        """
        parent = self.get(s.parent) if s.parent else None
        if s.parent and (parent is None or not parent.usable or not parent.checkpoint or parent.checkpoint_deleted):
            raise FatalError(f"policy chose {s.parent!r} as a parent, which is not usable")
        missing = sorted(parameters - set(s.params))
        if missing:
            raise FatalError(f"policy suggested no value for {missing}")
        number = len(self.trials)
        trial = Trial(
            id=f"t{number:06d}",
            study=study,
            number=number,
            params=s.params,
            parent=s.parent,
            parent_checkpoint=parent.checkpoint if parent else None,
            member=s.member,
            generation=s.generation,
            steps=s.steps,
            start_lineage_steps=parent.lineage_steps if parent else 0,
            created_at=now,
            metadata={**s.metadata, **metadata},
        )
        self.trials.append(trial)
        self._count(trial, +1)
        self.dirty[trial.id] = trial
        for listener in self.listeners:
            listener(None, trial)
        return trial

    def update(self, trial: Trial, **changes) -> Trial:
        """Replace ``trial``'s record by a copy with ``changes``; returns the new record."""
        new = trial.model_copy(update=changes)
        old = self.trials[new.number]
        self._count(old, -1)
        self.trials[new.number] = new
        self._count(new, +1)
        if self.best is not None and self.best.id == new.id:
            self.best = new
        self._consider(new)
        self.dirty[new.id] = new
        for listener in self.listeners:
            listener(old, new)
        return new

    def record_progress(self, trial: Trial, p: Progress, current: bool) -> Trial:
        """A heartbeat (with optional intermediate metrics); ``current``: from the live attempt."""
        changes: dict = {"worker": p.worker}
        if trial.status is TrialStatus.PENDING:
            changes.update(status=TrialStatus.RUNNING, started_at=trial.started_at or p.at)
        if current:
            changes["steps_done"] = p.step
        if p.metrics and (not trial.metrics or trial.metrics[-1].step < p.metrics.step):
            changes["metrics"] = [*trial.metrics, p.metrics]
        return self.update(trial, **changes)

    def record_result(self, trial: Trial, r: TrialResult, now: float) -> Trial:
        """The attempt's result becomes the trial's final record."""
        changes: dict = dict(
            failures=trial.failures + (r.status is TrialStatus.FAILED),
            status=r.status,
            steps_done=r.steps_done,
            metrics=r.metrics or trial.metrics,
            timings=trial.timings.add(r.timings),
            objective=r.objective if r.status is TrialStatus.COMPLETED else None,
            checkpoint=r.checkpoint,
            resumed_from_step=r.resumed_from_step,
            error=r.error,
            diverged=r.diverged,
            worker=r.worker,
            finished_at=r.finished_at or now,
        )
        if r.warm_start:  # recorded always: the record shows the load happened, not only a fallback
            changes["warm_start"] = r.warm_start
            if r.warm_start != trial.parent_checkpoint:
                changes.update(self._fallback(trial, r.warm_start))
        return self.update(trial, **changes)

    def _fallback(self, trial: Trial, loaded: str) -> dict:
        """The parent's checkpoint failed verification and the worker fell back to an older
        ancestor's: the lineage (and the steps along it) now runs through that one."""
        log.warning("trial %s warm-started from fallback checkpoint %s", trial.id, loaded)
        ancestor = self.get(trial.parent)
        while ancestor is not None and ancestor.checkpoint != loaded:
            ancestor = self.get(ancestor.parent)
        if ancestor is None:
            return {}
        return dict(parent=ancestor.id, parent_checkpoint=ancestor.checkpoint,
                    start_lineage_steps=ancestor.lineage_steps,
                    metadata={**trial.metadata, "intended_parent": trial.parent})

    def flush(self) -> None:
        """Append every record changed since the last flush to the journal, in one write."""
        if self.dirty:
            self.store.append(self.dirty.values())
            self.dirty = {}

    # Totals ---------------------------------------------------------------------------------

    def _consider(self, trial: Trial) -> None:
        if trial.usable and (self.best is None or is_better(trial, self.best, self.objective)):
            self.best = trial

    def _count(self, trial: Trial, sign: int) -> None:
        """Keep the per-status and step totals incremental: a tick must not scan the whole study."""
        self.counts[trial.status.value] = self.counts.get(trial.status.value, 0) + sign
        self.steps_done += sign * trial.steps_done
