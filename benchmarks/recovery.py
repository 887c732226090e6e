"""Recovery under fire: a distributed study with workers SIGKILLed mid-trial and a controller restart.

Real Redis, real ``celery worker`` processes, the real ``pbt run`` controller in a subprocess.
While the study runs, this script repeatedly picks a worker that is in the middle of a trial,
SIGKILLs its whole process group (main process and pool child: a node lost, a spot instance
reclaimed without notice) and starts a replacement; half way through it SIGKILLs the controller
and starts it again. At the end it reads the study back and prints one JSON object:

    {"kills": K, "controller_restarts": 1, "trials": N, "recorded_once": true, "lost": 0,
     "duplicated": 0, "steps_over_budget": 0, "steps_lost_per_kill_max": S, "checkpoint_every": C,
     "steps_lost_per_kill": [...], "wall_s": ...}

Steps lost are *measured*, not bounded: the toy trainer appends "pid lineage-step" to a log at
every step, so the work a killed process had done is known exactly and compared with the step
its trial resumed from.

Usage: python benchmarks/recovery.py [--kills 6] [--workers 3] [--checkpoint-every 4]
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
import yaml

from pbt.testing import RedisServer, Workers, kill_group, ping, status, wait_for

STUDY = "recovery"


def study(storage: Path, workers: Workers, step_log: Path, checkpoint_every: int, budget: int) -> dict[str, Any]:
    return {
        "name": STUDY,
        "objective": {"metric": "q", "mode": "max"},
        "parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                       "h1": {"type": "float", "low": 0.0, "high": 1.0}},
        "algorithm": {"name": "pbt", "options": {"population_size": 6, "steps_per_trial": 16}},
        "budget": {"total_steps": budget},
        "trainer": {"path": "pbt.trainers.toy:ToyTrainer",
                    "config": {"lr": 0.01, "sleep_per_step": 0.05, "step_log": str(step_log)}},
        "execution": {"parallelism": 6, "checkpoint_every": checkpoint_every, "queue": workers.queue,
                      "heartbeat_seconds": 0.5, "lease_seconds": 4, "max_attempts": 10},
        "storage": str(storage),
        "broker": workers.broker,
        "seed": 0,
    }


def busy_trial(client: redis.Redis, live: set[str]) -> tuple[str, str, int] | None:
    """(trial id, worker name, pid) of a trial a live worker is running, past its first checkpoint."""
    for key in client.scan_iter(f"pbt:{STUDY}:alive:*"):
        raw = client.get(key)
        if not raw:
            continue
        beat = json.loads(raw)
        name, _, pid = beat["worker"].partition(" (pid ")
        if name in live and beat["step"] >= 1:
            return key.decode().rsplit(":", 1)[1], name, int(pid.rstrip(")"))
    return None


def trial_of(client: redis.Redis, pid: int) -> str | None:
    for key in client.scan_iter(f"pbt:{STUDY}:alive:*"):
        raw = client.get(key)
        if raw and json.loads(raw)["worker"].endswith(f"(pid {pid})"):
            return key.decode().rsplit(":", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=4)
    parser.add_argument("--budget", type=int, default=576, help="total training steps (16 per trial)")
    parser.add_argument("--redis", default=os.environ.get("PBT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="pbt-recovery-") as tmp:
        root = Path(tmp)
        server = None
        url = args.redis
        if not ping(url):
            server = RedisServer(root)
            server.start()
            url = server.url
        pool = Workers(url, root, {"PBT_VISIBILITY_TIMEOUT": "60", "PBT_UNACKED_RESTORE_INTERVAL": "2"})
        client = redis.Redis.from_url(url)
        step_log = root / "steps.log"
        spec_path = root / "study.yaml"
        storage = root / "runs"
        spec_path.write_text(yaml.safe_dump(study(storage, pool, step_log, args.checkpoint_every, args.budget)))
        kills: list[tuple[str, int]] = []  # (trial id, killed pid)
        started = time.time()
        from pbt.testing import pbt_background

        controller = pbt_background("run", str(spec_path), "-q", log=root / "controller-1.log")
        restarts = 0
        try:
            pool.start(args.workers)
            while len(kills) < args.kills and controller.poll() is None:
                found = wait_for(lambda c=controller: busy_trial(client, set(pool.procs)) or c.poll() is not None,
                                 60, interval=0.1, what="a busy worker")
                if found is True:
                    break
                _, name, pid = found
                time.sleep(0.1)
                pool.kill(name)  # SIGKILL the whole process group
                # Which trial died is read after the kill: the dead process's liveness key stays
                # until its TTL (the trial picked above may have finished in the meantime).
                trial_id = trial_of(client, pid)
                if trial_id is None:
                    continue  # killed between two trials: nothing was running
                kills.append((trial_id, pid))
                pool.start(1)
                print(f"kill {len(kills)}: {name} running {trial_id}", file=sys.stderr)
                if len(kills) == args.kills // 2:
                    kill_group(controller)
                    restarts += 1
                    controller = pbt_background("run", str(spec_path), "-q", log=root / "controller-2.log")
            code = controller.wait(timeout=600)
            if code != 0:
                sys.stderr.write((root / f"controller-{restarts + 1}.log").read_text()[-4000:])
                raise SystemExit(f"the controller exited with {code}")
        finally:
            kill_group(controller)
            pool.stop_all()
            if server:
                server.stop()
        wall = time.time() - started

        data = status(STUDY, str(storage))
        trials = data["trials"]
        ids = [t["id"] for t in trials]
        last_step: dict[int, int] = {}  # a pool child runs many trials: its last line is the killed one
        for line in step_log.read_text().splitlines():
            pid, step = line.split()
            last_step[int(pid)] = int(step)
        by_id = {t["id"]: t for t in trials}
        lost = []
        for trial_id, pid in kills:
            t = by_id[trial_id]
            resumed = t["start_lineage_steps"] + (t["resumed_from_step"] or 0)
            if pid in last_step:
                lost.append(max(0, last_step[pid] - resumed))
        result = {
            "kills": len(kills),
            "controller_restarts": restarts,
            "trials": len(trials),
            "recorded_once": len(ids) == len(set(ids)) and [t["number"] for t in trials] == list(range(len(trials))),
            "lost": sum(1 for t in trials if t["status"] not in ("completed", "failed", "stopped")),
            "failed": sum(1 for t in trials if t["status"] == "failed"),
            "duplicated": len(ids) - len(set(ids)),
            "steps_over_budget": sum(t["steps_done"] for t in trials) - args.budget,
            "steps_lost_per_kill_max": max(lost, default=0),
            "steps_lost_per_kill": lost,
            "checkpoint_every": args.checkpoint_every,
            "attempts_total": sum(t["attempts"] for t in trials),
            "wall_s": round(wall, 1),
        }
        print(json.dumps(result, indent=2))
        return 0 if result["recorded_once"] and not result["lost"] and not result["duplicated"] else 1


if __name__ == "__main__":
    sys.exit(main())
