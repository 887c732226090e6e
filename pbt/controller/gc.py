"""Checkpoint garbage collection: bounded storage on long studies, without slowing the loop.

A trial's checkpoints can be deleted once no future trial can descend from it: it is not one
of the policy's :meth:`~pbt.controller.policy.Policy.parent_candidates`, not running or waiting
to be applied, not the best, and not an ancestor of any of those. Keeping the ancestry is what
makes the final best trial's lineage complete (for inspection and continued training) and lets
a corrupt checkpoint fall back to its parent's; in PBT lineages coalesce, so it is a thin trunk.

Deciding is cheap and happens on the controller thread (:class:`GarbageCollector`); deleting
is I/O (one unlink or S3 call per object) and happens on a background thread
(:class:`CheckpointCollector`) so a tick never waits on it.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from pbt.controller.ledger import Ledger
from pbt.lineage import ancestry
from pbt.storage.checkpoints import CheckpointStore
from pbt.storage.keys import trial_prefix
from pbt.trial import Trial, TrialStatus

log = logging.getLogger("pbt.gc")


@dataclass(frozen=True)
class Freed:
    trial_id: str
    bytes: int


class CheckpointCollector:
    def __init__(self, checkpoints: CheckpointStore, study: str) -> None:
        self.checkpoints = checkpoints
        self.study = study
        # Deletes are latency-bound (one round trip or unlink each), so a few run at once.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="pbt-gc")
        self.pending: dict[str, Future[Freed]] = {}
        self.finished: collections.deque[str] = collections.deque()  # appended by the pool's threads

    def delete(self, trial_ids: list[str]) -> None:
        for trial_id in trial_ids:
            if trial_id not in self.pending:
                self.pending[trial_id] = future = self.pool.submit(self._delete_trial, trial_id)
                future.add_done_callback(lambda _, tid=trial_id: self.finished.append(tid))

    def _delete_trial(self, trial_id: str) -> Freed:
        freed = 0
        for name in self.checkpoints.list(trial_prefix(self.study, trial_id) + "/"):
            freed += self.checkpoints.delete(name)
        return Freed(trial_id, freed)

    def done(self, wait: bool = False) -> list[Freed]:
        """Deletions that finished (all of them with ``wait``); failures are retried next time."""
        out = []
        if wait:
            ids = list(self.pending)
            self.finished.clear()
        else:  # O(finished), not O(pending): this runs every tick
            ids = []
            while self.finished:
                ids.append(self.finished.popleft())
        for trial_id in ids:
            future = self.pending.get(trial_id)
            if future is None or not (wait or future.done()):
                continue  # already collected, or a newer deletion of the same trial still running
            del self.pending[trial_id]
            try:
                out.append(future.result())
            except Exception as exc:  # storage hiccup: the trial stays a candidate for the next pass
                log.warning("could not delete checkpoints of %s: %s", trial_id, exc)
        return out

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class GarbageCollector:
    """Decides which completed trials' checkpoints to delete, every ``interval`` seconds at most
    and only once the candidates grew by a quarter since the last pass (see :meth:`collect`).

    ``roots()`` gives the trials a future trial may still descend from: the policy's parent
    candidates, what is running or not yet applied, and the best. Their whole ancestry stays
    too: any future best descends from a root, so its lineage stays complete (replay,
    inspection), and a corrupt checkpoint can fall back to its parent's. In PBT lineages
    coalesce, so the ancestry adds a thin trunk, not a tree.
    """

    def __init__(
        self,
        collector: CheckpointCollector,
        ledger: Ledger,
        roots: Callable[[], set[str]],
        clock: Callable[[], float],
        *,
        interval: float = 5.0,
        enabled: bool = True,
    ) -> None:
        self.collector = collector
        self.ledger = ledger
        self.roots = roots
        self.clock = clock
        self.interval = interval
        self.enabled = enabled
        self.candidates: set[str] = set()  # completed trials whose checkpoints still exist
        self.kept = 0  # candidates the last pass kept (roots and their ancestry)
        self.bytes_freed = 0
        self.last = 0.0

    def track(self, trial: Trial) -> None:
        """A trial ended: its checkpoint may become garbage later."""
        if trial.status is TrialStatus.COMPLETED and trial.checkpoint and not trial.checkpoint_deleted:
            self.candidates.add(trial.id)

    def collect(self, final: bool = False) -> None:
        """Record finished deletions; every ``interval`` (and at the end) start new ones."""
        self._record_freed()
        now = self.clock()
        # A pass costs O(population) (the roots and their ancestry): it waits until the candidates
        # grew by a quarter of what the last pass kept, so its cost per completed trial stays O(1).
        if not self.enabled or (not final and (now - self.last < self.interval
                                               or len(self.candidates) - self.kept < self.kept // 4)):
            return
        self.last = now
        keep = ancestry(self.roots(), self.ledger.get)
        garbage = self.candidates - keep
        self.kept = len(self.candidates) - len(garbage)
        self.collector.delete(sorted(garbage))
        if final:
            self._record_freed(wait=True)

    def _record_freed(self, wait: bool = False) -> None:
        for freed in self.collector.done(wait=wait):
            trial = self.ledger.get(freed.trial_id)
            if trial is not None:
                self.ledger.update(trial, checkpoint_deleted=True)
            self.bytes_freed += freed.bytes
            self.candidates.discard(freed.trial_id)

    def close(self) -> None:
        self.collector.close()
