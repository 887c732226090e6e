"""Search quality on the toy problem: PBT (perturb, PB2, early stopping) vs random search vs a fixed grid.

Every method runs through the real controller and embedded workers (the same code path as
``pbt run``), over several seeds, at equal total steps (``budget.total_steps``), and this prints
one JSON object:

    {"budget_steps": S, "seeds": N, "methods": {"pbt": {"final_q_mean", "final_q_std",
     "steps_to_1_19_mean", "exploit_fraction", ...}, "random": {...}, "fixed": {...}}}

Methods: PBT with tournament and truncation selection, each with every member in flight
(parallelism = population size, 10) and in budget mode (parallelism 2); PBT and PB2
(``explore: pb2``) at population 4 and 10, every member in flight; PBT with early stopping
(``early_stop``, evaluating every step of its 4-step trials) at population 10, in budget mode
and with every member in flight, to compare with ``pbt-p2`` and ``pbt``; random search; a grid.

``final_q`` is the best Q(θ) a method found (Q* = 1.2). ``steps_to_1_19`` (``steps_to_1_198``)
is the total training steps the study had been charged — over all its trials, in trial order —
when a trial first reached Q ≥ 1.19 (1.198); null where a method never got there. A trial
stopped early is charged the steps up to its stop (``steps`` is that total, ``budget_steps`` at
most); ``steps_trained`` counts what the workers really trained, which is more: a toy step takes
microseconds, so a worker often finishes a trial before the stop reaches it. ``steps_saved`` is
what stopped trials were given but not charged: the steps early stopping handed to other
trials. ``exploit_fraction`` is the share of PBT's decisions (trials with a parent) that copied
another member.

Usage: python benchmarks/toy_quality.py [--seeds 5] [--budget 2000] [--workers 2] [--methods pbt,random]
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

THRESHOLDS = {"steps_to_1_19": 1.19, "steps_to_1_198": 1.198}


PBT = {"name": "pbt", "options": {"population_size": 10, "steps_per_trial": 4}}
TRUNCATION = {"name": "pbt", "options": {**PBT["options"], "selection": "truncation"}}
PBT4 = {"name": "pbt", "options": {**PBT["options"], "population_size": 4}}
PB2 = {"name": "pbt", "options": {**PBT["options"], "explore": "pb2"}}
PB2_4 = {"name": "pbt", "options": {**PB2["options"], "population_size": 4}}
EARLY = {"name": "pbt", "options": {**PBT["options"], "early_stop": {"quantile": 0.25, "min_peers": 3}}}
EVALUATE_EVERY_STEP = {"checkpoint_every": 1}  # early stopping judges intermediate evaluations

#: method -> (algorithm, parallelism, execution fields besides parallelism)
METHODS: dict[str, tuple[dict[str, Any], int, dict[str, Any]]] = {
    "pbt": (PBT, 10, {}),
    "pbt-p2": (PBT, 2, {}),
    "pbt-truncation": (TRUNCATION, 10, {}),
    "pbt-truncation-p2": (TRUNCATION, 2, {}),
    "pbt-pop4": (PBT4, 4, {}),
    "pb2-pop4": (PB2_4, 4, {}),
    "pb2": (PB2, 10, {}),
    "pbt-early-stop": (EARLY, 10, EVALUATE_EVERY_STEP),
    "pbt-early-stop-p2": (EARLY, 2, EVALUATE_EVERY_STEP),
    "random": ({"name": "random", "options": {"num_trials": 10}}, 10, {}),
    # A practitioner's small grid. The toy's optimum h = (1, 1) lies on the search space's
    # bound, so a grid that includes the bound would be optimal by construction.
    "fixed": ({"name": "grid", "options": {"grid": {"h0": [0.25, 0.5, 0.75], "h1": [0.25, 0.5, 0.75]}}}, 10, {}),
}


def study(method: str, budget: int, seed: int, storage: str) -> dict[str, Any]:
    algorithm, parallelism, execution = METHODS[method]
    return {
        "name": f"{method}-s{seed}",
        "objective": {"metric": "q", "mode": "max"},
        "parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                       "h1": {"type": "float", "low": 0.0, "high": 1.0}},
        "algorithm": algorithm,
        "budget": {"total_steps": budget},
        "trainer": {"path": "pbt.trainers.toy:ToyTrainer", "config": {"lr": 0.01}},
        "execution": {"parallelism": parallelism, **execution},
        "storage": storage,
        "seed": seed,
    }


def measure(method: str, budget: int, seed: int, workers: int, root: Path) -> dict[str, Any]:
    spec = parse_spec(study(method, budget, seed, str(root)))
    started = time.perf_counter()
    run_study(spec, workers=workers)
    wall = time.perf_counter() - started
    trials = StudyStore(open_object_store(str(root)), spec.name).load_trials()
    spent = 0
    reached: dict[str, int | None] = dict.fromkeys(THRESHOLDS)
    for t in trials:  # trial order is the order results were applied
        spent += charged(t)
        for key, q in THRESHOLDS.items():
            if reached[key] is None and t.objective is not None and t.objective >= q:
                reached[key] = spent
    finals = [t.objective for t in trials if t.usable]
    decisions = [t for t in trials if t.parent is not None]
    exploits = sum(1 for t in decisions if t.metadata.get("exploit"))
    stopped = [t for t in trials if t.metadata.get("stop_step") is not None]
    return {"final_q": max(finals), **reached, "steps": spent, "steps_trained": sum(t.steps_done for t in trials),
            "stopped": len(stopped), "steps_saved": sum(t.steps - charged(t) for t in stopped),
            "trials": len(trials), "wall_s": wall,
            "exploit_fraction": exploits / len(decisions) if decisions else None}


def charged(trial) -> int:
    """Steps the budget charged ``trial``: up to its stop if it was stopped early."""
    stop = trial.metadata.get("stop_step")
    return int(stop) if stop is not None and trial.status.value == "stopped" else trial.steps_done


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    finals = [r["final_q"] for r in runs]
    thresholds: dict[str, Any] = {}
    for key in THRESHOLDS:
        reached = [r[key] for r in runs if r[key] is not None]
        thresholds[f"{key}_mean"] = statistics.fmean(reached) if len(reached) == len(runs) else None
        thresholds[f"reached_{key.removeprefix('steps_to_')}"] = f"{len(reached)}/{len(runs)}"
    return {
        "final_q_mean": statistics.fmean(finals),
        "final_q_std": statistics.pstdev(finals),
        **thresholds,
        "steps_mean": statistics.fmean(r["steps"] for r in runs),
        "steps_trained_mean": statistics.fmean(r["steps_trained"] for r in runs),
        "stopped_mean": statistics.fmean(r["stopped"] for r in runs),
        "steps_saved_mean": statistics.fmean(r["steps_saved"] for r in runs),
        "trials_mean": statistics.fmean(r["trials"] for r in runs),
        "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
        "exploit_fraction": (statistics.fmean(r["exploit_fraction"] for r in runs)
                             if all(r["exploit_fraction"] is not None for r in runs) else None),
        "runs": finals,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=2000, help="total training steps per study")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    methods: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="pbt-bench-") as tmp:
        for method in chosen:
            runs = []
            for seed in range(args.seeds):
                runs.append(measure(method, args.budget, seed, args.workers, Path(tmp) / f"{method}-{seed}"))
                print(f"{method} seed {seed}: Q={runs[-1]['final_q']:.6f}", file=sys.stderr)
            methods[method] = summarise(runs)
    print(json.dumps({"budget_steps": args.budget, "seeds": args.seeds, "methods": methods}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
