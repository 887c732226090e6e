"""Controller scale: trials per second and controller CPU per trial, through Redis.

A PBT study of the toy trainer (microseconds of "training" per trial, so what is measured is
pbt itself: publishing, the result queue, journalling, the policy) runs on real Celery workers
for populations of 100, 1,000 and 10,000 (parallelism = population), a few generations each.
The controller runs in this process; its CPU time is sampled as trials are applied, so the
cost per trial early and late in a study can be compared: flat means linear total cost,
growing means quadratic. A small unreported study runs first, so that one-off imports are not
charged to the first population's trials.

Redis traffic is counted on the controller's side by wrapping redis-py's connection in this
process (every command sent, every round trip, a pipeline being one), and for everyone (workers
included) from ``INFO commandstats``. The raw transport ceiling is measured in the same run on
the same Redis: messages of the size of this study's task messages pushed and popped in
pipelines, and result-sized entries XADDed, read with XREADGROUP and XACKed in batches — what
Redis itself allows, to which pbt's trials/s and CPU per trial are compared.

Prints one JSON object:
    {"populations": {"100": {"trials", "wall_s", "trials_per_s", "controller_cpu_s",
     "controller_cpu_ms_per_trial", "cpu_ms_per_trial_first_half", "cpu_ms_per_trial_second_half",
     "late_over_early", "redis_commands_per_trial", "redis_round_trips_per_trial",
     "redis_commands_per_trial_all_clients", "vs_ceiling": {...}}, ...},
     "ceiling": {"messages_per_s", "cpu_us_per_message", ...}, "workers": ...}

Usage: python benchmarks/controller_throughput.py [--populations 100 1000 10000] [--generations 3]
       [--workers 2] [--concurrency 8] [--redis redis://127.0.0.1:6379/0] [--out FILE]
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

import redis
import redis.connection

from pbt.launch import run_study
from pbt.study_file import parse_spec
from pbt.testing import RedisServer, Workers, ping


class RedisCounter:
    """Counts the commands and round trips of every redis-py connection in this process."""

    def __init__(self) -> None:
        self.commands = 0
        self.round_trips = 0
        conn = redis.connection.Connection
        self._saved = (conn.pack_command, conn.pack_commands, conn.send_packed_command)
        counter = self
        pack_command, pack_commands, send_packed = self._saved

        def counted_pack_command(self, *args):
            counter.commands += 1
            return pack_command(self, *args)

        def counted_pack_commands(self, commands):
            commands = list(commands)
            counter.commands += len(commands)
            return pack_commands(self, commands)

        def counted_send(self, command, check_health=True):
            counter.round_trips += 1
            return send_packed(self, command, check_health)

        conn.pack_command, conn.pack_commands, conn.send_packed_command = (
            counted_pack_command, counted_pack_commands, counted_send)

    def close(self) -> None:
        conn = redis.connection.Connection
        conn.pack_command, conn.pack_commands, conn.send_packed_command = self._saved


def total_commands(url: str) -> int:
    """Commands Redis has executed, all clients together (INFO commandstats)."""
    stats = redis.Redis.from_url(url).info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def ceiling(url: str, task_bytes: int, result_bytes: int, n: int = 20000, batch: int = 1000) -> dict[str, Any]:
    """The raw transport: ``n`` task-sized messages LPUSHed and RPOPed, ``n`` result-sized entries
    XADDed, XREADGROUPed and XACKed+XDELed, all in pipelines of ``batch``; one client."""
    client = redis.Redis.from_url(url)
    queue, stream = "pbt.ceiling.queue", "pbt.ceiling.stream"
    client.delete(queue, stream)
    client.xgroup_create(stream, "g", id="0", mkstream=True)
    task, result = b"x" * task_bytes, {"m": b"y" * result_bytes}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n // batch):
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.lpush(queue, task)
        pipe.execute()
    for _ in range(n // batch):
        client.rpop(queue, batch)
    for _ in range(n // batch):
        pipe = client.pipeline(transaction=False)
        for _ in range(batch):
            pipe.xadd(stream, result)
        pipe.execute()
    while True:
        reply = client.xreadgroup("g", "c", {stream: ">"}, count=batch)
        if not reply:
            break
        ids = [i for i, _ in reply[0][1]]
        pipe = client.pipeline(transaction=False)
        pipe.xack(stream, "g", *ids)
        pipe.xdel(stream, *ids)
        pipe.execute()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    client.delete(queue, stream)
    # One "trial" on the raw transport: its task published and consumed, its result too.
    return {"trials": n, "task_bytes": task_bytes, "result_bytes": result_bytes, "batch": batch,
            "trials_per_s": round(n / wall, 1), "cpu_ms_per_trial": round(1000 * cpu / n, 4)}


def message_sizes(spec) -> tuple[int, int]:
    """Bytes of one task message as the controller publishes it, and of one result entry."""
    from pbt.tasks.distributed import CeleryExecutor
    from pbt.trial import TrialResult, TrialStatus, TrialTask

    executor = CeleryExecutor(spec)
    task = TrialTask(study=spec.name, trial_id="t000123", number=123, attempt=1, params={"h0": 0.5, "h1": 0.25},
                     steps=1, parent="t000023", parent_checkpoint=f"{spec.name}/checkpoints/t000023/step-000000001",
                     storage=spec.storage, trainer=spec.trainer.path, trainer_config=spec.trainer.config,
                     objective_metric="q", seed=0, published_at=time.time())
    result = TrialResult(study=spec.name, trial_id="t000123", attempt=1, status=TrialStatus.COMPLETED, steps_done=1,
                         objective=1.0, checkpoint=f"{spec.name}/checkpoints/t000123/step-000000001",
                         worker="a@host (pid 1234)", finished_at=time.time())
    size = len(executor.message(task)), len(json.dumps(result.model_dump(mode="json") | {"kind": "result"}))
    executor.close()
    return size


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


def measure(population: int, generations: int, workers: Workers, storage: Path,
            counter: RedisCounter) -> dict[str, Any]:
    spec = parse_spec(study(population, generations, workers, str(storage)))
    samples: list[tuple[int, float]] = []
    commands0, round_trips0, all0 = counter.commands, counter.round_trips, total_commands(workers.broker)

    def observe(snapshot) -> None:
        ended = sum(snapshot.by_status.get(s, 0) for s in ("completed", "failed", "stopped"))
        if not samples or ended > samples[-1][0]:
            samples.append((ended, time.process_time()))

    cpu0, wall0 = time.process_time(), time.perf_counter()
    snapshot = run_study(spec, observer=observe)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    commands, round_trips = counter.commands - commands0, counter.round_trips - round_trips0
    all_commands = total_commands(workers.broker) - all0 - 1
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
        "redis_commands_per_trial": round(commands / trials, 2),
        "redis_round_trips_per_trial": round(round_trips / trials, 3),
        "redis_commands_per_trial_all_clients": round(all_commands / trials, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--populations", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--generations", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="celery worker processes")
    parser.add_argument("--concurrency", type=int, default=8, help="threads per worker (the trainer is a no-op)")
    parser.add_argument("--redis", default=os.environ.get("PBT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--out", default=None, help="also write the JSON here")
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
        counter = RedisCounter()
        try:
            pool.start(args.workers, pool="threads", concurrency=args.concurrency)
            sizes = message_sizes(parse_spec(study(100, 1, pool, str(Path(tmp) / "sizes"))))
            raw = ceiling(url, *sizes)
            print(f"raw transport ceiling: {raw}", file=sys.stderr)
            # Warm-up, not reported: the first study in a process pays its one-off imports (Celery's
            # protocol, kombu, pydantic schemas: ~30 ms of CPU, which would be 0.1 ms per trial at
            # population 100), a cost per controller process, not per trial.
            measure(10, 1, pool, Path(tmp) / "warmup", counter)
            for population in args.populations:
                row = measure(population, args.generations, pool, Path(tmp) / f"p{population}", counter)
                row["vs_ceiling"] = {
                    "trials_per_s": round(row["trials_per_s"] / raw["trials_per_s"], 4),
                    "cpu_per_trial": round(row["controller_cpu_ms_per_trial"] / raw["cpu_ms_per_trial"], 1),
                }
                results[str(population)] = row
                print(f"population {population}: {row}", file=sys.stderr)
        finally:
            counter.close()
            pool.stop_all()
            if server:
                server.stop()
    text = json.dumps({"populations": results, "ceiling": raw, "generations": args.generations,
                       "workers": args.workers, "worker_threads": args.concurrency, "trainer": "toy (no-op)",
                       "machine": f"{os.cpu_count()} CPUs", "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                       "command": "python benchmarks/controller_throughput.py " + " ".join(argv or sys.argv[1:])},
                      indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
