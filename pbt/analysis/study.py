"""Opening a stored study: its spec, its trials and the controller's documents, read at one moment.

What ``pbt status``, ``report``, ``replay``, ``stop`` and ``resume`` all start from, so that
they read a study the same way. Read-only, and safe while a controller runs: a running study
simply reads as partial.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from pbt.errors import NotFoundError
from pbt.lineage import best_trial, pareto_front
from pbt.spec import StudySpec
from pbt.storage.study_store import StudyStore, open_study_store
from pbt.study_file import parse_spec
from pbt.study_state import StudyState, study_state
from pbt.trial import Trial


@dataclass(frozen=True)
class StoredStudy:
    """A study as its storage held it when read.

    ``spec_doc`` is the spec as stored (broker password already stripped), ``spec`` the same
    validated (its trainer not imported). ``state`` and ``control`` are the documents described
    in :mod:`pbt.study_state`, ``None`` until first written. ``trials`` are in creation order.
    """

    store: StudyStore
    spec_doc: dict[str, Any]
    spec: StudySpec
    trials: list[Trial]
    state: dict[str, Any] | None
    control: dict[str, Any] | None

    @property
    def in_flight(self) -> int:
        """Trials not yet terminal (pending or running)."""
        return sum(1 for t in self.trials if not t.status.terminal)

    @property
    def study_state(self) -> StudyState:
        return study_state(self.in_flight, self.state, self.control)

    @cached_property
    def best(self) -> Trial | None:
        """The best usable trial so far (:func:`pbt.lineage.best_trial`), by the primary objective."""
        return best_trial(self.trials, self.spec.objective)

    @cached_property
    def front(self) -> list[Trial]:
        """The Pareto front over every objective (:func:`pbt.lineage.pareto_front`); with one
        objective, the best trial."""
        return pareto_front(self.trials, self.spec.objectives)

    def trial(self, trial_id: str | None = None) -> Trial:
        """The trial ``trial_id`` (``t000042``), or the best one when None.

        Raises NotFoundError naming the study when there is no such trial, or no usable one yet.
        """
        if trial_id is None:
            if self.best is None:
                raise NotFoundError(f"study {self.spec.name} has no completed trial yet")
            return self.best
        found = next((t for t in self.trials if t.id == trial_id), None)
        if found is None:
            raise NotFoundError(f"study {self.spec.name} has no trial {trial_id!r} ({len(self.trials)} trials, "
                                f"t000000 to t{len(self.trials) - 1:06d})")
        return found

    def fetch_checkpoint(self, trial: Trial, directory: Path) -> Path:
        """Download ``trial``'s final checkpoint into ``directory`` (verified); returns it.

        Raises NotFoundError when the trial saved none or its checkpoint was garbage-collected
        (the best trial's lineage and the possible parents are kept).
        """
        from pbt.storage.checkpoints import CheckpointStore

        if not trial.checkpoint:
            raise NotFoundError(f"trial {trial.id} of study {self.spec.name} ({trial.status.value}) saved no "
                                "final checkpoint")
        if trial.checkpoint_deleted:
            raise NotFoundError(
                f"trial {trial.id}'s checkpoint was garbage-collected: a study keeps the best trial's lineage "
                "and the trials a member may still copy (execution.keep_checkpoints: true keeps all). Take the "
                f"best trial, or re-create it with `pbt replay {self.spec.name} --trial {trial.id} "
                "--save-checkpoint`"
            )
        CheckpointStore(self.store.objects).load(trial.checkpoint, directory)
        return directory

    def reread(self) -> StoredStudy:
        """The same study read again: new trials and documents, the spec kept."""
        return replace(
            self,
            trials=self.store.load_trials(),
            state=self.store.read_doc("state"),
            control=self.store.read_doc("control"),
        )


def open_study(storage: str, study: str) -> StoredStudy:
    """Read study ``study`` from ``storage`` (a path, ``file://`` or ``s3://`` URI).

    Raises NotFoundError ("no study 'x' in <storage>") when there is none, SpecError when its
    stored spec no longer validates.
    """
    store = open_study_store(storage, study)
    spec_doc = store.read_spec()
    spec = parse_spec(spec_doc, check_trainer=False)
    return StoredStudy(
        store=store,
        spec_doc=spec_doc,
        spec=spec,
        trials=store.load_trials(),
        state=store.read_doc("state"),
        control=store.read_doc("control"),
    )
