"""Wire a study to its executor, storage and lease: the one entry point for running a study.

Used by ``pbt run``, the tests and the benchmarks alike, so all of them exercise the same path.
"""

from __future__ import annotations

from collections.abc import Callable

from pbt.controller.lease import Lease, local_lease
from pbt.controller.loop import Controller, Snapshot
from pbt.spec import StudySpec
from pbt.storage import open_object_store
from pbt.storage.study_store import StudyStore
from pbt.tasks.executor import Executor


def make_executor(spec: StudySpec, workers: int | None = None) -> tuple[Executor, Lease]:
    """The embedded pool without a broker; Celery through ``spec.broker`` with one."""
    objects_uri = open_object_store(spec.storage).uri
    if spec.broker:
        from pbt.tasks.distributed import CeleryExecutor, RedisLease

        return CeleryExecutor(spec), RedisLease(spec.broker, spec.name)
    from pbt.tasks.embedded import EmbeddedExecutor

    return EmbeddedExecutor(workers, trial_timeout=spec.execution.trial_timeout), local_lease(objects_uri, spec.name)


def run_study(
    spec: StudySpec,
    *,
    workers: int | None = None,
    observer: Callable[[Snapshot], None] | None = None,
    max_seconds: float | None = None,
) -> Snapshot:
    """Run ``spec`` to its end (or pause, or ``max_seconds``) and return the last snapshot.

    With ``execution.tensorboard`` set, every trial's records are written there as TensorBoard
    events while the study runs (:class:`pbt.tensorboard.LiveTensorBoard`); raises SpecError
    before anything runs if the ``tensorboard`` extra is missing.
    """
    objects = open_object_store(spec.storage)
    board = None
    if spec.execution.tensorboard:
        from pbt.tensorboard import LiveTensorBoard

        board = LiveTensorBoard(spec, spec.execution.tensorboard,
                                initial=lambda: StudyStore(objects, spec.name).load_trials())
    executor, lease = make_executor(spec, workers)
    try:
        controller = Controller(spec, executor, objects, lease, observer=observer,
                                record_listeners=[board.changed] if board else ())
        if board:
            board.start()
        return controller.run(max_seconds=max_seconds)
    finally:
        executor.close()
        if board:
            board.close()
