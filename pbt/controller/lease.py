"""One controller per study: a lease that a second controller cannot take while the first lives.

A file lock (``flock``) for studies on local disk — the kernel drops it when the holder dies,
so a crashed controller never blocks its successor. Distributed studies lock in Redis instead
(:class:`pbt.tasks.distributed.RedisLease`), with a TTL the holder keeps renewing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Protocol

from pbt.errors import StudyLockedError


class Lease(Protocol):
    def acquire(self) -> None: ...

    def renew(self) -> None: ...

    def release(self) -> None: ...


class FileLease:
    def __init__(self, path: Path, study: str) -> None:
        self.path = Path(path)
        self.study = study
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StudyLockedError(
                f"study {self.study!r} is already driven by another controller ({holder}); "
                "stop it first, or wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode(), 0)
        self._fd = fd

    def renew(self) -> None:
        pass  # the kernel holds the lock for as long as the process lives

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def local_lease(storage_uri: str, study: str) -> FileLease:
    """The lease for a study: next to its records on local disk, else in the user's cache."""
    from urllib.parse import unquote, urlparse

    if storage_uri.startswith("file://"):
        return FileLease(Path(unquote(urlparse(storage_uri).path)) / study / "controller.lock", study)
    digest = hashlib.sha256(f"{storage_uri}/{study}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pbt" / "locks"
    return FileLease(cache / f"{study}-{digest}.lock", study)
