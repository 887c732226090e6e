"""A trial's stdout and stderr, kept bounded and written beside its checkpoints.

While an attempt runs, file descriptors 1 and 2 of the process (and ``sys.stdout``/``sys.stderr``,
which a Celery pool child has replaced with a logger) point at a pipe. A thread drains it and
keeps the first ``head`` and the last ``tail`` bytes: a trainer that prints a gigabyte costs
a few hundred KiB of memory, and C extensions, CUDA and subprocesses the trainer starts are
captured too. When the attempt ends the text goes to ``<study>/logs/<trial>/attempt-<n>.log``
in the study's storage (``pbt logs STUDY TRIAL``); ``pbt status`` shows the last lines of a
failed trial's log.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Iterator

from pbt.storage.keys import join

log = logging.getLogger("pbt.worker")

HEAD_BYTES = 64 * 1024
TAIL_BYTES = 256 * 1024


def log_key(study: str, trial_id: str, attempt: int) -> str:
    """Where an attempt's output is kept: ``<study>/logs/<trial>/attempt-<n>.log``."""
    return join(study, "logs", trial_id, f"attempt-{attempt:03d}.log")


def logs_prefix(study: str, trial_id: str) -> str:
    return join(study, "logs", trial_id) + "/"


class Captured:
    """The bounded text of one capture: head, what was dropped, tail."""

    def __init__(self, head: int, tail: int) -> None:
        self.head_limit = head
        self.tail_limit = tail
        self.head = bytearray()
        self.tail: deque[bytes] = deque()
        self.tail_size = 0
        self.total = 0
        self.lock = threading.Lock()

    def feed(self, data: bytes) -> None:
        with self.lock:
            self.total += len(data)
            room = self.head_limit - len(self.head)
            if room > 0:
                self.head += data[:room]
                data = data[room:]
            if not data:
                return
            self.tail.append(data)
            self.tail_size += len(data)
            while self.tail_size - len(self.tail[0]) >= self.tail_limit:
                self.tail_size -= len(self.tail.popleft())

    def text(self) -> bytes:
        with self.lock:
            tail = b"".join(self.tail)
            if len(tail) > self.tail_limit:
                tail = tail[-self.tail_limit:]
            dropped = self.total - len(self.head) - len(tail)
            middle = f"\n[... {dropped} bytes of output omitted ...]\n".encode() if dropped > 0 else b""
            return bytes(self.head) + middle + tail


@contextlib.contextmanager
def capture_output(head: int = HEAD_BYTES, tail: int = TAIL_BYTES) -> Iterator[Captured]:
    """Send this process's stdout and stderr to a bounded buffer for the duration of the block.

    Falls back to capturing nothing (and says so in the log) where file descriptors 1 and 2
    cannot be redirected.
    """
    captured = Captured(head, tail)
    if not _active.acquire(blocking=False):  # file descriptors are per process: one capture at a time
        yield captured
        return
    try:
        with _redirected(captured):
            yield captured
    finally:
        _active.release()


_active = threading.Lock()


@contextlib.contextmanager
def _redirected(captured: Captured) -> Iterator[None]:
    try:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        read_end, write_end = os.pipe()
        saved = (os.dup(1), os.dup(2))
    except OSError as exc:
        log.warning("trainer output not captured: %s", exc)
        yield
        return
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)
    old_streams = (sys.stdout, sys.stderr)
    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), line_buffering=True, errors="replace")
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), line_buffering=True, errors="replace")
    reader = threading.Thread(target=_drain, args=(read_end, captured), name="pbt-output", daemon=True)
    reader.start()
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = old_streams
        os.dup2(saved[0], 1)  # the pipe's last write ends close here (unless a child process kept one)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        reader.join(timeout=2.0)
        if reader.is_alive():  # a process the trainer started still holds the pipe; the reader
            # (which alone closes the read end) ends when that process does.
            log.debug("trainer output: a child process of the trainer still holds the pipe")


def _drain(fd: int, captured: Captured) -> None:
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            captured.feed(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
