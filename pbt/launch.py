"""Wire a study to its executor, storage and lease: the one entry point for running a study.

Used by ``pbt run``, the tests and the benchmarks alike, so all of them exercise the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote, urlparse

from pbt.controller.lease import Lease, local_lease
from pbt.controller.loop import Controller, Snapshot
from pbt.errors import ServiceError, SpecError, StorageError
from pbt.spec import StudySpec
from pbt.storage import open_object_store
from pbt.storage.keys import join
from pbt.storage.study_store import StudyStore
from pbt.tasks.executor import Executor
from pbt.urls import redact_url


def check_services(spec: StudySpec) -> None:
    """Reach the study's storage and broker before anything is printed or written.

    Raises :class:`~pbt.errors.ServiceError` with one line that names the URL (password masked)
    and the cause: storage unreachable, forbidden or missing its bucket; the broker unreachable or
    refusing our password.
    """
    import os

    try:
        objects = open_object_store(spec.storage)
        if objects.uri.startswith("file://"):
            root = unquote(urlparse(objects.uri).path)
            if not os.access(root, os.W_OK | os.X_OK):
                raise ServiceError(f"storage {objects.uri}: not writable by this user")
        objects.exists(join(spec.name, "spec.json"))  # credentials, bucket and permissions, in one request
    except OSError as exc:
        raise ServiceError(f"storage {spec.storage}: cannot use it: {exc.strerror or exc}") from None
    except StorageError as exc:
        raise ServiceError(f"storage unreachable: {exc}") from None
    if spec.broker:
        check_broker(spec.broker)


def check_identity(spec: StudySpec) -> None:
    """Refuse, before anything is shown or run, a spec whose identity differs from the stored study's
    of the same name (the controller's own check, made early so that the error is not preceded by a
    "study started" line). A study left half-created (a spec, no trial) may be taken over."""
    from pbt.controller.loop import IDENTITY_FIELDS

    store = StudyStore(open_object_store(spec.storage), spec.name)
    if not store.exists():
        return
    stored, doc = store.read_spec(), spec.public_dict()
    changed = [f for f in IDENTITY_FIELDS if stored.get(f) != doc.get(f)]
    if changed and store.load_trials():
        raise SpecError(
            f"study {spec.name!r} already exists in {store.objects.uri} with different {', '.join(changed)}; use "
            f"another study name (or storage) for a new study, or delete it with `pbt clear {spec.name} "
            "--storage ... --force`"
        )


def check_broker(url: str) -> None:
    """One PING to the broker; raises ServiceError naming it (password masked) and the cause."""
    import redis

    ping_url = "unix://" + url.removeprefix("redis+socket://") if url.startswith("redis+socket://") else url
    try:
        client = redis.Redis.from_url(ping_url, socket_connect_timeout=5, socket_timeout=5)
    except ValueError as exc:  # not a URL redis can use: the input's fault, not the service's
        raise SpecError(f"broker: {redact_url(url)!r} is not a usable Redis URL: {exc}") from None
    try:
        client.ping()
    except (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
            redis.exceptions.ResponseError) as exc:
        hint = "the database number" if "DB index" in str(exc) else "the password"
        raise BrokerRefused(f"broker {redact_url(url)} refused us: {exc} (check {hint} in the URL)") from None
    except (redis.exceptions.RedisError, OSError) as exc:
        raise ServiceError(f"broker {redact_url(url)} unreachable: {exc}") from None


class BrokerRefused(ServiceError):
    """The broker answers but will not serve us (a wrong password): retrying cannot help."""


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
