"""``pbt worker``: a Celery worker with the defaults a GPU node wants.

It is plain ``celery -A pbt.tasks worker`` underneath (which works too): one process per GPU,
``-c 1`` each, prefetch 1, task events on for Flower, and ``CUDA_VISIBLE_DEVICES`` pinned per
process when ``--gpus`` lists several devices.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Annotated

import typer

from pbt.cli.common import EXIT_USAGE, console
from pbt.cli.options import broker_option


def celery_argv(queues: str, concurrency: int, hostname: str, loglevel: str, pool: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "pbt.tasks", "worker", "-Q", queues, "-c", str(concurrency),
        "-P", pool, "--prefetch-multiplier", "1", "-E", "-n", hostname, "-l", loglevel,
    ]


def worker(
    broker: Annotated[str | None, broker_option("redis://[:password@]host:port/db (or rediss://)")] = None,
    queues: str = typer.Option("pbt.trials", "--queues", "-Q", help="comma-separated queues to consume"),
    concurrency: int = typer.Option(1, "--concurrency", "-c", min=1, help="trials at once per process (1 per GPU)"),
    gpus: str | None = typer.Option(
        None, "--gpus", help="e.g. 0,1,2,3: one worker process per GPU, each seeing only its own device"
    ),
    name: str | None = typer.Option(None, "--hostname", "-n", help="worker name (default pbt@HOST or pbt-gpuN@HOST)"),
    pool: str = typer.Option("prefork", "--pool", "-P", help="prefork isolates crashes; solo runs in-process"),
    loglevel: str = typer.Option("info", "--loglevel", "-l"),
) -> None:
    """Run trials from the queue until stopped (SIGTERM saves the running trial and hands it back)."""
    from pbt.errors import SpecError
    from pbt.tasks.channels import broker_url

    try:
        url = broker_url(broker)
    except SpecError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(EXIT_USAGE) from None
    env = {**os.environ, "PBT_BROKER_URL": url}
    host = socket.gethostname()
    if not gpus:
        argv = celery_argv(queues, concurrency, name or f"pbt@{host}", loglevel, pool)
        os.execvpe(argv[0], argv, env)  # become the worker: signals reach Celery directly
    devices = [d.strip() for d in gpus.split(",") if d.strip()]
    procs = [
        subprocess.Popen(
            celery_argv(queues, 1, f"{name or 'pbt'}-gpu{d}@{host}", loglevel, pool),
            env={**env, "CUDA_VISIBLE_DEVICES": d},
        )
        for d in devices
    ]

    def forward(signum, _frame) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, forward)
    codes = [p.wait() for p in procs]
    raise typer.Exit(max(codes, default=0))
