"""Recovery under fire: a distributed study with workers SIGKILLed mid-trial, a controller restart,
poison messages on the trial queue and pool processes recycled.

Real Redis, real ``celery worker`` processes, the real ``pbt run`` controller in a subprocess, and
the study's *default* liveness settings (``execution.heartbeat_seconds`` and ``lease_seconds``
are not set): what is measured is what a user gets. While the study runs, this script
repeatedly picks a worker in the middle of a trial, SIGKILLs its whole process group (main
process and pool child: a node lost, a spot instance reclaimed without notice) and starts a
replacement; half way through it SIGKILLs the controller and starts it again; it pushes
malformed messages onto the trial queue; and the trainer makes every pool process unfit after a
number of trials (``unfit_after``: a leak), so workers recycle their processes throughout. At the
end it reads the study back and prints one JSON object:

    {"kills": K, "kill_to_running_s": {"median": .., "max": .., "each": [...]},
     "last_kill_to_end_s": .., "poison_injected": P, "dead_lettered": P, "worker_recycles": R,
     "trials": N, "lost": 0, "recorded_twice": 0, "steps_over_budget": 0,
     "steps_lost_per_kill_max": S, "checkpoint_every": C, "controller_restarts": 1, "wall_s": ...}

*kill_to_running_s* is the time from a kill to the killed trial's next attempt sending its first
heartbeat (another worker running it again). Steps lost are *measured*: the toy trainer appends
"pid step" to a log at every step, so the work a killed process had done is known exactly and
compared with the step its trial resumed from.

Usage: python benchmarks/recovery.py [--trials 500] [--kills 6] [--workers 2] [--checkpoint-every 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from pbt.tasks import deadletter
from pbt.testing import RedisServer, Workers, kill_group, pbt_background, ping, status, wait_for

STUDY = "recovery"
STEPS_PER_TRIAL = 16


def study(storage: Path, workers: Workers, step_log: Path, checkpoint_every: int, trials: int,
          sleep: float, unfit_after: int) -> dict[str, Any]:
    return {
        "name": STUDY,
        "objective": {"metric": "q", "mode": "max"},
        "parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                       "h1": {"type": "float", "low": 0.0, "high": 1.0}},
        "algorithm": {"name": "pbt", "options": {"population_size": 6, "steps_per_trial": STEPS_PER_TRIAL}},
        "budget": {"total_steps": trials * STEPS_PER_TRIAL},
        "trainer": {"path": "pbt.trainers.toy:ToyTrainer",
                    "config": {"lr": 0.01, "sleep_per_step": sleep, "step_log": str(step_log),
                               "unfit_after": unfit_after}},
        # Liveness left at its defaults on purpose: the recovery time measured is the default's.
        "execution": {"parallelism": 6, "checkpoint_every": checkpoint_every, "queue": workers.queue,
                      "max_attempts": 10},
        "storage": str(storage),
        "broker": workers.broker,
        "seed": 0,
    }


def beats(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Trial id -> its live heartbeat (attempt, step, worker, at)."""
    out = {}
    for key in client.scan_iter(f"pbt:{STUDY}:alive:*"):
        raw = client.get(key)
        if raw:
            out[key.decode().rsplit(":", 1)[1]] = json.loads(raw)
    return out


def busy_worker(client: redis.Redis, live: set[str]) -> tuple[str, int] | None:
    """(worker name, pid) of a live worker running a trial."""
    for beat in beats(client).values():
        name, _, pid = beat["worker"].partition(" (pid ")
        if name in live:
            return name, int(pid.rstrip(")"))
    return None


def trial_of(client: redis.Redis, pid: int) -> str | None:
    """The trial a (now dead) process was running: its liveness key outlives it until its TTL."""
    for trial_id, beat in beats(client).items():
        if beat["worker"].endswith(f"(pid {pid})"):
            return trial_id
    return None


def watch_rerun(client: redis.Redis, trial_id: str, pid: int, killed_at: float, out: list[float],
                stop: threading.Event) -> None:
    """Record the seconds until ``trial_id`` heartbeats from another process."""
    key = f"pbt:{STUDY}:alive:{trial_id}"
    while not stop.is_set():
        raw = client.get(key)
        if raw and not json.loads(raw)["worker"].endswith(f"(pid {pid})"):
            out.append(time.time() - killed_at)
            return
        time.sleep(0.02)


