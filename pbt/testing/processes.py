"""Real processes for tests and benchmarks: the ``pbt`` CLI, Redis servers, Celery workers.

Shipped with the package (as rq and dramatiq ship their test helpers) so that the test suite,
the benchmarks and users testing their own trainers start, watch and kill processes the same
way. Everything here starts real processes in their own process groups and cleans up after them.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import redis
import yaml


def pbt(*args: str, timeout: float = 120, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pbt", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=kw.pop("cwd", None), env={**os.environ, **(env or {})}, **kw)


def pbt_background(*args: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "pbt", *args], stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def status(study: str, storage: str) -> dict[str, Any]:
    proc = pbt("status", study, "--storage", storage, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def write_study(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc; no psutil needed)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for child in children(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Kill a process started with start_new_session=True and everything it started."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def ping(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except redis.exceptions.RedisError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A private redis-server on a free port that keeps nothing on disk, like CI's.

    With ``password`` it requires AUTH; with ``tls`` it serves TLS only, with a throw-away
    certificate authority written to ``workdir`` (``url`` then carries ``ssl_ca_certs``).
    """

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None, tls: bool = False) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.password = password
        self.tls = tls
        auth = f":{password}@" if password else ""
        if tls:
            self.cert, self.key = _self_signed_certificate(self.workdir)
            self.url = f"rediss://{auth}127.0.0.1:{self.port}/0?ssl_cert_reqs=required&ssl_ca_certs={self.cert}"
        else:
            self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        if self.tls:
            args += ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.cert),
                     "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no"]
        else:
            args += ["--port", str(self.port)]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: ping(self.url), 10, what=f"redis-server on port {self.port}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, down_for: float = 0.5) -> None:
        """Kill and start again: every queued and unacked message is gone."""
        self.stop()
        time.sleep(down_for)
        self.start()


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA (``cryptography`` comes with moto/boto)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis-cert.pem", directory / "redis-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Workers:
    """``celery -A pbt.tasks worker`` processes on one queue, each in its own process group.

    They serve ``storage`` (default: everything below ``logdir``) and pbt's own trainers plus
    ``trainers`` (comma-separated import prefixes), as ``pbt worker --storage --trainers`` would.
    """

    def __init__(self, broker: str, logdir: Path, env: dict[str, str] | None = None, storage: str | None = None,
                 trainers: str = "") -> None:
        self.broker = broker
        self.queue = f"pbt.test.{uuid.uuid4().hex[:8]}"
        self.logdir = Path(logdir)
        self.env = {**os.environ, "PBT_BROKER_URL": broker, "PYTHONUNBUFFERED": "1",
                    "PBT_WORKER_STORAGE": storage or str(self.logdir), "PBT_WORKER_TRAINERS": trainers, **(env or {})}
        self.procs: dict[str, subprocess.Popen] = {}
        self.count = 0

    def start(self, n: int = 1, pool: str = "prefork", concurrency: int = 1) -> list[str]:
        names = []
        for _ in range(n):
            self.count += 1
            name = f"w{self.count}-{self.queue[-8:]}@localhost"
            log = self.logdir / f"{name}.log"
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "pbt.tasks", "worker", "-Q", self.queue, "-c", str(concurrency),
                 "-P", pool, "-n", name, "-l", "info", "--without-gossip", "--without-mingle",
                 "--prefetch-multiplier", "1"],
                stdout=open(log, "w"), stderr=subprocess.STDOUT, env=self.env,  # noqa: SIM115
                start_new_session=True,
            )
            names.append(name)
        for name in names:
            wait_for(lambda name=name: "ready." in self.log(name), 30, what=f"worker {name} to be ready")
        return names

    def log(self, name: str) -> str:
        try:
            return (self.logdir / f"{name}.log").read_text()
        except FileNotFoundError:
            return ""

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int | None:
        """Signal the worker's whole process group (main process and pool child)."""
        proc = self.procs[name]
        try:
            if sig == signal.SIGKILL:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)  # like Kubernetes: only the main process hears it
        except ProcessLookupError:
            pass
        try:
            return proc.wait(timeout=60)
        finally:
            del self.procs[name]

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


class FaultyS3Proxy:
    """An HTTP proxy in front of an S3 endpoint that fails some requests, as a brown-out would.

    Every ``fail_every``-th request is answered ``503 SlowDown`` without reaching the store, and
    every ``reset_every``-th has its connection dropped; the rest pass through unchanged. Point
    ``PBT_S3_ENDPOINT_URL`` at :attr:`url` and every pbt process — controller and workers alike —
    goes through real network faults and real botocore retries.
    """

    def __init__(self, upstream: str, fail_every: int = 5, reset_every: int = 0) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlparse

        target = urlparse(upstream)
        proxy = self
        self.requests = 0
        self.faults = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _handle(self) -> None:
                body = self._body()
                with proxy._lock:
                    proxy.requests += 1
                    n = proxy.requests
                if reset_every and n % reset_every == 0:
                    with proxy._lock:
                        proxy.faults += 1
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if fail_every and n % fail_every == 0:
                    with proxy._lock:
                        proxy.faults += 1
                    payload = b"<Error><Code>SlowDown</Code><Message>Reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                hop_by_hop = ("transfer-encoding", "connection")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop_by_hop}
                headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                finally:
                    conn.close()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
