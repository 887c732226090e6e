"""The paper's WaveNet comparison through the real controller: fixed rate, random, Bayesian, PBT, PB2.

Every method tunes the learning rate of the same WaveNet on the same speech corpus with the
same total number of training steps ``S`` (``--budget``), over several seeds, through
``run_study`` — embedded workers by default, or Celery workers you started yourself
(``--broker URL``; they must see ``--data`` and ``--storage``). As in the paper's setup of five
workers, the baselines train ``--trials`` (5) models of ``S/5`` steps each:

* ``fixed`` — a grid of ``--trials`` learning rates spaced evenly in log over the search range,
  each kept for the whole run; the best grid point is reported (the paper's hand-picked rate);
* ``random`` — random search; ``bayes`` — Optuna's GP (log EI) after two random trials;
* ``pbt5`` / ``pbt20`` — PBT with populations 5 and 20, exploit/explore every ``--interval``
  steps. At equal total steps a PBT-20 member trains ``S/20`` steps, a quarter of a PBT-5
  member's; the paper's PBT-5x20 beats PBT-5x5 *at a given iteration*, with four times the
  compute. Both views are in the JSON: ``final_bps`` (equal total steps) and
  ``bps_at_model_step`` (equal steps of the model's own lineage);
* ``pbt4`` / ``pbt8`` and ``pb2-4`` / ``pb2-8`` — PBT with random perturbation against PB2
  (``explore: pb2``, a GP bandit; needs ``pip install 'pbt[pb2]'``) at the small populations
  where PB2 is meant to help (Parker-Holder et al. 2020);
* ``pbt8-es`` — PBT-8 with early stopping (``early_stop: {}``): it evaluates four times per
  interval (``checkpoint_every = interval / 4``) so trials clearly among the worst at comparable
  progress can be stopped; the JSON reports ``steps_saved`` (steps stopped trials were given but
  not charged, which went to other trials) and ``steps_trained`` (what workers really trained).
  Compare it with ``pbt8``, which evaluates once per interval: the extra evaluations cost time
  (in ``wall_s``), not steps.

Sizes (``--size``; each a total of training steps per study, equal for every method):
``tiny`` 2,400 steps of a 2x4-layer, 16-channel model (``--quick``: 2 seeds, about 20 ms a step
on one CPU core: minutes per method), ``cpu`` 10,000 steps of ``examples/wavenet-cpu.yaml``'s
model (about 60 ms a step: roughly 10 minutes per study on 2 cores), ``gpu`` 160,000 steps of
``examples/wavenet-gpu.yaml``'s 30-layer model (hours per study: for a GPU node).

All methods evaluate every ``--interval`` steps (PBT at each trial's end, the others at their
in-trial checkpoints), so evaluation and checkpoint costs are alike. ``final_bps`` is the
validation bits/sample of the best model a study produced.

Writes ``<out>/results.json`` (also printed) and the figures: ``fig6_objective_vs_steps.png``,
``fig7_lr_schedules.png``, ``fig8_time_breakdown.png``, ``fig9_time_per_step.png`` (from
``--overhead`` JSON of benchmarks/overhead.py for the same size if present, else measured here
at a few trial lengths), ``fig5_continued_training.png`` (each method's best checkpoint of
seed 0 trained ``--continue-steps`` more steps on one worker at its final learning rate).

Usage: python benchmarks/wavenet_compare.py [--quick] [--size cpu|tiny|gpu] [--seeds 3] [--budget S]
       [--interval N] [--workers 2] [--methods pbt4 pb2-4 ...] [--broker URL] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wavenet_common import ROOT, ensure_corpus, load_trials, phase_totals, search_space, trainer_config
from wavenet_figures import plot_all

from pbt.launch import run_study
from pbt.study_file import parse_spec

METHODS = ("fixed", "random", "bayes", "pbt5", "pbt20", "pbt4", "pb2-4", "pbt8", "pb2-8", "pbt8-es")
PAPER = ("fixed", "random", "bayes", "pbt5", "pbt20")  # the paper's comparison (Figure 6)
POPULATION = {"pbt5": 5, "pbt20": 20, "pbt4": 4, "pb2-4": 4, "pbt8": 8, "pb2-8": 8, "pbt8-es": 8}
PRESETS = {  # size -> (budget steps, PBT interval, continue steps)
    "tiny": (2400, 40, 200),
    "cpu": (10000, 100, 1000),
    "gpu": (160000, 500, 5000),
}


def algorithm(method: str, trials: int, interval: int) -> dict[str, Any]:
    if method in POPULATION:
        options: dict[str, Any] = {"population_size": POPULATION[method], "steps_per_trial": interval}
        if method.startswith("pb2"):
            options["explore"] = "pb2"
        if method.endswith("-es"):
            options["early_stop"] = {}
        return {"name": "pbt", "options": options}
    return {
        "fixed": {"name": "grid", "options": {"points_per_param": trials}},
        "random": {"name": "random", "options": {"num_trials": trials}},
        "bayes": {"name": "bayes", "options": {"num_trials": trials, "n_startup_trials": 2}},
    }[method]


def evaluation_interval(method: str, interval: int) -> int:
    """Steps between evaluations: early stopping judges intermediate ones, four per interval."""
    return max(1, interval // 4) if method.endswith("-es") else interval


def study(method: str, seed: int, args: argparse.Namespace, config: dict[str, Any], storage: str) -> dict[str, Any]:
    execution: dict[str, Any] = {"parallelism": args.workers,
                                 "checkpoint_every": evaluation_interval(method, args.interval)}
    if args.broker:
        execution.update(queue=args.queue, lease_seconds=max(600.0, 20.0 * args.interval))
    return {
        "name": f"wavenet-{method}-s{seed}-{args.tag}",
        "objective": {"metric": "val_bps", "mode": "min"},
        "parameters": search_space(args.size),
        "algorithm": algorithm(method, args.trials, args.interval),
        "budget": {"total_steps": args.budget},
        "trainer": {"path": "pbt.wavenet.trainer:WaveNetTrainer", "config": config},
        "execution": execution,
        "storage": storage,
        "broker": args.broker,
        "seed": seed,
    }


def run_one(method: str, seed: int, args: argparse.Namespace, config: dict[str, Any], root: Path) -> dict[str, Any]:
    """One study; what the JSON and the figures need from its records."""
    storage = args.storage or str(root / f"{method}-s{seed}")
    spec = parse_spec(study(method, seed, args, config, storage))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    run_study(spec, workers=args.workers)
    wall, controller_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    trials = load_trials(storage, spec.name)
    usable = [t for t in trials if t.usable]
    best = min(usable, key=lambda t: t.objective)
    by_id = {t.id: t for t in trials}
    lineage = []  # the best model's history, root first: its learning-rate schedule
    node = best
    while node is not None:
        lineage.append(node)
        node = by_id.get(node.parent) if node.parent else None
    lineage.reverse()
    spent, progress = 0, []  # (total steps charged so far, best val_bps so far), in trial order
    best_so_far = math.inf
    for t in trials:
        stop = t.metadata.get("stop_step") if t.status.value == "stopped" else None
        spent += int(stop) if stop is not None else t.steps_done
        if t.usable:
            best_so_far = min(best_so_far, t.objective)
        progress.append((spent, best_so_far))
    reports = [(m.lineage_step, m.values["val_bps"]) for t in trials for m in t.metrics if "val_bps" in m.values
               and (t.metadata.get("stop_step") is None or m.step <= t.metadata["stop_step"])]
    stopped = [t for t in trials if t.status.value == "stopped" and t.metadata.get("stop_step") is not None]
    stopped_ids = {t.id for t in stopped}
    phases = phase_totals(trials)
    busy = sum(v for k, v in phases.items() if k != "queue_wait")
    return {
        "seed": seed,
        "final_bps": best.objective,
        "best_trial": best.id,
        "best_checkpoint": best.checkpoint,
        "best_lr": best.params["lr"],
        "best_model_steps": best.lineage_steps,
        "storage": storage,
        "study": spec.name,
        "schedule": [(t.start_lineage_steps, t.lineage_steps, t.params["lr"]) for t in lineage],
        "progress": progress,
        "reports": reports,
        "steps": sum(int(t.metadata["stop_step"]) if t.id in stopped_ids else t.steps_done for t in trials),
        "steps_trained": sum(t.steps_done for t in trials),
        "stopped": len(stopped),
        "steps_saved": sum(t.steps - int(t.metadata["stop_step"]) for t in stopped),
        "trials": len(trials),
        "failed": sum(1 for t in trials if t.status.value == "failed"),
        "wall_s": wall,
        "controller_cpu_s": controller_cpu,
        "phases_s": phases,
        # Worker-seconds not inside a trial phase: trainer setup, messages, and waiting on the
        # controller (or, at a study's end, on the last trial).
        "other_worker_s": max(0.0, wall * args.workers - busy),
    }


def bps_at(reports: list[tuple[int, float]], model_step: int) -> float | None:
    """Best validation bits/sample any model reached within ``model_step`` steps of its lineage."""
    values = [v for step, v in reports if step <= model_step and math.isfinite(v)]
    return min(values) if values else None


def summarise(runs: list[dict[str, Any]], checkpoints: tuple[int, ...]) -> dict[str, Any]:
    finals = [r["final_bps"] for r in runs]
    phases = {k: statistics.fmean(r["phases_s"][k] for r in runs) for k in runs[0]["phases_s"]}
    at: dict[str, Any] = {}
    for step in checkpoints:
        values = [bps_at(r["reports"], step) for r in runs]
        at[str(step)] = statistics.fmean(values) if all(v is not None for v in values) else None
    return {
        "final_bps_mean": statistics.fmean(finals),
        "final_bps_std": statistics.pstdev(finals),
        "final_bps_runs": finals,
        "best_lr_runs": [r["best_lr"] for r in runs],
        "best_model_steps_mean": statistics.fmean(r["best_model_steps"] for r in runs),
        "bps_at_model_step": at,
        "steps_mean": statistics.fmean(r["steps"] for r in runs),
        "steps_trained_mean": statistics.fmean(r["steps_trained"] for r in runs),
        "stopped_mean": statistics.fmean(r["stopped"] for r in runs),
        "steps_saved_mean": statistics.fmean(r["steps_saved"] for r in runs),
        "trials_mean": statistics.fmean(r["trials"] for r in runs),
        "failed_trials": sum(r["failed"] for r in runs),
        "wall_s_mean": statistics.fmean(r["wall_s"] for r in runs),
        "controller_cpu_s_mean": statistics.fmean(r["controller_cpu_s"] for r in runs),
        "time_breakdown_s_mean": {**phases, "controller_cpu": statistics.fmean(r["controller_cpu_s"] for r in runs),
                                  "other_worker": statistics.fmean(r["other_worker_s"] for r in runs)},
    }


def continue_training(run: dict[str, Any], config: dict[str, Any], steps: int, every: int) -> dict[str, Any]:
    """Figure 5: the best checkpoint trained on, alone, at the learning rate it ended with."""
    from pbt.storage import open_object_store
    from pbt.storage.checkpoints import CheckpointStore
    from pbt.wavenet.trainer import WaveNetTrainer

    with tempfile.TemporaryDirectory(prefix="pbt-continue-") as tmp:
        CheckpointStore(open_object_store(run["storage"])).load(run["best_checkpoint"], Path(tmp) / "ckpt")
        trainer = WaveNetTrainer(config)
        trainer.setup({"lr": run["best_lr"]}, seed=run["seed"])
        trainer.load(Path(tmp) / "ckpt")
    start = run["best_model_steps"]
    curve = [(start, trainer.evaluate()["val_bps"])]
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        n = min(every, steps - done)
        trainer.train(n)
        done += n
        curve.append((start + done, trainer.evaluate()["val_bps"]))
    return {"lr": run["best_lr"], "curve": curve, "seconds": time.perf_counter() - t0}


def time_per_step(args: argparse.Namespace, config: dict[str, Any]) -> dict[str, Any]:
    """Figure 9's data: benchmarks/overhead.py's JSON for this size, or a small measurement of our own."""
    path = Path(args.overhead)
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("size") == args.size:
            return {"source": str(path), **data}
    import overhead

    print("measuring time per step vs steps per trial (embedded, PBT) ...", file=sys.stderr)
    bare = overhead.bare_loop(config, 200 if args.quick else 500)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="pbt-fig9-", dir=ROOT / "bench-results") as tmp:
        for steps in args.fig9_steps:
            key = f"embedded/pbt/{steps}"
            data = overhead.study(f"fig9-{steps}", "pbt", steps, 3, config, args.size, str(Path(tmp) / key), None, None)
            runs[key] = {**overhead.measure(data)}
            runs[key].update(overhead.ratios(runs[key], bare["s_per_step"]))
    return {"source": "measured by wavenet_compare.py (2 measured trials per point)", "size": args.size,
            "bare": bare, "runs": runs}


def ordering(methods: dict[str, Any]) -> dict[str, Any]:
    """The paper's claim, checked on the means: PBT-20 <= PBT-5 < random, bayes < best fixed."""
    m = {k: v["final_bps_mean"] for k, v in methods.items()}
    checks = {
        "pbt20 <= pbt5": m["pbt20"] <= m["pbt5"],
        "pbt5 < random": m["pbt5"] < m["random"],
        "pbt5 < bayes": m["pbt5"] < m["bayes"],
        "random < fixed": m["random"] < m["fixed"],
        "bayes < fixed": m["bayes"] < m["fixed"],
    }
    return {"checks": checks, "holds": all(checks.values()),
            "ranking_best_first": sorted(m, key=m.get)}


