"""The embedded executor: trials run in worker processes on this machine, no broker needed.

Each worker is a spawned process with its own duplex pipe: the controller sends it one task
at a time and it sends back heartbeats and the result. A private pipe per worker (rather than
one shared queue) means a worker that dies mid-write — SIGKILL, OOM, a hung trainer killed at
its time limit — can corrupt nothing but its own channel, which is then thrown away with it.

A worker whose trial left it unfit (``TrialResult.recycle``: out of memory, a broken CUDA
context) exits after sending that result, and is replaced before it is given another trial.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import signal
import socket
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from pbt.tasks.attempt import Interrupt, Preempted, run_attempt
from pbt.tasks.executor import Event, Executor
from pbt.trial import Progress, TrialResult, TrialStatus, TrialTask


class _PipeReporter:
    def __init__(self, conn: Connection, task: TrialTask) -> None:
        self.conn = conn
        self.task = task
        self.stop_requested = False

    def progress(self, progress: Progress) -> None:
        self.conn.send(("progress", progress.model_dump_json()))

    def interrupt(self) -> Interrupt:
        while self.conn.poll(0):
            kind, payload = self.conn.recv()
            if kind == "stop" and payload == self.task.trial_id:
                self.stop_requested = True
        return "stop" if self.stop_requested else None


def _worker_main(conn: Connection, name: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the controller's to handle
    name = f"{name} (pid {os.getpid()})"  # what operators need to find (or kill) it
    while True:
        try:
            kind, payload = conn.recv()
        except EOFError:
            return
        if kind == "exit":
            return
        if kind != "task":
            continue  # a stop for a trial that already ended
        task = TrialTask.model_validate_json(payload)
        reporter = _PipeReporter(conn, task)
        reporter.progress(
            Progress(
                study=task.study, trial_id=task.trial_id, attempt=task.attempt, step=0, worker=name, at=time.time()
            )
        )
        try:
            result = run_attempt(task, reporter, worker=name)
        except Preempted:  # not requested by this executor; treat as a retryable failure
            result = _ended(task, TrialStatus.FAILED, "preempted", name, retryable=True).message
        conn.send(("result", result.model_dump_json()))
        if result.recycle:
            return  # this process is unfit for another trial: the executor starts a fresh one


def _ended(task: TrialTask, status: TrialStatus, error: str, worker: str | None = None,
           retryable: bool = False) -> Event:
    """A result for an attempt that never reported one itself (its process died, or never ran it)."""
    return Event(TrialResult(study=task.study, trial_id=task.trial_id, attempt=task.attempt, status=status,
                             error=error, retryable=retryable, worker=worker, finished_at=time.time()))


class _Worker:
    def __init__(self, ctx: Any, index: int) -> None:
        self.name = f"{socket.gethostname()}/embedded-{index}"
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main, args=(child, self.name), name=f"pbt-worker-{index}", daemon=True
        )
        self.process.start()
        child.close()
        self.task: TrialTask | None = None
        self.started = 0.0
        self.recycle = False  # its last trial left it unfit: replace it, give it nothing more


class EmbeddedExecutor(Executor):
    """``workers`` processes; tasks beyond that wait here in FIFO order."""

    survives_controller = False

    def __init__(self, workers: int | None = None, trial_timeout: float | None = None) -> None:
        self.ctx = mp.get_context("spawn")  # no inherited threads, locks or CUDA state
        self.size = workers or os.cpu_count() or 1
        self.trial_timeout = trial_timeout
        self.pool = [_Worker(self.ctx, i) for i in range(self.size)]
        self.backlog: collections.deque[TrialTask] = collections.deque()
        self.next_index = self.size
        self.pending_events: list[Event] = []  # results made up here (a task stopped before it ran)

    def submit(self, task: TrialTask) -> None:
        self.backlog.append(task)
        self._dispatch()

    def _dispatch(self) -> None:
        for worker in self.pool:
            if not self.backlog:
                return
            if worker.task is None and not worker.recycle:
                worker.task = self.backlog.popleft()
                worker.started = time.time()
                worker.conn.send(("task", worker.task.model_dump_json()))

    def events(self, timeout: float) -> list[Event]:
        self._dispatch()
        handles: dict[Any, _Worker] = {}
        for w in self.pool:
            handles[w.conn] = w
            handles[w.process.sentinel] = w
        out, self.pending_events = self.pending_events, []
        for ready in wait(list(handles), timeout=timeout):
            worker = handles[ready]
            if ready is worker.conn:
                self._drain(worker, out)
        now = time.time()
        for worker in list(self.pool):
            if worker.recycle and worker.task is None:
                worker.process.join(5)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join()
                self._replace(worker, out, "")
            elif not worker.process.is_alive():
                self._drain(worker, out)
                self._replace(
                    worker, out, f"the worker process died (exit code {worker.process.exitcode}) during the trial"
                )
            elif self.trial_timeout and worker.task is not None and now - worker.started > self.trial_timeout:
                worker.process.kill()
                worker.process.join()
                self._replace(worker, out, f"timed out after {self.trial_timeout:g}s (trial_timeout)")
        self._dispatch()
        return out

    def _drain(self, worker: _Worker, out: list[Event]) -> None:
        try:
            while worker.conn.poll(0):
                kind, payload = worker.conn.recv()
                if kind == "progress":
                    out.append(Event(Progress.model_validate_json(payload)))
                elif kind == "result":
                    result = TrialResult.model_validate_json(payload)
                    out.append(Event(result))
                    worker.task = None
                    worker.recycle = result.recycle
        except (EOFError, OSError):
            pass  # the worker died mid-message; handled by the liveness check

    def _replace(self, worker: _Worker, out: list[Event], reason: str) -> None:
        if worker.task is not None:
            out.append(_ended(worker.task, TrialStatus.FAILED, reason, worker.name, retryable=True))
        worker.conn.close()
        self.pool[self.pool.index(worker)] = _Worker(self.ctx, self.next_index)
        self.next_index += 1

    def stop(self, task: TrialTask) -> None:
        for worker in self.pool:
            if worker.task is not None and worker.task.trial_id == task.trial_id:
                worker.conn.send(("stop", task.trial_id))
                return
        if any(t.trial_id == task.trial_id for t in self.backlog):
            self.backlog = collections.deque(t for t in self.backlog if t.trial_id != task.trial_id)
            self.pending_events.append(
                _ended(task, TrialStatus.STOPPED, "stopped early by the policy before it started")
            )


    def close(self) -> None:
        for worker in self.pool:
            try:
                worker.conn.send(("exit", None))
            except OSError:
                pass
        deadline = time.time() + 2
        for worker in self.pool:
            worker.process.join(max(0.0, deadline - time.time()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
