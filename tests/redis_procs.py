"""Real Redis servers and real Celery workers, owned (started and stopped) by the tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
from procs import ROOT, wait_for


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
    """A private redis-server on a free port that keeps nothing on disk, like CI's."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
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


class Workers:
    """``celery -A pbt.tasks worker`` processes on one queue, each in its own process group."""

    def __init__(self, broker: str, logdir: Path, env: dict[str, str] | None = None) -> None:
        self.broker = broker
        self.queue = f"pbt.test.{uuid.uuid4().hex[:8]}"
        self.logdir = Path(logdir)
        self.env = {**os.environ, "PBT_BROKER_URL": broker, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.procs: dict[str, subprocess.Popen] = {}
        self.count = 0

    def start(self, n: int = 1, pool: str = "prefork") -> list[str]:
        names = []
        for _ in range(n):
            self.count += 1
            name = f"w{self.count}-{self.queue[-8:]}@localhost"
            log = self.logdir / f"{name}.log"
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "pbt.tasks", "worker", "-Q", self.queue, "-c", "1", "-P", pool,
                 "-n", name, "-l", "info", "--without-gossip", "--without-mingle", "--prefetch-multiplier", "1"],
                stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT, env=self.env,  # noqa: SIM115
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