def pb2_vs_pbt(methods: dict[str, Any]) -> dict[str, Any]:
    """PB2 against PBT at the same population: the mean final bits/sample and how many seeds PB2 won."""
    out = {}
    for pop in (4, 8):
        pbt, pb2 = methods.get(f"pbt{pop}"), methods.get(f"pb2-{pop}")
        if pbt and pb2:
            wins = sum(b < a for a, b in zip(pbt["final_bps_runs"], pb2["final_bps_runs"]))
            out[str(pop)] = {"pbt": pbt["final_bps_mean"], "pb2": pb2["final_bps_mean"],
                             "pb2_better_mean": pb2["final_bps_mean"] < pbt["final_bps_mean"],
                             "pb2_wins_seeds": f"{wins}/{len(pbt['final_bps_runs'])}"}
    return out


def steps_to_reach(progress: list[tuple[int, float]], target: float) -> int | None:
    """Total steps charged when the best validation bits/sample first reached ``target`` (None: never)."""
    return next((spent for spent, best in progress if best <= target), None)


def early_stop_summary(methods: dict[str, Any], runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any] | None:
    """PBT-8 with and without early stopping: final quality, the steps the stops handed on, and the
    steps each needed to reach the final quality of PBT-8 without stopping (same seed)."""
    base, es = methods.get("pbt8"), methods.get("pbt8-es")
    if not (base and es):
        return None
    pairs = list(zip(runs["pbt8"], runs["pbt8-es"]))
    to_match = {"pbt8": [steps_to_reach(b["progress"], b["final_bps"]) for b, _ in pairs],
                "pbt8_es": [steps_to_reach(e["progress"], b["final_bps"]) for b, e in pairs]}
    return {
        "steps_to_pbt8_final": to_match,
        "pbt8": base["final_bps_mean"], "pbt8_es": es["final_bps_mean"], "stopped_mean": es["stopped_mean"],
        "steps_saved_mean": es["steps_saved_mean"],
        "steps_saved_fraction": es["steps_saved_mean"] / es["steps_mean"],
        "steps_trained_mean": es["steps_trained_mean"],
        "wall_s": {"pbt8": base["wall_s_mean"], "pbt8_es": es["wall_s_mean"]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny model, 2 seeds, small budget: minutes per method on 2 cores")
    parser.add_argument("--size", choices=list(PRESETS), default=None,
                        help="tiny: 2,400 steps of a small model (minutes per study on a CPU core); cpu: 10,000 "
                             "steps of examples/wavenet-cpu.yaml (~10 min per study on 2 cores); gpu: 160,000 "
                             "steps of the 30-layer examples/wavenet-gpu.yaml (hours per study: a GPU node). "
                             "Default: cpu (tiny with --quick)")
    parser.add_argument("--seeds", type=int, default=None, help="default 3 (2 with --quick)")
    parser.add_argument("--budget", type=int, default=None, help="total training steps per study")
    parser.add_argument("--interval", type=int, default=None, help="PBT steps per trial = evaluation interval")
    parser.add_argument("--trials", type=int, default=5, help="models trained by fixed, random and bayes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(PAPER),
                        help=f"default: the paper's {' '.join(PAPER)}; also pbt4 pb2-4 pbt8 pb2-8 (PB2 vs PBT at "
                             "small populations) and pbt8-es (early stopping)")
    parser.add_argument("--continue-steps", type=int, default=None)
    parser.add_argument("--data", default=str(ROOT / "data" / "speech"))
    parser.add_argument("--broker", default=None, help="run on Celery workers you started (pbt worker)")
    parser.add_argument("--queue", default="pbt.trials")
    parser.add_argument("--storage", default=None, help="shared storage for --broker (one study per method/seed)")
    parser.add_argument("--out", default=None, help="default: bench-results/wavenet-compare-<size>")
    parser.add_argument("--overhead", default=str(ROOT / "bench-results" / "overhead.json"))
    parser.add_argument("--fig9-steps", type=int, nargs="+", default=None)
    args = parser.parse_args(argv)
    args.size = args.size or ("tiny" if args.quick else "cpu")
    args.tag = time.strftime("%Y%m%d-%H%M%S")  # study names stay unique in a shared --storage
    budget, interval, cont = PRESETS[args.size]
    args.seeds = args.seeds or (2 if args.quick else 3)
    args.budget = args.budget or budget
    args.interval = args.interval or interval
    args.continue_steps = args.continue_steps if args.continue_steps is not None else cont
    args.fig9_steps = args.fig9_steps or ([20, 80] if args.quick else [50, 200, 1000])
    out = Path(args.out or ROOT / "bench-results" / f"wavenet-compare-{args.size}")
    out.mkdir(parents=True, exist_ok=True)
    if args.budget % args.interval or ("pbt20" in args.methods and args.budget % (20 * args.interval)):
        raise SystemExit(f"--budget must be a multiple of --interval, and of 20 x --interval ({20 * args.interval}) "
                         "with pbt20, so PBT spends it all")

    started = time.perf_counter()
    config = trainer_config(args.size, ensure_corpus(args.data))
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="pbt-compare-", dir=ROOT / "bench-results") as tmp:
        for method in args.methods:
            runs[method] = []
            for seed in range(args.seeds):
                runs[method].append(run_one(method, seed, args, config, Path(tmp)))
                r = runs[method][-1]
                print(f"{method} seed {seed}: best val {r['final_bps']:.4f} bits/sample (lr {r['best_lr']:.2e}, "
                      f"{r['steps']} steps, {r['wall_s']:.0f} s)", file=sys.stderr)
        continued = {}
        if args.continue_steps:
            for method in args.methods:
                continued[method] = continue_training(runs[method][0], config, args.continue_steps, args.interval)
                print(f"{method}: continued to {continued[method]['curve'][-1][1]:.4f} bits/sample", file=sys.stderr)
    fig9 = time_per_step(args, config)
    checkpoints = (args.budget // 20, args.budget // args.trials)
    methods = {m: summarise(runs[m], checkpoints) for m in args.methods}
    for m in args.methods:
        if m in continued:
            methods[m]["continued"] = {"steps": args.continue_steps, "lr": continued[m]["lr"],
                                       "start_bps": continued[m]["curve"][0][1],
                                       "end_bps": continued[m]["curve"][-1][1], "seconds": continued[m]["seconds"]}
    result: dict[str, Any] = {
        "methods": methods,
        "budget_steps": args.budget,
        "seeds": args.seeds,
        "size": args.size,
        "model": {k: config[k] for k in ("stacks", "layers_per_stack", "residual_channels", "skip_channels",
                                         "batch_size", "crop")},
        "search_space": search_space(args.size),
        "interval": args.interval,
        "trials_per_baseline": args.trials,
        "model_steps": {"fixed": args.budget // args.trials, "random": args.budget // args.trials,
                        "bayes": args.budget // args.trials,
                        **{m: args.budget // n for m, n in POPULATION.items()}},
        "workers": args.workers,
        "executor": "celery" if args.broker else "embedded",
        "ordering": ordering(methods) if set(PAPER) <= set(args.methods) else None,
        "pb2_vs_pbt": pb2_vs_pbt(methods),
        "early_stop": early_stop_summary(methods, runs),
        # ratio_to_own_train: the same run's training time as the yardstick, which a busy machine
        # disturbs less than a bare loop measured at another moment.
        "time_per_step": {k: {n: v.get(n) for n in ("s_per_step", "ratio", "ratio_to_own_train_excluding_evaluation")}
                          for k, v in fig9.get("runs", {}).items()} | {"bare": fig9["bare"]["s_per_step"]},
        "figures": plot_all(out, runs, continued, fig9, args),
        "wall_s": time.perf_counter() - started,
        "cpus": os.cpu_count(),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
