"""``pbt worker``: a Celery worker with the defaults a GPU node wants.

It is plain ``celery -A pbt.tasks worker`` underneath (which works too): one process per GPU,
``-c 1`` each, prefetch 1, task events on for Flower, and ``CUDA_VISIBLE_DEVICES`` pinned per
process when ``--gpus`` lists several devices. What the worker will run is its own
configuration, never the message's (:mod:`pbt.tasks.trust`): ``--storage`` lists the storages
it serves (environment ``PBT_WORKER_STORAGE``, else ``PBT_STORAGE``) and ``--trainers`` the
import prefixes of trainers it may import besides pbt's own (``PBT_WORKER_TRAINERS``); both
are handed to Celery through the environment, so a plain Celery worker reads the same.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from typing import Annotated

import typer
from rich.markup import escape

from pbt.cli.common import EXIT_ENVIRONMENT, EXIT_USAGE, console
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
    storage: str | None = typer.Option(
        None, "--storage", "-s",
        help="comma-separated storage URIs this worker serves (tasks for others are refused); "
             "default PBT_WORKER_STORAGE, else PBT_STORAGE, else the folder the worker starts in",
    ),
    trainers: str | None = typer.Option(
        None, "--trainers",
        help="comma-separated import prefixes of trainers this worker may run besides pbt's own "
             "(pbt.trainers, pbt.wavenet), e.g. mypkg.models; '*' trusts every message (default PBT_WORKER_TRAINERS)",
    ),
) -> None:
    """Run trials from the queue until stopped (SIGTERM saves the running trial and hands it back).

    Exit status 5: the worker retired because its environment kept failing trials (or the broker is unusable).
    """
    from pbt.errors import PbtError
    from pbt.tasks.channels import broker_url
    from pbt.tasks.trust import ENV_STORAGE, ENV_TRAINERS, WorkerTrust

    env = dict(os.environ)
    try:
        env["PBT_BROKER_URL"] = broker_url(broker)
        if storage:
            env[ENV_STORAGE] = storage
        if trainers:
            env[ENV_TRAINERS] = trainers
        trust = WorkerTrust.from_env(env)  # a malformed storage URI fails here, not in every task
        _check_settings(queues, gpus)
    except PbtError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    from pbt.errors import ServiceError
    from pbt.launch import BrokerRefused, check_broker

    try:
        check_broker(env["PBT_BROKER_URL"])
    except BrokerRefused as exc:  # a wrong password: Celery would retry it for ever
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_ENVIRONMENT) from None
    except ServiceError as exc:  # not up yet (a worker may start before Redis): Celery keeps trying
        console.print(f"[yellow]warning:[/yellow] {escape(str(exc))}; retrying until it answers", highlight=False)
    if not trust.storages:
        console.print("[yellow]warning:[/yellow] this worker serves no storage and will refuse every trial; "
                      "pass --storage (or set PBT_WORKER_STORAGE)", highlight=False)
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


def _check_settings(queues: str, gpus: str | None) -> None:
    """What Celery would otherwise take as is: queue names (the study file's rule), the transport's
    timing variables, and ``--gpus`` devices (indexes or GPU-/MIG- UUIDs, as CUDA_VISIBLE_DEVICES takes)."""
    import re

    from pbt.errors import SpecError
    from pbt.names import validate_name
    from pbt.tasks.celery_app import env_seconds

    for queue in queues.split(","):
        validate_name(queue.strip(), "queue name (--queues)")
    env_seconds("PBT_VISIBILITY_TIMEOUT", 1)
    env_seconds("PBT_UNACKED_RESTORE_INTERVAL", 1)
    for device in (gpus or "").split(","):
        if device.strip() and not re.fullmatch(r"[0-9]+|(?:GPU|MIG)-[0-9A-Za-z/-]+", device.strip()):
            raise SpecError(f"--gpus: {device.strip()!r} is not a device index (0, 1, ...) or a GPU-/MIG- UUID")
