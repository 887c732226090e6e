"""Search quality on the toy problem: PBT vs random search vs a fixed grid, at equal total steps.

Every method runs through the real controller and embedded workers (the same code path as
``pbt run``), over several seeds, and this prints one JSON object:

    {"budget_steps": S, "seeds": N, "methods": {"pbt": {"final_q_mean", "final_q_std",
     "steps_to_1_19_mean", ...}, "random": {...}, "fixed": {...}}}

``final_q`` is the best Q(θ) a method found (Q* = 1.2). ``steps_to_1_19`` is the total training
steps the study had spent — over all its trials, in trial order — when a trial first reached
Q ≥ 1.19; null where a method never got there.

Usage: python benchmarks/toy_quality.py [--seeds 5] [--budget 2000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pbt.launch import run_study
from pbt.storage import open_object_store
from pbt.storage.study_store import StudyStore
from pbt.study_file import parse_spec

THRESHOLD = 1.19


def study(method: str, budget: int, seed: int, storage: str) -> dict[str, Any]:
    algorithms = {
        "pbt": {"name": "pbt", "options": {"population_size": 10, "steps_per_trial": 4}},
        "random": {"name": "random", "options": {"num_trials": 10}},
        # A practitioner's small grid. The toy's optimum h = (1, 1) lies on the search space's
        # bound, so a grid that includes the bound would be optimal by construction.
        "fixed": {"name": "grid", "options": {"grid": {"h0": [0.25, 0.5, 0.75], "h1": [0.25, 0.5, 0.75]}}},
    }
    return {
        "name": f"{method}-s{seed}",
        "objective": {"metric": "q", "mode": "max"},
        "parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                       "h1": {"type": "float", "low": 0.0, "high": 1.0}},
        "algorithm": algorithms[method],
        "budget": {"total_steps": budget},
        "trainer": {"path": "pbt.trainers.toy:ToyTrainer", "config": {"lr": 0.01}},
        "execution": {"parallelism": 10},
        "storage": storage,
        "seed": seed,
    }


def measure(method: str, budget: int, seed: int, workers: int, root: Path) -> dict[str, Any]:
    spec = parse_spec(study(method, budget, seed, str(root)))
    started = time.perf_counter()
    run_study(spec, workers=workers)
    wall = time.perf_counter() - started
    trials = StudyStore(open_object_store(str(root)), spec.name).load_trials()
    spent, reached = 0, None
    for t in trials:  # trial order is the order results were applied
        spent += t.steps_done
        if reached is None and t.objective is not None and t.objective >= THRESHOLD:
            reached = spent
    finals = [t.objective for t in trials if t.usable]
    return {"final_q": max(finals), "steps_to_1_19": reached, "steps": spent, "trials": len(trials), "wall_s": wall}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [r["final_q"] for r in runs]
    reached = [r["steps_to_1_19"] for r in runs if r["steps_to_1_19"] is not None]
    return {
        "final_q_mean": statistics.fmean(finals),
        "final_q_std": statistics.pstdev(finals),
        "steps_to_1_19_mean": statistics.fmean(reached) if len(reached) == len(runs) else None,
        "reached_1_19": f"{len(reached)}/{len(runs)}",
        "steps_mean": statistics.fmean(r["steps"] for r in runs),
        "trials_mean": statistics.fmean(r["trials"] for r in runs),
        "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
        "runs": finals,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=2000, help="total training steps per study")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    methods: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pbt-bench-") as tmp:
        for method in ("pbt", "random", "fixed"):
            runs = []
            for seed in range(args.seeds):
                runs.append(measure(method, args.budget, seed, args.workers, Path(tmp) / f"{method}-{seed}"))
                print(f"{method} seed {seed}: Q={runs[-1]['final_q']:.6f}", file=sys.stderr)
            methods[method] = summarise(runs)
    print(json.dumps({"budget_steps": args.budget, "seeds": args.seeds, "methods": methods}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
