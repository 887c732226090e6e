"""Run one attempt of one trial: the work every executor performs, with no broker in sight.

The Celery task and the embedded executor both call :func:`run_trial`; it is a plain function
so it can be tested without Redis. Its job, in order:

1. resume from the trial's own latest in-trial checkpoint if an earlier attempt left one
   (a preempted or crashed attempt loses at most ``checkpoint_every`` steps), else warm-start
   from the parent's checkpoint, falling back along the lineage if that one fails
   verification — never silently from scratch;
2. train in chunks with :class:`~pbt.trainers.driver.TrainerDriver` (the loop a replay runs too),
   saving an in-trial checkpoint every ``checkpoint_every`` steps, reporting progress after each
   chunk and honouring a stop or a preemption there;
3. evaluate, refuse a missing or non-finite objective, save the final checkpoint (which also
   records the final metrics, so a redelivered attempt that finds it returns the same result at once).

Whatever the trainer does — raise, return NaN — the attempt ends in a :class:`TrialResult`,
never an exception, except :class:`Preempted`, which asks the executor to hand the task back.

A failure carries its scope (:class:`~pbt.trial.FailureScope`): an error that is the same for
every trial — the objective metric missing from ``evaluate()``, a trainer that cannot be built
from ``trainer.config``, a protocol method called with the arguments pbt passes that does not
accept them — is ``study``-scoped, so the controller ends the study at once; anything else is
the trial's. An error of the *worker's* environment — out of memory (host or CUDA), storage
unreachable or refusing this worker's credentials, no CUDA device, a full disk, a trainer this
worker cannot import — is ``worker``-scoped: the controller re-publishes the trial without
charging it an attempt, and when the error leaves the process unfit (out of memory, a CUDA
error) the result says ``recycle`` so that the executor replaces the process before its next
trial. An objective that is NaN or infinite at *any* evaluation ends the attempt there
(non-finite is the worst value, and a diverged model does not recover).

The trainer's stdout and stderr are captured while the attempt runs (:mod:`pbt.tasks.output`)
and kept in the study's storage, one bounded log per attempt.
"""

from __future__ import annotations

import errno
import logging
import math
import shutil
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

from pbt.errors import (
    CorruptCheckpointError,
    FatalError,
    NotFoundError,
    RetryableError,
    ServiceError,
    SpecError,
    StorageError,
    TrainerContractError,
)
from pbt.storage import open_object_store
from pbt.storage.checkpoints import CheckpointStore
from pbt.storage.keys import checkpoint_name, checkpoint_step, trial_prefix
from pbt.tasks.output import Captured, capture_output, log_key
from pbt.trainers import driver as driver_module
from pbt.trainers.base import load_trainer_class
from pbt.trainers.driver import TrainerDriver
from pbt.trial import FailureScope, MetricReport, Progress, Timings, TrialResult, TrialStatus, TrialTask, trial_seed

Interrupt = Literal["stop", "preempt"] | None

log = logging.getLogger("pbt.worker")


class Reporter(Protocol):
    """How an attempt talks to whoever runs it (an embedded pool, a Celery worker)."""

    def progress(self, progress: Progress) -> None: ...

    def interrupt(self) -> Interrupt:
        """``"stop"``: the policy stopped this trial; ``"preempt"``: save and give the task back."""


class NullReporter:
    def progress(self, progress: Progress) -> None:
        pass

    def interrupt(self) -> Interrupt:
        return None


class Preempted(Exception):
    """The attempt saved its progress and should be handed back to the queue."""


@lru_cache(maxsize=8)
def _checkpoints(uri: str) -> CheckpointStore:
    # One store (and one S3 client) per process and URI: workers run many trials.
    return CheckpointStore(open_object_store(uri))


