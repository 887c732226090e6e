"""Storage back ends for pbt's own storage tests, and S3 fault injection.

The behavioural suites live in :mod:`pbt.testing.storage`; ``test_object_store.py`` and
``test_checkpoints.py`` run them against ``file://`` (a folder in ``tmp_path``) and ``s3://`` (a
fresh bucket on a moto server) through :func:`open_backend`, so the two back ends cannot drift
apart. ``test_study_store.py`` uses the same back ends.

The moto server is a ``ThreadedMotoServer`` running in a *child process*, started once per test
session on a free port and shared by every S3 test. A separate process is what production looks
like (real HTTP, real sockets, a server that survives the client), lets tests start other client
processes on the same bucket, and keeps the server's own memory out of peak-memory measurements
taken in the test process. The child exits when our end of its stdin closes, so an interrupted
session leaves no server behind.

Faults are injected on the client side with a botocore ``before-send`` hook: the real client and
its real retry logic see a 503 or a dropped connection exactly as if the network produced them.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import os
import re
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import botocore.retries.standard
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError
from botocore.retries.standard import ExponentialBackoff

from pbt.storage.base import ObjectStore
from pbt.storage.local import LocalObjectStore
from pbt.storage.s3 import S3ObjectStore, S3Settings, reset_clients
from pbt.testing.storage import PART, MiB, payload_version, versioned_payload, write_random_file  # noqa: F401 - sb.*

KINDS = ("file", "s3")
# Never printed anywhere by pbt: tests assert it appears in no error message.
SECRET = "pbt-test-SECRET-do-not-print-0123456789"

_SERVER = """
import sys
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()  # until the parent closes our stdin (or dies)
server.stop()
"""


@functools.lru_cache(maxsize=1)
def moto_endpoint() -> str:
    """Start the shared moto server (once) and return its endpoint URL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug logs every request
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip().isdigit():
        proc.kill()
        raise RuntimeError("the moto server did not start (is moto[server] installed?)")

    def stop() -> None:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()

    atexit.register(stop)
    return f"http://127.0.0.1:{int(line)}"


def fake_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for moto only; nothing from the developer's real AWS setup can leak in."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "PBT_S3_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def s3_settings(**changes: Any) -> S3Settings:
    """Small parts and a small retry budget: multipart and retry exhaustion stay fast to test."""
    base = S3Settings(
        endpoint_url=moto_endpoint(),
        max_attempts=3,
        multipart_threshold=PART,
        multipart_chunksize=PART,
        max_concurrency=4,
        connect_timeout=2.0,
        read_timeout=10.0,
    )
    return base.replace(**changes)


@dataclass
class Backend:
    """One back end under test: ``store`` at ``uri``, plus ways to open more stores beside it."""

    kind: str
    uri: str
    store: ObjectStore
    settings: S3Settings | None = None
    bucket: str | None = None

    def open(self, suffix: str = "", **changes: Any) -> ObjectStore:
        """A new store instance at ``uri + suffix`` (same bucket/folder, same or changed settings)."""
        uri = self.uri + suffix
        if self.kind == "file":
            return LocalObjectStore(Path(unquote(urlparse(uri).path)))
        assert self.settings is not None
        return S3ObjectStore(uri, self.settings.replace(**changes))

    def fresh(self) -> ObjectStore:
        """A store at an unused sub-prefix: a clean slate for one hypothesis example."""
        return self.open("/" + uuid.uuid4().hex[:10])