POISON = [
    b"this is not json {{{",
    b"[1, 2, 3]",
    json.dumps({"body": "!!", "properties": {"delivery_tag": "x", "body_encoding": "base64"}}).encode(),
    json.dumps({"body": "ImEgc3RyaW5nIg==", "content-type": "application/json", "content-encoding": "utf-8",
                "headers": {"task": "pbt.run_trial", "id": "p1", "lang": "py"},
                "properties": {"delivery_tag": "p1", "body_encoding": "base64",
                               "delivery_info": {"exchange": "", "routing_key": "x"}}}).encode(),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--sleep-per-step", type=float, default=0.02, help="seconds; makes trials killable")
    parser.add_argument("--unfit-after", type=int, default=40,
                        help="train() calls (4 per trial) a pool process makes before it is unfit and recycles")
    parser.add_argument("--poison-rounds", type=int, default=5, help="batches of malformed messages pushed")
    parser.add_argument("--redis", default=os.environ.get("PBT_TEST_REDIS_URL"), help="default: a private server")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pbt-recovery-") as tmp:
        root = Path(tmp)
        server = None
        url = args.redis
        if not url or not ping(url):
            server = RedisServer(root)
            server.start()
            url = server.url
        pool = Workers(url, root, {"PBT_VISIBILITY_TIMEOUT": "60", "PBT_UNACKED_RESTORE_INTERVAL": "2"})
        client = redis.Redis.from_url(url)
        deadletter.clear(client)
        step_log = root / "steps.log"
        spec_path = root / "study.yaml"
        storage = root / "runs"
        spec_path.write_text(yaml.safe_dump(study(storage, pool, step_log, args.checkpoint_every, args.trials,
                                                  args.sleep_per_step, args.unfit_after)))
        kills: list[tuple[str, int]] = []  # (trial id, killed pid)
        rerun: list[float] = []
        stop_watching = threading.Event()
        watchers: list[threading.Thread] = []
        poison_sent = 0
        started = time.time()
        controller = pbt_background("run", str(spec_path), "-q", log=root / "controller-1.log")
        restarts = 0
        last_kill = started
        try:
            pool.start(args.workers)
            every = max(1, args.trials // max(1, args.kills + 1))
            rounds = 0
            while len(kills) < args.kills and controller.poll() is None:
                created = sum(1 for _ in client.scan_iter(f"pbt:{STUDY}:attempt:*", count=1000))
                if rounds < args.poison_rounds and created >= rounds * args.trials // max(1, args.poison_rounds):
                    for entry in POISON:  # malformed messages, between the real ones
                        client.lpush(pool.queue, entry)
                        poison_sent += 1
                    rounds += 1
                if created < every * (len(kills) + 1):  # spread the kills over the study
                    time.sleep(0.2)
                    continue
                found = wait_for(lambda c=controller: busy_worker(client, set(pool.procs)) or c.poll() is not None,
                                 60, interval=0.02, what="a busy worker")
                if found is True:
                    break
                name, pid = found
                pool.kill(name)  # SIGKILL the whole process group
                killed_at = time.time()
                trial_id = trial_of(client, pid)
                pool.start(1)
                if trial_id is None:
                    continue  # killed between two trials: nothing was running
                last_kill = killed_at
                kills.append((trial_id, pid))
                watcher = threading.Thread(target=watch_rerun, daemon=True,
                                           args=(client, trial_id, pid, killed_at, rerun, stop_watching))
                watcher.start()
                watchers.append(watcher)
                print(f"kill {len(kills)}: {name} running {trial_id}", file=sys.stderr)
                if len(kills) == args.kills // 2:
                    kill_group(controller)
                    restarts += 1
                    controller = pbt_background("run", str(spec_path), "-q", log=root / "controller-2.log")
            while rounds < args.poison_rounds and controller.poll() is None:
                for entry in POISON:
                    client.lpush(pool.queue, entry)
                    poison_sent += 1
                rounds += 1
            code = controller.wait(timeout=1800)
            ended = time.time()
            if code != 0:
                sys.stderr.write((root / f"controller-{restarts + 1}.log").read_text()[-4000:])
                raise SystemExit(f"the controller exited with {code}")
        finally:
            stop_watching.set()
            kill_group(controller)
            pool.stop_all()
        wall = time.time() - started
        letters = deadletter.count(client)
        recycles = sum(p.read_text(errors="replace").count("replaced the pool process") for p in root.glob("*.log"))
        if server:
            server.stop()

        data = status(STUDY, str(storage))
        trials = data["trials"]
        ids = [t["id"] for t in trials]
        last_step: dict[int, int] = {}  # a pool child runs many trials: its last line is the killed one
        for line in step_log.read_text().splitlines():
            pid, step = line.split()
            last_step[int(pid)] = int(step)
        by_id = {t["id"]: t for t in trials}
        lost_steps = []
        for trial_id, pid in kills:
            t = by_id[trial_id]
            resumed = t["start_lineage_steps"] + (t["resumed_from_step"] or 0)
            if pid in last_step:
                lost_steps.append(max(0, last_step[pid] - resumed))
        result = {
            "kills": len(kills),
            "kill_to_running_s": {
                "median": round(statistics.median(rerun), 2) if rerun else None,
                "max": round(max(rerun), 2) if rerun else None,
                "each": [round(x, 2) for x in sorted(rerun)],
            },
            "last_kill_to_end_s": round(ended - last_kill, 1),
            "default_heartbeat_s": 2.0,
            "default_lease_s": 8.0,
            "poison_injected": poison_sent,
            "dead_lettered": letters,
            "worker_recycles": recycles,
            "controller_restarts": restarts,
            "trials": len(trials),
            "lost": sum(1 for t in trials if t["status"] not in ("completed", "failed", "stopped")),
            "failed": sum(1 for t in trials if t["status"] == "failed"),
            "recorded_twice": len(ids) - len(set(ids)),
            "recorded_once": len(ids) == len(set(ids)) and [t["number"] for t in trials] == list(range(len(trials))),
            "steps_over_budget": sum(t["steps_done"] for t in trials) - args.trials * STEPS_PER_TRIAL,
            "steps_lost_per_kill_max": max(lost_steps, default=0),
            "steps_lost_per_kill": lost_steps,
            "checkpoint_every": args.checkpoint_every,
            "attempts_total": sum(t["attempts"] for t in trials),
            "wall_s": round(wall, 1),
        }
        print(json.dumps(result, indent=2))
        healthy = result["recorded_once"] and not result["lost"] and not result["recorded_twice"]
        return 0 if healthy and letters == poison_sent else 1


if __name__ == "__main__":
    sys.exit(main())
