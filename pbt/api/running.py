"""Running a study from Python: ``pbt.run`` blocks until it ends, ``pbt.start`` returns a handle.

Both validate the study like ``pbt run`` (:func:`pbt.api.specs.study_spec`) and drive it through
the same entry point, :func:`pbt.launch.run_study`: this process runs the controller, trials run
on embedded worker processes or, with a broker, on Celery workers anywhere. ``start`` runs the
controller in a thread of this process, so a notebook keeps working while it runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pbt.api.specs import StudyLike, request_pause, resume_spec, study_spec
from pbt.api.study import Study, load_study
from pbt.controller.ledger import Snapshot
from pbt.errors import SpecError, StudyFailedError
from pbt.launch import run_study
from pbt.spec import StudySpec
from pbt.study_state import Ending, Outcome

if TYPE_CHECKING:
    from pbt.analysis.status import Overview

Observer = Callable[[Snapshot], None]


def run(
    study: StudyLike | Study,
    *,
    trainer: Any = None,
    storage: str | os.PathLike | None = None,
    broker: str | None = None,
    workers: int | None = None,
    name: str | None = None,
    seed: int | None = None,
    observer: Observer | None = None,
    raise_on_failure: bool = True,
) -> Study:
    """Run a study to its end in this process and return its results (what ``pbt run`` does).

    ``study``: a path to a YAML study file, a dict with the same fields, a
    :class:`pbt.StudySpec`, or a :class:`Study` from :func:`load_study` to continue a stored
    (for instance paused) study, as ``pbt resume`` does. A study that already exists in the
    storage is resumed from its records, as with ``pbt run``.
    ``trainer``: import path ``"package.module:Name"`` or the class or function itself, defined
    at module level (it replaces ``trainer.path``; ``trainer.config`` stays).
    ``storage``: a path, ``file:///abs/path`` or ``s3://bucket/prefix`` (default: the study's,
    ``runs``). ``broker``: ``redis://[:password@]host:port/db`` of Celery workers (``pbt worker``);
    ``""`` or unset without one in the study: embedded workers, ``workers`` processes on this
    machine (default: one per CPU core). ``name``, ``seed``: override the study's.
    ``observer``: called with the controller's :class:`~pbt.controller.ledger.Snapshot` after
    every tick (about 5 a second), in the controller's thread.

    Returns the :class:`Study` as recorded at the end; ``study.ending.outcome`` is
    ``succeeded``, or ``paused`` after :meth:`StudyRun.stop` / ``pbt stop``. Raises
    :class:`~pbt.errors.StudyFailedError` (with ``.ending`` and ``.study``) when the study
    failed, unless ``raise_on_failure=False``; :class:`~pbt.errors.SpecError` naming each bad
    field; :class:`~pbt.errors.StudyLockedError` when another controller already runs the study;
    :class:`~pbt.errors.StorageUnavailableError` when the storage cannot be used.
    """
    spec = _spec(study, trainer=trainer, storage=storage, broker=broker, name=name, seed=seed, workers=workers)
    snapshot = run_study(spec, workers=workers, observer=observer)
    return _result(spec, snapshot, raise_on_failure)


def start(
    study: StudyLike | Study,
    *,
    trainer: Any = None,
    storage: str | os.PathLike | None = None,
    broker: str | None = None,
    workers: int | None = None,
    name: str | None = None,
    seed: int | None = None,
    observer: Observer | None = None,
) -> StudyRun:
    """Start a study in the background and return a :class:`StudyRun` to watch, stop or wait for it.

    Same arguments and validation as :func:`run`. Returns once the controller has taken the
    study and made its first decisions; what prevents that is raised here: SpecError,
    StudyLockedError (already running elsewhere), StorageUnavailableError. The controller runs
    in a (non-daemon) thread of this process: the interpreter waits for it at exit, and
    interrupting the process leaves the study to be resumed from its records.
    """
    spec = _spec(study, trainer=trainer, storage=storage, broker=broker, name=name, seed=seed, workers=workers)
    return StudyRun(spec, workers=workers, observer=observer)._launch()


class StudyRun:
    """A study running in this process (from :func:`start`): watch it, pause it, wait for its result.

    ``name``, ``storage`` and ``spec`` say which study. Thread-safe to call from any thread.
    """

    def __init__(self, spec: StudySpec, *, workers: int | None = None, observer: Observer | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.storage = spec.storage
        self._workers = workers
        self._observer = observer
        self._snapshot: Snapshot | None = None
        self._final: Snapshot | None = None
        self._error: BaseException | None = None
        self._ticked = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"pbt-controller-{spec.name}")

    def __repr__(self) -> str:
        snap = self._snapshot
        where = "starting" if snap is None else f"{snap.trials} trials, {snap.steps_done} steps"
        return f"<pbt.StudyRun {self.name!r} in {self.storage}: {'done' if self.done() else 'running'}, {where}>"

    def _main(self) -> None:
        try:
            self._final = run_study(self.spec, workers=self._workers, observer=self._observe)
        except BaseException as exc:  # raised to whoever waits
            self._error = exc
        finally:
            self._ticked.set()

    def _observe(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        self._ticked.set()
        if self._observer is not None:
            self._observer(snapshot)

    def _launch(self) -> StudyRun:
        self._thread.start()
        self._ticked.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    @property
    def snapshot(self) -> Snapshot | None:
        """The controller's latest view (trials, ``by_status`` counts, ``steps_done``, ``best``,
        ``in_flight``, ``elapsed`` seconds; ``outcome``/``reason`` once ended), without reading storage."""
        return self._snapshot

    def done(self) -> bool:
        """True once the controller has exited (finished, failed, paused or crashed)."""
        return not self._thread.is_alive()

    def status(self) -> Overview:
        """What ``pbt status`` shows, read from the storage now (see :meth:`Study.status`)."""
        return self.study().status()

    def study(self) -> Study:
        """The study as its records stand now (partial while it runs)."""
        return load_study(self.name, self.storage)

    def stop(self, *, wait: bool = False, timeout: float | None = None) -> Study | None:
        """Pause the study, as ``pbt stop`` does: nothing new starts, trials in flight finish, the controller exits.

        Continue it later with ``pbt.run(pbt.load_study(name, storage))`` or ``pbt resume``.
        With ``wait=True`` returns the paused :class:`Study` (see :meth:`wait`), else None at once.
        """
        if not self.done():
            request_pause(self.study().stored, by="pbt.StudyRun.stop")
        return self.wait(timeout) if wait else None

    def wait(self, timeout: float | None = None, *, raise_on_failure: bool = True) -> Study:
        """Wait for the controller to exit (at most ``timeout`` seconds; None: no limit) and return the Study.

        Raises TimeoutError if it is still running then, StudyFailedError as :func:`run` does,
        or whatever stopped the controller itself.
        """
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"study {self.name} is still running after {timeout}s")
        if self._error is not None:
            raise self._error
        assert self._final is not None
        return _result(self.spec, self._final, raise_on_failure)


def _spec(study: StudyLike | Study, *, name: str | None, workers: int | None, **over: Any) -> StudySpec:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise SpecError(f"workers: expected a number of processes, at least 1 (or None: one per core), got {workers!r}")
    if not isinstance(study, Study):
        return study_spec(study, name=name, **over)
    if name is not None and name != study.name:
        raise SpecError(f"name: a stored study keeps its name ({study.name}); load_study another one instead")
    storage = over.pop("storage")
    spec = resume_spec(study.stored.reread(), os.fspath(storage) if storage else study.storage, over.pop("broker"))
    if over.get("trainer") is not None or over.get("seed") is not None:
        return study_spec(spec, **over)  # the controller refuses a changed identity, naming the field
    return spec


def _result(spec: StudySpec, snapshot: Snapshot, raise_on_failure: bool) -> Study:
    study = load_study(spec.name, spec.storage)
    if snapshot.outcome is Outcome.FAILED and raise_on_failure:
        end = study.ending or Ending(snapshot.outcome, snapshot.reason, snapshot.message, snapshot.error)  # type: ignore[arg-type]
        raise StudyFailedError(f"study {spec.name} failed: {snapshot.message or end.reason.text}", ending=end,
                               study=study)
    return study
