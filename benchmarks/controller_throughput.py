"""Controller scale: trials per second and controller CPU per trial, through Redis.

A PBT study of the toy trainer (microseconds of "training" per trial, so what is measured is
pbt itself: publishing, the result queue, journalling, the policy) runs on real Celery workers
for populations of 100, 1,000 and 10,000 (parallelism = population), a few generations each.
The controller runs in this process; its CPU time is sampled as trials are applied, so the
cost per trial early and late in a study can be compared: flat means linear total cost,
growing means quadratic.

Prints one JSON object:
    {"populations": {"100": {"trials", "wall_s", "trials_per_s", "controller_cpu_s",
     "controller_cpu_ms_per_trial", "cpu_ms_per_trial_first_half", "cpu_ms_per_trial_second_half",
     "late_over_early"}, ...}, "workers": ..., "redis": ...}

Usage: python benchmarks/controller_throughput.py [--populations 100 1000 10000] [--generations 3]
       [--workers 2] [--concurrency 8] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbt.launch import run_study
from pbt.study_file import parse_spec
from pbt.testing import RedisServer, Workers, ping


def study(population: int, generations: int, workers: Workers, storage: str) -> dict[str, Any]:
    return {
        "name": f"throughput-{population}",
        "objective": {"metric": "q", "mode": "max"},
        "parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                       "h1": {"type": "float", "low": 0.0, "high": 1.0}},
        "algorithm": {"name": "pbt", "options": {"population_size": population, "steps_per_trial": 1}},
        "budget": {"total_steps": population * generations},
        "trainer": {"path": "pbt.trainers.toy:ToyTrainer", "config": {"lr": 0.01}},
        # Queued tasks are found in the broker, so a long lease only matters for lost workers.
        "execution": {"parallelism": population, "queue": workers.queue, "lease_seconds": 600,
                      "heartbeat_seconds": 5},
        "storage": storage,
        "broker": workers.broker,
        "seed": 0,
    }


def measure(population: int, generations: int, workers: Workers, storage: Path) -> dict[str, Any]:
    spec = parse_spec(study(population, generations, workers, str(storage)))
    samples: list[tuple[int, float]] = []

    def observe(snapshot) -> None:
        ended = sum(snapshot.by_status.get(s, 0) for s in ("completed", "failed", "stopped"))
        if not samples or ended > samples[-1][0]:
            samples.append((ended, time.process_time()))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    snapshot = run_study(spec, observer=observe)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    trials = snapshot.trials
    half = trials // 2
    mid = next(c for n, c in samples if n >= half)
    first = (mid - cpu0) / max(half, 1)
    second = (samples[-1][1] - mid) / max(trials - half, 1)
    return {
        "trials": trials,
        "finished": snapshot.finished,
        "wall_s": round(wall, 3),
        "trials_per_s": round(trials / wall, 1),
        "controller_cpu_s": round(cpu, 3),
        "controller_cpu_ms_per_trial": round(1000 * cpu / trials, 3),
        "cpu_ms_per_trial_first_half": round(1000 * first, 3),
        "cpu_ms_per_trial_second_half": round(1000 * second, 3),
        "late_over_early": round(second / first, 3) if first > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker (the trainer is a no-op)")
    parser.add_argument("--redis", default=os.environ.get("PBT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)
    # Checkpoints on tmpfs when there is one: this measures pbt, not the disk.
    base = "/dev/shm" if Path("/dev/shm").is_dir() else None
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pbt-throughput-", dir=base) as tmp:
        server = None
        url = args.redis
        if not ping(url):
            server = RedisServer(Path(tmp))
            server.start()
            url = server.url
        pool = Workers(url, Path(tmp))
        try:
            pool.start(args.workers, pool="threads", concurrency=args.concurrency)
            for population in args.populations:
                results[str(population)] = measure(population, args.generations, pool, Path(tmp) / f"p{population}")
                print(f"population {population}: {results[str(population)]}", file=sys.stderr)
        finally:
            pool.stop_all()
            if server:
                server.stop()
    print(json.dumps({"populations": results, "generations": args.generations, "workers": args.workers,
                      "worker_threads": args.concurrency, "trainer": "toy (no-op)"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
