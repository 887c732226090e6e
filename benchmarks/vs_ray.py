"""pbt vs Ray Tune: the same PBT work through both, interleaved in one run, over several seeds.

Two workloads, each run per seed as pbt, then Ray Tune, then Ray Tune reporting less often, so
a busy machine disturbs all of them alike (the numbers that matter are the ratios side by side):

* **toy**: the toy problem of the PBT paper (Q = 1.2 − θ₀² − θ₁², trained on the surrogate with
  h ∈ [0, 1]²; :mod:`pbt.trainers.toy`), population 4, 200 steps per member, exploit every 4
  steps. pbt runs ``pbt.trainers.toy:ToyTrainer`` as ``benchmarks/toy_quality.py`` configures it
  (PBT policy, ``steps_per_trial: 4``, ``budget.total_steps`` = 4 × 200, every member in flight,
  embedded executor with 4 worker processes). Ray runs ``PopulationBasedTraining`` over a
  function trainable doing the same arithmetic from the same θ₀, with
  ``perturbation_interval`` = 4 steps (``time_attr="step"``) and 4 concurrent trials
  (``ray.init(num_cpus=4)``); its explore step multiplies h by 0.8 or 1.2 (or resamples), and
  a ``custom_explore_fn`` clips h back into [0, 1], the problem's range (Ray itself does not).
* **overhead**: ~10 ms numpy steps (elementwise work on a 1 MB float64 array, calibrated on this
  machine before anything runs) with a 1 MB checkpoint (the array), population 4, PBT every 4
  and every 10 steps, against plain processes: 4 spawned processes running the same steps and
  nothing else (no checkpoint), which is the floor.

Ray runs twice per seed: ``ray`` reports every step (``tune.report`` with a checkpoint every
perturbation interval: how Ray's own PBT examples are written), ``ray-interval`` reports once
per perturbation interval, with its checkpoint, which is what pbt does (a pbt trial *is* one
perturbation interval): equal reporting, fair to Ray.

Measured per run: ``wall_s`` (from nothing running to the study's end: ray.init and pbt's worker
start included; ray.shutdown not), ``ray_init_s``, ``first_result_s`` (from the start to the
first result the controller/driver sees: pbt's first finished trial, Ray's first
``on_trial_result``; Ray's per-step variant reports after 1 step, the others after one
interval), and ``best`` (the best objective any member reported: Q for the toy). Printed per
seed and as medians: pbt/Ray wall-time ratios, ``overhead`` = wall ÷ the plain processes' wall
(for Ray also ``overhead_excluding_init``; ``overhead_ms_per_step`` = the extra wall time per
step of a member), and the targets (pbt wall ≤ 0.2× Ray's for equal work; pbt's best Q ≥ Ray's median best Q).

Ray's workers run at nice 0 here, as pbt's do (Ray's default is 15: on a shared machine that alone
would slow it); ``reuse_actors=True``, as Ray's PBT recommends. Prints one JSON object and
writes it to ``--out``. Needs the ``bench`` extra
(``pip install -e '.[bench]'``: Ray Tune); Ray is never a dependency of pbt or of its tests.

Usage: python benchmarks/vs_ray.py [--seeds 3] [--toy-steps 200] [--overhead-steps 120]
       [--intervals 4 10] [--step-ms 10 | --reps N] [--workloads toy numpy] [--out bench-results/vs_ray.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
POPULATION = 4
THETA0 = [0.9, 1.0]
LR = 0.01
STATE_FLOATS = 131072  # 1 MB of float64: the overhead workload's state and checkpoint


# --- the overhead workload: the same step for pbt, Ray and the plain processes -----------------

def numpy_step(x: np.ndarray, reps: int) -> np.ndarray:
    """About ``reps`` × 0.3 ms of single-threaded elementwise work on ``x``."""
    for _ in range(reps):
        x = np.sin(x) * 0.5 + x * 0.5
    return x


def step_seconds(reps: int, tries: int = 7) -> float:
    """One step's time alone: the fastest of ``tries`` (a shared machine only ever adds time)."""
    x = np.random.default_rng(0).standard_normal(STATE_FLOATS)
    best = math.inf
    for _ in range(tries):
        started = time.perf_counter()
        numpy_step(x, reps)
        best = min(best, time.perf_counter() - started)
    return best