def open_backend(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
    if kind == "file":
        root = tmp_path / "store"
        store = LocalObjectStore(root)
        return Backend(kind, store.uri, store)
    fake_aws_env(monkeypatch)
    settings = s3_settings()
    bucket = f"pbt-test-{uuid.uuid4().hex[:12]}"
    S3ObjectStore(f"s3://{bucket}", settings).client.create_bucket(Bucket=bucket)
    uri = f"s3://{bucket}/studies/root"
    return Backend(kind, uri, S3ObjectStore(uri, settings), settings, bucket)


class S3Backed:
    """The S3 side of a storage contract suite: a moto-backed store, reopened from its settings."""

    @pytest.fixture
    def backend(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Backend:
        return open_backend("s3", tmp_path, monkeypatch)

    @pytest.fixture
    def open_store(self, backend: Backend) -> Callable[..., ObjectStore]:
        return backend.open

    def recipe(self, store: ObjectStore) -> tuple[Callable[..., ObjectStore], tuple[Any, ...]]:
        assert isinstance(store, S3ObjectStore)
        return S3ObjectStore, (store.uri, store.settings)  # moto's endpoint is in the settings, not the env


def fast_backoff(monkeypatch: pytest.MonkeyPatch, scale: float = 0.01) -> None:
    """Shrink botocore's back-off delays (not its decisions): retry tests take milliseconds."""
    original = ExponentialBackoff.delay_amount
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, ctx: scale * original(self, ctx))


# --- fault injection --------------------------------------------------------------------------


class _Raw:
    """The minimum of a urllib3 response that botocore reads from a faked one."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, *_args: Any, **_kwargs: Any) -> Any:
        yield self._body


def canned(status: int, body: bytes) -> Callable[[Any], AWSResponse]:
    """A fault: S3 answers ``status`` with this XML ``body``, whatever was asked."""

    def fault(request: Any) -> AWSResponse:
        return AWSResponse(request.url, status, {"Content-Type": "application/xml"}, _Raw(body))

    return fault


def http_error(status: int, code: str) -> Callable[[Any], AWSResponse]:
    """A fault: S3 answers ``status`` with an XML error ``code`` (e.g. 503 SlowDown)."""
    return canned(
        status,
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected {code}</Message><RequestId>test</RequestId></Error>".encode(),
    )


def connection_refused(request: Any) -> None:
    """A fault: the endpoint cannot be reached."""
    raise EndpointConnectionError(endpoint_url=request.url)


def connection_reset(request: Any) -> None:
    """A fault: the connection drops mid-request (ECONNRESET)."""
    raise ConnectionClosedError(endpoint_url=request.url)


class _CutRaw:
    """A body that ends early: the server promised more bytes than arrive before the link dies."""

    def __init__(self, sent: bytes) -> None:
        self._data = io.BytesIO(sent)

    def read(self, amt: int | None = None, **_kwargs: Any) -> bytes:
        return self._data.read(amt)

    def stream(self, *_args: Any, **_kwargs: Any) -> Any:
        yield self._data.read()

    def close(self) -> None:
        pass


def body_cut(request: Any) -> AWSResponse:
    """A fault: GetObject answers with its headers, then the connection dies mid-body.

    Realistic in size: fewer bytes than the requested range (none for a whole object), so a
    correct retry overwrites them all.
    """
    match = re.fullmatch(r"bytes=(\d+)-(\d+)", str(request.headers.get("Range", "")))
    promised = int(match.group(2)) - int(match.group(1)) + 1 if match else MiB
    sent = b"\0" * min(7, promised - 1) if match else b""
    headers = {"Content-Length": str(promised), "Content-Type": "binary/octet-stream"}
    return AWSResponse(request.url, 206 if match else 200, headers, _CutRaw(sent))


FAULTS: dict[str, Callable[[Any], Any]] = {
    "503 SlowDown": http_error(503, "SlowDown"),
    "500 InternalError": http_error(500, "InternalError"),
    "connection refused": connection_refused,
    "connection reset": connection_reset,
}


@dataclass
class FaultInjector:
    """Counts every request a client sends and fails chosen ones before they reach the network.

    ``fail_run`` failures then one pass, per thread: each request's retries happen on one thread
    one after the other, so with ``fail_run < max_attempts`` every request fails exactly
    ``fail_run`` times and then succeeds, however s3transfer spreads parts over threads.
    ``fail_run=None`` fails everything (a retry budget that must run out).
    """

    store: S3ObjectStore
    fault: Callable[[Any], Any] | None = None
    fail_run: int | None = 0
    operations: frozenset[str] | None = None  # None: every operation
    sent: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    ranged_gets: int = 0
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # A client of its own: botocore's retry quota is per client, and the hook must not
        # outlive the test (remove() drops the client again).
        reset_clients()
        self.store.client.meta.events.register("before-send.s3", self._before_send, unique_id="pbt-faults")

    def remove(self) -> None:
        self.store.client.meta.events.unregister("before-send.s3", unique_id="pbt-faults")
        reset_clients()


    def _before_send(self, request: Any, event_name: str, **_kwargs: Any) -> Any:
        op = event_name.rsplit(".", 1)[-1]
        with self._lock:
            self.sent[op] += 1
            if op == "GetObject" and request.headers.get("Range"):
                self.ranged_gets += 1
        if self.fault is None or (self.operations is not None and op not in self.operations):
            return None
        if self.fail_run is not None:
            position = getattr(self._local, "position", 0)
            self._local.position = (position + 1) % (self.fail_run + 1)
            if position == self.fail_run:
                return None  # this attempt goes through
        with self._lock:
            self.failed[op] += 1
        return self.fault(request)


@contextlib.contextmanager
def injectors() -> Iterator[Callable[..., FaultInjector]]:
    """``make(store, fault, fail_run, operations)``; every injector made is removed on exit."""
    made: list[FaultInjector] = []
    # botocore's client-side retry quota is its policy, not pbt's, and the price of a retry
    # changed between releases (5 tokens of 500 in botocore 1.43, 14 in 1.44): these tests
    # measure pbt's retry budget, so the quota is lifted while faults are injected.
    checker = botocore.retries.standard.RetryQuotaChecker
    acquire = checker.acquire_retry_quota
    checker.acquire_retry_quota = lambda self, context: True  # type: ignore[method-assign]

    def make(store: ObjectStore, *args: Any, **kwargs: Any) -> FaultInjector:
        assert isinstance(store, S3ObjectStore), "faults are injected into S3 clients only"
        made.append(FaultInjector(store, *args, **kwargs))
        return made[-1]

    try:
        yield make
    finally:
        checker.acquire_retry_quota = acquire  # type: ignore[method-assign]
        for injector in made:
            injector.remove()