def run_attempt(
    task: TrialTask,
    reporter: Reporter | None = None,
    *,
    worker: str | None = None,
    clock: Callable[[], float] = time.time,
) -> TrialResult:
    """Run one attempt of ``task`` to the end; see the module docstring for the contract."""
    reporter = reporter or NullReporter()
    worker = worker or socket.gethostname()
    started = clock()
    timings = Timings(queue_wait=max(0.0, started - task.published_at) if task.published_at else 0.0)
    attempt = _Attempt(task, reporter, worker, timings)
    workdir = Path(tempfile.mkdtemp(prefix="pbt-attempt-"))  # no name from the message in a path
    output: Captured | None = None
    try:
        with capture_output() as output:
            try:
                return attempt.run(workdir)
            except Preempted:
                raise
            except Exception as exc:
                scope, retryable = classify(exc)
                return attempt.result(
                    TrialStatus.FAILED,
                    error=f"{type(exc).__name__}: {exc}\n\n{traceback.format_exc()}",
                    retryable=retryable,
                    scope=scope,
                    recycle=needs_new_process(exc),
                )
            except (SystemExit, KeyboardInterrupt) as exc:
                # Only trainer code raises these here (pool processes ignore Ctrl-C; Celery stops
                # its children with signals, not exceptions): a failed trial, not a dead worker.
                # The process may hold whatever state the trainer left, so it is replaced.
                return attempt.result(
                    TrialStatus.FAILED,
                    error=f"{type(exc).__name__}: {exc} (raised by the trainer)\n\n{traceback.format_exc()}",
                    retryable=True,
                    recycle=True,
                )
    finally:
        close_trainer(attempt.trainer)
        shutil.rmtree(workdir, ignore_errors=True)
        if output is not None:
            attempt.keep_log(output)


def close_trainer(trainer: Any) -> None:
    """Call a trainer's optional ``close()`` (a function trainer's loop ends there); never raises."""
    close = getattr(trainer, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:  # the attempt's result is decided; a failing close must not change it
            logging.getLogger("pbt.worker").warning("the trainer's close() raised: %s: %s", type(exc).__name__, exc)


def classify(exc: BaseException) -> tuple[FailureScope, bool]:
    """``(scope, retryable)`` of the exception that ended an attempt."""
    if isinstance(exc, (TrainerContractError, SpecError)) or _raised_by_the_call(exc):
        return FailureScope.STUDY, False  # a SpecError from a trainer: its config or the space is wrong
    if worker_fault(exc):
        return FailureScope.WORKER, True
    retryable = isinstance(exc, RetryableError) or not isinstance(exc, (FatalError, AssertionError))
    return FailureScope.TRIAL, retryable


#: Words in an exception's text that mean a GPU out of memory or a CUDA context in a bad state.
_CUDA_OOM = ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED",
             "out of memory on device", "HIP out of memory")
_CUDA_BROKEN = ("CUDA error", "CUDA driver", "no CUDA GPUs are available", "Found no NVIDIA driver",
                "CUDA unavailable", "CUDA is not available", "cudaErrorNoDevice")
_DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.EROFS})


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and what caused it (a trainer that wraps an OOM is still out of memory)."""
    seen: list[BaseException] = []
    while exc is not None and exc not in seen and len(seen) < 8:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError" or any(
        w in str(exc) for w in _CUDA_OOM
    )


def needs_new_process(exc: BaseException) -> bool:
    """The process that raised ``exc`` should not run another trial: memory it cannot give back,
    a CUDA context that is out of memory or broken."""
    return any(_out_of_memory(e) or any(w in str(e) for w in _CUDA_BROKEN) for e in _chain(exc))


def worker_fault(exc: BaseException) -> bool:
    """The worker's environment, not the trial, is at fault: memory, GPU, disk, storage, imports."""
    for e in _chain(exc):
        if isinstance(e, (ServiceError, StorageError, _WorkerEnvironmentError)) or needs_new_process(e):
            return True
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
            return True
    return False


class _WorkerEnvironmentError(RuntimeError):
    """This worker cannot do what the controller could (import the trainer, for one)."""


_CALL_SITES = frozenset({__file__, driver_module.__file__})

#: What a trainer's constructor raises when ``trainer.config`` does not suit it: the same for
#: every trial. (An OSError or a RuntimeError may be the worker's environment: not included.)
_CONFIG_ERRORS = (TypeError, ValueError, LookupError, AttributeError, NameError)


def _raised_by_the_call(exc: BaseException) -> bool:
    """A TypeError raised by the call itself (not inside the trainer): the method does not take
    the arguments the trainer protocol passes, which is the same for every trial."""
    tb = exc.__traceback__
    if not isinstance(exc, TypeError) or tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_filename in _CALL_SITES