def calibrate(target_s: float) -> int:
    """The repetitions that make one step take ``target_s`` here, on an idle core.

    Times single repetitions (about 1.4 ms each) many times and keeps the fastest: on a loaded
    machine a window that short often runs without being preempted, one of 15 ms rarely does.
    """
    return max(1, round(target_s / step_seconds(1, tries=200)))


class NumpyTrainer:
    """pbt's side of the overhead workload: ``trainer.path: vs_ray:NumpyTrainer``.

    The hyperparameter ``lr`` ∈ [0, 1] is added to ``score`` each step (so PBT has something to
    exploit); the state is a 1 MB array, saved and loaded as the checkpoint.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.reps = int(config["reps"])
        self.lr = 0.0
        self.x = np.zeros(STATE_FLOATS)
        self.score = 0.0
        self.step = 0

    def setup(self, hparams: dict[str, Any], *, seed: int = 0) -> None:
        self.lr = float(hparams["lr"])
        self.x = np.random.default_rng(seed).standard_normal(STATE_FLOATS)
        self.score, self.step = 0.0, 0

    def train(self, steps: int) -> dict[str, float]:
        for _ in range(steps):
            self.x = numpy_step(self.x, self.reps)
            self.score += self.lr
            self.step += 1
        return {}

    def evaluate(self) -> dict[str, float]:
        return {"score": self.score}

    def save(self, directory: Path) -> None:
        np.save(Path(directory) / "x.npy", self.x)
        (Path(directory) / "meta.json").write_text(json.dumps({"score": self.score, "step": self.step}))

    def load(self, directory: Path) -> None:
        self.x = np.load(Path(directory) / "x.npy")
        meta = json.loads((Path(directory) / "meta.json").read_text())
        self.score, self.step = float(meta["score"]), int(meta["step"])


def _plain_member(steps: int, reps: int, seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal(STATE_FLOATS)
    for _ in range(steps):
        x = numpy_step(x, reps)


def run_plain(steps: int, reps: int, seed: int) -> dict[str, Any]:
    """The floor: ``POPULATION`` spawned processes doing the same steps, nothing else."""
    ctx = mp.get_context("spawn")
    started = time.perf_counter()
    procs = [ctx.Process(target=_plain_member, args=(steps, reps, seed * 100 + i)) for i in range(POPULATION)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return {"wall_s": time.perf_counter() - started}


# --- pbt --------------------------------------------------------------------------------------

def pbt_spec(workload: str, name: str, seed: int, steps: int, interval: int, reps: int, storage: str) -> dict:
    if workload == "toy":
        objective = {"metric": "q", "mode": "max"}
        parameters = {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                      "h1": {"type": "float", "low": 0.0, "high": 1.0}}
        trainer = {"path": "pbt.trainers.toy:ToyTrainer", "config": {"lr": LR, "theta0": THETA0}}
    else:
        objective = {"metric": "score", "mode": "max"}
        parameters = {"lr": {"type": "float", "low": 0.0, "high": 1.0}}
        trainer = {"path": "vs_ray:NumpyTrainer", "config": {"reps": reps}}
    return {
        "name": name,
        "objective": objective,
        "parameters": parameters,
        "algorithm": {"name": "pbt", "options": {"population_size": POPULATION, "steps_per_trial": interval}},
        "budget": {"total_steps": POPULATION * steps},
        "trainer": trainer,
        "execution": {"parallelism": POPULATION},
        "storage": storage,
        "seed": seed,
    }


def run_pbt(workload: str, seed: int, steps: int, interval: int, reps: int, root: Path) -> dict[str, Any]:
    from pbt.launch import run_study
    from pbt.storage import open_object_store
    from pbt.storage.study_store import StudyStore
    from pbt.study_file import parse_spec

    spec = parse_spec(pbt_spec(workload, f"vs-ray-{workload}-{interval}-s{seed}", seed, steps, interval, reps,
                               str(root)))
    epoch, started = time.time(), time.perf_counter()
    run_study(spec, workers=POPULATION)
    wall = time.perf_counter() - started
    trials = StudyStore(open_object_store(str(root)), spec.name).load_trials()
    usable = [t for t in trials if t.usable]
    assert usable, [t.error for t in trials]
    return {
        "wall_s": wall,
        "first_result_s": min(t.finished_at for t in usable) - epoch,
        "best": max(t.objective for t in usable),
        "steps": sum(t.steps_done for t in trials),
        "trials": len(trials),
        "reports": len(usable),
    }


# --- Ray Tune ---------------------------------------------------------------------------------

def ray_toy(config: dict[str, Any]) -> None:
    """Ray's side of the toy problem: ToyTrainer's arithmetic, in Ray's function API."""
    from ray import tune

    h = [float(config["h0"]), float(config["h1"])]
    theta, step = list(config["theta0"]), 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:  # an exploit (the donor's state) or a restart: keep this trial's h
        with checkpoint.as_directory() as directory:
            saved = json.loads((Path(directory) / "state.json").read_text())
            theta, step = [float(t) for t in saved["theta"]], int(saved["step"])
    while step < config["steps"]:
        for _ in range(config["report_every"]):
            theta = [t - config["lr"] * 2.0 * hi * t for t, hi in zip(theta, h)]
            step += 1
        metrics = {"q": 1.2 - (theta[0] ** 2 + theta[1] ** 2), "step": step}
        if step % config["interval"] == 0:
            with tempfile.TemporaryDirectory() as directory:
                (Path(directory) / "state.json").write_text(json.dumps({"theta": theta, "step": step}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


def ray_numpy(config: dict[str, Any]) -> None:
    """Ray's side of the overhead workload: NumpyTrainer's steps and 1 MB checkpoint."""
    from ray import tune

    x = np.random.default_rng(config["seed"]).standard_normal(STATE_FLOATS)
    score, step = 0.0, 0
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as directory:
            x = np.load(Path(directory) / "x.npy")
            meta = json.loads((Path(directory) / "meta.json").read_text())
            score, step = float(meta["score"]), int(meta["step"])
    while step < config["steps"]:
        for _ in range(config["report_every"]):
            x = numpy_step(x, config["reps"])
            score += config["lr"]
            step += 1
        metrics = {"score": score, "step": step}
        if step % config["interval"] == 0:
            with tempfile.TemporaryDirectory() as directory:
                np.save(Path(directory) / "x.npy", x)
                (Path(directory) / "meta.json").write_text(json.dumps({"score": score, "step": step}))
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
        else:
            tune.report(metrics)


def _clip_unit(keys: tuple[str, ...]):
    def explore(config: dict[str, Any]) -> dict[str, Any]:
        for key in keys:
            config[key] = min(1.0, max(0.0, float(config[key])))
        return config

    return explore


def run_ray(workload: str, seed: int, steps: int, interval: int, reps: int, report_every: int,
            root: Path) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining

    metric = "q" if workload == "toy" else "score"
    keys = ("h0", "h1") if workload == "toy" else ("lr",)

    class Watch(tune.Callback):
        def __init__(self) -> None:
            self.first: float | None = None
            self.best = -math.inf
            self.reports = 0

        def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
            if self.first is None:
                self.first = time.time()
            self.best = max(self.best, float(result[metric]))
            self.reports += 1

    random.seed(seed)  # Ray's PBT draws from `random`, its search space from numpy's global RNG
    np.random.seed(seed)
    watch = Watch()
    space: dict[str, Any] = {key: tune.uniform(0.0, 1.0) for key in keys}
    space.update(steps=steps, interval=interval, report_every=report_every)
    if workload == "toy":
        space.update(theta0=THETA0, lr=LR)
        trainable: Any = ray_toy
    else:
        space.update(reps=reps, seed=seed)
        trainable = ray_numpy
    scheduler = PopulationBasedTraining(
        time_attr="step", perturbation_interval=interval,
        hyperparam_mutations={key: tune.uniform(0.0, 1.0) for key in keys},
        custom_explore_fn=_clip_unit(keys),
    )
    epoch, started = time.time(), time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # Ray prints its tables to stdout even at verbose=0
        ray.init(num_cpus=POPULATION, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    init = time.perf_counter() - started
    try:
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            # reuse_actors: what Ray's PBT asks for ("Consider boosting PBT performance by enabling
            # `reuse_actors`"); without it every exploit starts a new actor process.
            tune_config=tune.TuneConfig(metric=metric, mode="max", scheduler=scheduler, num_samples=POPULATION,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=f"{workload}-{interval}-{report_every}-s{seed}", storage_path=str(root),
                                      stop={"step": steps}, verbose=0, callbacks=[watch]),
        )
        with contextlib.redirect_stdout(sys.stderr):
            grid = tuner.fit()
        wall = time.perf_counter() - started
    finally:
        ray.shutdown()
    assert not grid.errors, grid.errors
    final_steps = [int(r.metrics.get("step", 0)) for r in grid]
    assert watch.first is not None
    return {
        "wall_s": wall,
        "ray_init_s": init,
        "first_result_s": watch.first - epoch,
        "best": watch.best,
        "reports": watch.reports,
        "report_every": report_every,
        "final_steps": final_steps,  # each member's last reported step: equal work means all are `steps`
        "incomplete": sum(1 for step in final_steps if step < steps),
    }


# --- the comparison ---------------------------------------------------------------------------

SYSTEMS = ("pbt", "ray", "ray-interval")


def one_seed(workload: str, seed: int, steps: int, interval: int, reps: int, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"seed": seed}
    if workload == "numpy":
        out["plain"] = run_plain(steps, reps, seed)
    out["pbt"] = run_pbt(workload, seed, steps, interval, reps, tmp / f"pbt-{workload}-{interval}-{seed}")
    out["ray"] = run_ray(workload, seed, steps, interval, reps, 1, tmp / "ray")
    out["ray-interval"] = run_ray(workload, seed, steps, interval, reps, interval, tmp / "ray")
    out["pbt_over_ray_wall"] = out["pbt"]["wall_s"] / out["ray"]["wall_s"]
    out["pbt_over_ray_interval_wall"] = out["pbt"]["wall_s"] / out["ray-interval"]["wall_s"]
    if "plain" in out:
        for system in SYSTEMS:
            run = out[system]
            run["overhead"] = run["wall_s"] / out["plain"]["wall_s"]
            if "ray_init_s" in run:
                run["overhead_excluding_init"] = (run["wall_s"] - run["ray_init_s"]) / out["plain"]["wall_s"]
            run["overhead_ms_per_step"] = (run["wall_s"] - out["plain"]["wall_s"]) / steps * 1000
    return out


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    out: dict[str, Any] = {}
    for system in ("plain", *SYSTEMS):
        if system not in runs[0]:
            continue
        keys = [k for k, v in runs[0][system].items() if isinstance(v, float)]
        out[system] = {k: med([r[system][k] for r in runs]) for k in keys}
    for key in ("pbt_over_ray_wall", "pbt_over_ray_interval_wall"):
        out[key] = med([r[key] for r in runs])
    return out


def describe(label: str, r: dict[str, Any]) -> str:
    parts = [f"{label}:"]
    for system in SYSTEMS:
        s = r[system]
        extra = f" ×{s['overhead']:.2f} plain" if "overhead" in s else ""
        parts.append(f"{system} {s['wall_s']:.2f}s first {s['first_result_s']:.2f}s best {s['best']:.5f}{extra};")
    parts.append(f"pbt/ray {r['pbt_over_ray_wall']:.3f}, pbt/ray-interval {r['pbt_over_ray_interval_wall']:.3f}")
    if "plain" in r:
        parts.append(f"(plain {r['plain']['wall_s']:.2f}s)")
    return " ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--toy-steps", type=int, default=200, help="toy: steps per member")
    parser.add_argument("--toy-interval", type=int, default=4, help="toy: exploit every this many steps")
    parser.add_argument("--overhead-steps", type=int, default=120, help="overhead: steps per member")
    parser.add_argument("--intervals", type=int, nargs="+", default=[4, 10], help="overhead: PBT every N steps")
    parser.add_argument("--step-ms", type=float, default=10.0, help="overhead: one numpy step, calibrated here")
    parser.add_argument("--reps", type=int, default=None, help="overhead: numpy repetitions per step (no calibration)")
    parser.add_argument("--workloads", nargs="+", choices=["toy", "numpy"], default=["toy", "numpy"])
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "vs_ray.json"))
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # pbt's workers import vs_ray:NumpyTrainer
    # Ray starts its workers at nice 15 by default; pbt's workers and the plain processes run at
    # nice 0. On a shared machine that alone would slow Ray, so give its workers the same priority.
    os.environ.setdefault("RAY_worker_niceness", "0")

    import ray

    import pbt

    reps = args.reps or calibrate(args.step_ms / 1000)
    step_s = step_seconds(reps)
    print(f"numpy step: {reps} reps, {step_s * 1000:.1f} ms alone", file=sys.stderr)
    began = time.perf_counter()
    result: dict[str, Any] = {
        "population": POPULATION,
        "seeds": args.seeds,
        "versions": {"ray": ray.__version__, "pbt": getattr(pbt, "__version__", None), "numpy": np.__version__},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory(prefix="pbt-vs-ray-") as tmp:
        if "toy" in args.workloads:
            runs = []
            for seed in range(args.seeds):
                runs.append(one_seed("toy", seed, args.toy_steps, args.toy_interval, 0, Path(tmp)))
                print(describe(f"toy seed {seed}", runs[-1]), file=sys.stderr)
            result["toy"] = {"steps_per_member": args.toy_steps, "interval": args.toy_interval, "runs": runs,
                             "median": medians(runs)}
        if "numpy" in args.workloads:
            result["overhead"] = {"step_reps": reps, "step_ms_alone": step_s * 1000,
                                  "checkpoint_bytes": STATE_FLOATS * 8, "steps_per_member": args.overhead_steps}
            for interval in args.intervals:
                runs = []
                for seed in range(args.seeds):
                    runs.append(one_seed("numpy", seed, args.overhead_steps, interval, reps, Path(tmp)))
                    print(describe(f"numpy every {interval} seed {seed}", runs[-1]), file=sys.stderr)
                result["overhead"][f"every_{interval}"] = {"runs": runs, "median": medians(runs)}
    result["total_s"] = time.perf_counter() - began
    result["targets"] = targets(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(table(result), file=sys.stderr)
    return 0


def targets(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "toy" in result:
        median = result["toy"]["median"]
        ray_best = statistics.median(r["ray"]["best"] for r in result["toy"]["runs"])
        out["toy_pbt_wall_le_0.2x_ray"] = median["pbt_over_ray_wall"] <= 0.2
        out["toy_pbt_wall_le_0.2x_ray_interval"] = median["pbt_over_ray_interval_wall"] <= 0.2
        out["toy_pbt_best_q_ge_ray_median_every_seed"] = all(
            r["pbt"]["best"] >= ray_best for r in result["toy"]["runs"])
        out["toy_pbt_median_best_q_ge_ray_median"] = median["pbt"]["best"] >= ray_best
    for key, value in result.get("overhead", {}).items():
        if key.startswith("every_"):
            out[f"{key}_pbt_wall_le_0.2x_ray"] = value["median"]["pbt_over_ray_wall"] <= 0.2
            out[f"{key}_pbt_wall_le_0.2x_ray_interval"] = value["median"]["pbt_over_ray_interval_wall"] <= 0.2
    return out


def table(result: dict[str, Any]) -> str:
    """The medians as a Markdown table (what the README shows)."""
    rows = ["| workload | system | wall s | ×plain | first result s | best | pbt/system wall |",
            "|---|---|---|---|---|---|---|"]
    blocks = []
    if "toy" in result:
        blocks.append(("toy, pop 4, 200 steps, exploit every 4", result["toy"]["median"]))
    for key, value in result.get("overhead", {}).items():
        if key.startswith("every_"):
            blocks.append((f"10 ms numpy steps, 1 MB ckpt, PBT every {key.removeprefix('every_')}", value["median"]))
    for label, median in blocks:
        if "plain" in median:
            rows.append(f"| {label} | plain processes | {median['plain']['wall_s']:.2f} | 1.00 | | | |")
        for system in SYSTEMS:
            s = median[system]
            ratio = {"pbt": "", "ray": f"{median['pbt_over_ray_wall']:.3f}",
                     "ray-interval": f"{median['pbt_over_ray_interval_wall']:.3f}"}[system]
            over = f"{s['overhead']:.2f}" if "overhead" in s else ""
            best = f"{s['best']:.5f}" if label.startswith("toy") else ""
            rows.append(f"| {label} | {system} | {s['wall_s']:.2f} | {over} | {s['first_result_s']:.2f} | {best} "
                        f"| {ratio} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
