"""A study's results from Python: what ``pbt status``, ``pbt report`` and ``pbt replay`` show, as objects.

:class:`Study` wraps a study read from its storage (:func:`pbt.analysis.study.open_study`), so
it works from any machine that reads the storage, for a finished study or one still running.
Its data are the records ``pbt status --json`` prints (:meth:`Study.to_json` *is* that output)
and ``to_dataframe`` flattens them with the same key names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pbt.analysis.study import StoredStudy, open_study
from pbt.errors import NotFoundError, SpecError
from pbt.lineage import ScheduleSegment, lineage, schedule, trial_json
from pbt.spec import StudySpec
from pbt.study_state import Ending, StudyState, ending
from pbt.trial import Trial

if TYPE_CHECKING:
    from pbt.analysis.replay import ReplayResult, ReplaySegment
    from pbt.analysis.report import Report
    from pbt.analysis.status import Overview

Per = Literal["trial", "evaluation"]


def load_study(name: str, storage: str | os.PathLike | None = "runs") -> Study:
    """Open study ``name`` in ``storage`` (a path, ``file:///abs/path`` or ``s3://bucket/prefix``;
    None: ``PBT_STORAGE``, else ``runs``).

    Read-only and safe while the study runs (it then reads as partial; :meth:`Study.refresh`
    reads again). Raises :class:`~pbt.errors.StudyNotFoundError` when there is no such study,
    :class:`~pbt.errors.StorageUnavailableError` when the storage cannot be read, and
    :class:`~pbt.errors.SpecError` when the stored spec no longer validates.
    """
    if storage is None:
        storage = os.environ.get("PBT_STORAGE") or "runs"
    if not isinstance(storage, (str, os.PathLike)):
        raise SpecError(f"storage: expected a path or a URI, got {type(storage).__name__} {storage!r:.60}")
    if not isinstance(name, str):
        raise SpecError(f"name: expected the study's name, a str, got {type(name).__name__} {name!r:.60}")
    storage = os.fspath(storage)
    return Study(open_study(storage, name), storage)


class Study:
    """A study as its storage held it when read: spec, every trial, the best, how its last run ended.

    Attributes: ``name`` (str), ``storage`` (the URI it was read from), ``spec``
    (:class:`~pbt.spec.StudySpec`), ``trials`` (list of :class:`~pbt.trial.Trial`, in creation
    order; ``trial.objective`` is the objective metric at the trial's end, in the trainer's
    units, None until it completed). A snapshot: call :meth:`refresh` for newer records.
    """

    def __init__(self, stored: StoredStudy, storage: str) -> None:
        self.stored = stored
        self.storage = storage

    def __repr__(self) -> str:
        b = self.best
        best = f"best {self.spec.objective.metric}={b.objective:.6g} ({b.id})" if b else "no best"
        return f"<pbt.Study {self.name!r} in {self.storage}: {self.state}, {len(self.trials)} trials, {best}>"

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def spec(self) -> StudySpec:
        return self.stored.spec

    @property
    def trials(self) -> list[Trial]:
        return self.stored.trials

    @property
    def best(self) -> Trial | None:
        """The completed trial with the best finite objective (earliest on ties); None before one completed."""
        return self.stored.best

    @property
    def front(self) -> list[Trial]:
        """The Pareto front: usable trials no other usable trial beats in every objective, best primary
        objective first. With one objective, the best trial (and any tied with it)."""
        return self.stored.front

    @property
    def state(self) -> StudyState:
        """running, pausing, paused, finished or idle (:class:`~pbt.study_state.StudyState`)."""
        return self.stored.study_state

    @property
    def ending(self) -> Ending | None:
        """How the controller's last run ended (outcome, reason, message, the failed trial's error).

        None while trials are in flight and before any run ended.
        """
        return None if self.stored.in_flight else ending(self.stored.state)

    def refresh(self) -> Study:
        """The same study read again from its storage (new trials and documents)."""
        return Study(self.stored.reread(), self.storage)

    def trial(self, trial_id: str | Trial | None = None) -> Trial:
        """The trial with id ``trial_id`` (``"t000042"``), default the best; NotFoundError if none."""
        if isinstance(trial_id, Trial):
            return trial_id
        if trial_id is None:
            if self.best is None:
                raise NotFoundError(f"study {self.name} has no completed trial yet")
            return self.best
        found = next((t for t in self.trials if t.id == trial_id), None)
        if found is None:
            raise NotFoundError(f"study {self.name} has no trial {trial_id!r} (trial ids look like t000042)")
        return found

    def lineage(self, trial: str | Trial | None = None) -> list[Trial]:
        """The trials from a generation-0 root down to ``trial`` (default: the best), inclusive."""
        return lineage(self.trials, self.trial(trial))

    def schedule(self, trial: str | Trial | None = None) -> list[ScheduleSegment]:
        """The hyperparameter schedule along ``trial``'s lineage (default: the best's), one segment per trial.

        Each segment has ``trial``, ``start`` and ``end`` (lineage steps: steps the model had
        trained, across copies), ``params`` in force and ``exploit`` (it began by copying another
        member's weights).
        """
        return schedule(self.lineage(trial))

    def status(self) -> Overview:
        """What ``pbt status`` shows, as data: state, budget used, rate and ETA, best, busy and idle workers."""
        from pbt.analysis.status import overview

        s = self.stored
        return overview(s.spec, s.trials, s.state, s.control)

    def to_json(self) -> dict[str, Any]:
        """Exactly what ``pbt status --json`` prints: ``{"study", "trials", "best", "front", "state"}``.

        ``study`` is the stored spec (broker password stripped); each trial is
        :func:`pbt.lineage.trial_json` (its record plus ``lineage_steps``); ``front`` the ids of the
        Pareto front (:attr:`front`); ``state`` is the
        controller's state document (``outcome``, ``reason``, ``message``, ...) or None.
        """
        best = self.best
        return {
            "study": self.stored.spec_doc,
            "trials": [trial_json(t) for t in self.trials],
            "best": trial_json(best) if best else None,
            "front": [t.id for t in self.front],
            "state": self.stored.state,
        }

    def to_records(self, per: Per = "trial") -> list[dict[str, Any]]:
        """Flat rows, the keys of :meth:`to_json` joined with dots; no pandas needed.

        ``per="trial"``: one row per trial, every field of its record except ``metrics``
        (``id``, ``number``, ``status``, ``objective``, ``parent``, ``member``, ``generation``,
        ``steps``, ``steps_done``, ``lineage_steps``, ``params.<name>``, ``timings.<phase>``
        in seconds, ...). ``per="evaluation"``: one row per recorded evaluation (intermediate
        ones included): ``trial`` (its id), ``number``, ``member``, ``generation``, ``status``,
        ``step`` (this trial's steps), ``lineage_step``, ``values.<metric>``, ``params.<name>``.
        Raises ValueError for another ``per``.
        """
        if per == "trial":
            rows = []
            for t in self.trials:
                data = trial_json(t)
                data.pop("metrics")
                rows.append(_flatten(data))
            return rows
        if per == "evaluation":
            return [
                {"trial": t.id, "number": t.number, "member": t.member, "generation": t.generation,
                 "status": t.status.value, "step": m.step, "lineage_step": m.lineage_step,
                 **_flatten({"values": m.values, "params": t.params})}
                for t in self.trials for m in t.metrics
            ]
        raise ValueError(f"per must be 'trial' or 'evaluation', not {per!r}")

    def to_dataframe(self, per: Per = "trial") -> Any:
        """:meth:`to_records` as a ``pandas.DataFrame`` (needs the ``pandas`` extra: ``pip install 'pbt[pandas]'``)."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Study.to_dataframe needs pandas: pip install 'pbt[pandas]' (or pandas)") from None
        return pandas.DataFrame.from_records(self.to_records(per))

    def report(self, out: str | Path | None = None) -> Report:
        """Write the HTML report (``index.html``, PNGs, ``report.json``) into ``out``, default ``reports/<name>``.

        Returns a :class:`pbt.analysis.report.Report`: ``.html`` is the page's path, ``.data``
        the numbers behind every figure (``report.json``). Files in ``out`` are replaced.
        """
        from pbt.analysis.report import write_report

        target = Path(out) if out is not None else Path("reports", self.name)
        return write_report(self.spec, self.trials, target, self.stored.state, self.storage)

    def replay(
        self,
        trial: str | Trial | None = None,
        *,
        steps_scale: float = 1.0,
        extra_steps: int = 0,
        trainer_config: Mapping[str, Any] | None = None,
        save: bool = False,
        on_segment: Callable[[ReplaySegment], None] | None = None,
    ) -> ReplayResult:
        """Re-run ``trial``'s whole schedule (default: the best's) from scratch in this process (``pbt replay``).

        ``steps_scale`` trains every segment that many times longer, ``extra_steps`` continues
        with the schedule's last values, ``trainer_config`` overrides keys of ``trainer.config``.
        With none of them a deterministic trainer reproduces the original objective exactly
        (``result.difference == 0``). ``save=True`` keeps the record under ``<study>/replays/`` in the
        storage (``result.location``). The trainer must be importable here. Raises NotFoundError
        for an unknown trial, FatalError for one that did not complete.
        """
        from pbt.analysis.replay import replay, save_replay

        target = self.trial(trial).id if trial is not None else None
        result = replay(self.spec, self.trials, target, steps_scale=steps_scale, extra_steps=extra_steps,
                        trainer_config=trainer_config, on_segment=on_segment)
        return save_replay(result, self.storage) if save else result


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