class _Attempt:
    def __init__(self, task: TrialTask, reporter: Reporter, worker: str, timings: Timings) -> None:
        self.task = task
        self.reporter = reporter
        self.worker = worker
        self.timings = timings
        self.store = _checkpoints(task.storage)
        self.driver: TrainerDriver | None = None  # once the trainer is set up: steps, metrics
        self.resumed_from: int | None = None
        self.warm_start: str | None = None
        self.checkpoint: str | None = None
        self.trainer: Any = None
        self.diverged: str | None = None  # why an intermediate evaluation ended the attempt

    @property
    def steps_done(self) -> int:
        return self.driver.step if self.driver else 0

    @property
    def metrics(self) -> list[MetricReport]:
        return self.driver.metrics if self.driver else []

    def result(self, status: TrialStatus, **extra: Any) -> TrialResult:
        objective = None
        if status is TrialStatus.COMPLETED and self.metrics:
            objective = self.metrics[-1].values.get(self.task.objective_metric)
        return TrialResult(
            study=self.task.study,
            trial_id=self.task.trial_id,
            attempt=self.task.attempt,
            status=status,
            steps_done=self.steps_done,
            metrics=self.metrics,
            objective=objective,
            checkpoint=self.checkpoint,
            resumed_from_step=self.resumed_from,
            warm_start=self.warm_start,
            timings=self.timings,
            worker=self.worker,
            finished_at=time.time(),
            **extra,
        )

    def keep_log(self, output: Captured) -> None:
        """Store what the attempt printed; a log lost to a storage error is not worth the trial."""
        text = output.text()
        if not text:
            return
        try:
            self.store.objects.put_bytes(log_key(self.task.study, self.task.trial_id, self.task.attempt), text)
        except Exception as exc:
            log.warning("could not keep the output of %s attempt %d: %s", self.task.trial_id, self.task.attempt, exc)

    def run(self, workdir: Path) -> TrialResult:
        task = self.task
        try:
            cls = load_trainer_class(task.trainer)
        except SpecError as exc:  # the controller imported it: this worker's environment differs
            raise _WorkerEnvironmentError(f"this worker cannot load the trainer: {exc}") from exc
        try:
            self.trainer = cls(task.trainer_config)
        except _CONFIG_ERRORS as exc:
            raise TrainerContractError(
                f"the trainer {task.trainer} cannot be built from trainer.config: {type(exc).__name__}: {exc}"
            ) from exc
        self.trainer.setup(task.params, seed=trial_seed(task.seed, task.number))
        self.driver = TrainerDriver(
            self.trainer,
            metric=task.objective_metric,
            checkpoint_every=task.checkpoint_every,
            evaluate_every_checkpoint=task.evaluate_every_checkpoint,
            lineage_start=task.start_lineage_steps,
            timings=self.timings,
        )
        final = self._restore(workdir / "restore", self.driver)
        if final is not None:
            return final
        objective = self.driver.run(task.steps, lambda at_checkpoint: self._between_chunks(workdir, at_checkpoint))
        if self.diverged:
            return self.result(TrialStatus.FAILED, error=self.diverged, retryable=False, diverged=True)
        if objective is None:
            return self.result(TrialStatus.STOPPED, error="stopped early by the policy")
        values = self.metrics[-1].values
        missing = [m for m in task.further_objective_metrics if m not in values]
        if missing:
            raise TrainerContractError(
                f"the trainer's evaluate() returned no {missing} (got {sorted(values)}); "
                "check objective (and the policy's fitness_weights) in the study file"
            )
        diverged = self._non_finite(values)
        if diverged:
            self._progress()
            return self.result(TrialStatus.FAILED, error=f"{diverged} (not finite)", retryable=False, diverged=True)
        self._save(workdir / "final", final=True)
        self._prune_in_trial_checkpoints()
        self._progress()
        return self.result(TrialStatus.COMPLETED)

    def _between_chunks(self, workdir: Path, at_checkpoint: bool) -> bool:
        """Save an in-trial checkpoint, report progress, honour an interrupt; True: stopped."""
        latest = self.metrics[-1] if self.metrics else None
        if latest is not None and latest.step == self.steps_done:
            diverged = self._non_finite(latest.values)
            if diverged:
                self.diverged = f"{diverged} (not finite): stopped at once"
                self._progress()
                return True
        interrupt = self.reporter.interrupt()
        if at_checkpoint or interrupt:
            self._save(workdir / f"save-{self.steps_done}")
        self._progress()
        if interrupt == "preempt":
            raise Preempted(f"{self.task.trial_id} saved at step {self.steps_done} and handed back")
        return interrupt == "stop"

    def _non_finite(self, values: dict[str, float]) -> str | None:
        """``objective q is nan at step 40`` if an objective in ``values`` is not finite."""
        for metric in (self.task.objective_metric, *self.task.further_objective_metrics):
            value = values.get(metric)
            if value is not None and not math.isfinite(value):
                return f"objective {metric} is {value} at step {self.steps_done}"
        return None

    def _restore(self, directory: Path, driver: TrainerDriver) -> TrialResult | None:
        """Load own latest checkpoint, else the parent's (with lineage fallback), and set ``driver``'s start."""
        task = self.task
        t0 = time.perf_counter()
        try:
            for name in reversed(self.store.list(trial_prefix(task.study, task.trial_id) + "/")):
                try:
                    manifest = self.store.load(name, directory / name.rsplit("/", 1)[1])
                except (CorruptCheckpointError, NotFoundError):
                    continue  # a torn or corrupt in-trial checkpoint: try the previous one
                self.trainer.load(directory / name.rsplit("/", 1)[1])
                driver.step = self.resumed_from = checkpoint_step(name)
                driver.metrics = [MetricReport.model_validate(m) for m in manifest.meta.get("metrics", [])]
                self.warm_start = manifest.meta.get("warm_start")
                driver.lineage_start = int(manifest.meta.get("lineage_step", driver.lineage_step)) - driver.step
                if manifest.meta.get("final") and driver.step >= task.steps:
                    self.checkpoint = name
                    return self.result(TrialStatus.COMPLETED)
                return None
            if task.parent_checkpoint:
                errors = []
                for name in [task.parent_checkpoint, *task.fallback_checkpoints]:
                    target = directory / "parent" / str(len(errors))
                    try:
                        manifest = self.store.load(name, target)
                    except (CorruptCheckpointError, NotFoundError) as exc:
                        errors.append(f"{name}: {exc}")
                        continue
                    self.trainer.load(target)
                    self.warm_start = name
                    # A fallback to an older ancestor starts this trial earlier along the lineage.
                    driver.lineage_start = int(manifest.meta.get("lineage_step", driver.lineage_start))
                    return None
                raise FatalError("no usable checkpoint along the lineage:\n  " + "\n  ".join(errors))
            return None
        finally:
            self.timings.checkpoint_load += time.perf_counter() - t0

    def _save(self, directory: Path, final: bool = False) -> None:
        t0 = time.perf_counter()
        directory.mkdir(parents=True)
        self.trainer.save(directory)
        if not any(p.is_file() for p in directory.rglob("*")):  # the same for every trial: end the study
            raise TrainerContractError("the trainer's save(directory) wrote no file into the directory it was given; "
                                       "a checkpoint must hold everything needed to continue training")
        name = checkpoint_name(self.task.study, self.task.trial_id, self.steps_done)
        meta = {
            "trial": self.task.trial_id,
            "attempt": self.task.attempt,
            "step": self.steps_done,
            "final": final,
            "lineage_step": self.driver.lineage_step,
            "warm_start": self.warm_start,
            "metrics": [m.model_dump() for m in self.metrics],
        }
        self.store.save(name, directory, meta=meta)
        shutil.rmtree(directory, ignore_errors=True)
        self.checkpoint = name
        self.timings.checkpoint_save += time.perf_counter() - t0

    def _prune_in_trial_checkpoints(self) -> None:
        """Once the final checkpoint is committed, earlier ones of this trial can only waste space."""
        for name in self.store.list(trial_prefix(self.task.study, self.task.trial_id) + "/"):
            if name != self.checkpoint:
                self.store.delete(name)

    def _progress(self) -> None:
        self.reporter.progress(
            Progress(
                study=self.task.study,
                trial_id=self.task.trial_id,
                attempt=self.task.attempt,
                step=self.steps_done,
                metrics=self.metrics[-1] if self.metrics else None,
                worker=self.worker,
                at=time.time(),
            )
        )
