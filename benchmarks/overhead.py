"""Framework overhead per training step: WaveNet through pbt vs a bare PyTorch loop (the paper's Figure 9).

For the same model, data, batch, crop and device, this measures seconds per training step

* of a bare loop (no pbt: ``wavenet_common.bare_loop``), before and after every study, so each
  study is compared with the machine as it was at the time;
* through pbt: a PBT study (population 2, one worker, so trials run back to back and every
  trial after the first two warm-starts from a checkpoint) on the embedded executor and on a
  Celery worker (started here with ``pbt.testing.Workers`` on Redis), at 100 and 1,000 steps
  per trial; optionally the Bayesian baseline too (``--policies pbt bayes``), whose trials
  train from scratch but whose controller fits a GP between them.

Steady state only: the first trial of each study (worker start, imports) is a warm-up. The
measured window runs from the warm-up trial's end to the last trial's end, so it holds
everything a trial costs: the controller's decision, the queue, trainer setup, checkpoint load,
training, evaluation, checkpoint save and the result's way back. Per step, the window splits
into the trial records' phases (``queue_wait``, ``checkpoint_load``, ``train``, ``evaluate``,
``checkpoint_save``) and ``other`` (the rest: trainer setup — also timed on its own as
``trainer_setup_s`` — the controller, messages). The paper's overhead leaves evaluation out,
so both ratios are printed: ``ratio`` (pbt s/step ÷ bare s/step, everything) and
``ratio_excluding_evaluation``; ``ratio_to_own_train`` divides by the trials' own training time
instead, which a busy machine disturbs less. Checkpoints go to a folder on the local disk.

Prints one JSON object (and writes it to ``--out``, where wavenet_compare.py picks it up for
Figure 9): {"bare": {...}, "runs": {"embedded/pbt/1000": {"s_per_step", "ratio",
"ratio_excluding_evaluation", "per_step": {phase: s}, ...}, ...}, "ratio_at_1000": {...}, ...}

Usage: python benchmarks/overhead.py [--size cpu|tiny|gpu] [--steps 100 1000] [--trials 3]
       [--executors embedded celery] [--policies pbt] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wavenet_common import ROOT, bare_loop, ensure_corpus, load_trials, phase_totals, search_space, trainer_config

from pbt.launch import run_study
from pbt.study_file import parse_spec


def study(name: str, policy: str, steps: int, trials: int, config: dict[str, Any], size: str, storage: str,
          broker: str | None, queue: str | None) -> dict[str, Any]:
    algorithms = {
        "pbt": {"name": "pbt", "options": {"population_size": 2, "steps_per_trial": steps}},
        "bayes": {"name": "bayes", "options": {"num_trials": trials, "steps_per_trial": steps, "n_startup_trials": 2}},
    }
    execution: dict[str, Any] = {"parallelism": 1, "lease_seconds": 3600}
    if queue:
        execution["queue"] = queue
    return {
        "name": name,
        "objective": {"metric": "val_bps", "mode": "min"},
        "parameters": search_space(size),
        "algorithm": algorithms[policy],
        "budget": {"total_steps": steps * trials},
        "trainer": {"path": "pbt.wavenet.trainer:WaveNetTrainer", "config": config},
        "execution": execution,
        "storage": storage,
        "broker": broker,
        "seed": 0,
    }


def measure(spec_data: dict[str, Any]) -> dict[str, Any]:
    """Run one study; seconds per step over its steady-state window, split by phase."""
    spec = parse_spec(spec_data)
    started = time.perf_counter()
    run_study(spec, workers=1)
    wall = time.perf_counter() - started
    trials = load_trials(spec.storage, spec.name)
    assert all(t.status.value == "completed" for t in trials), [t.error for t in trials if t.error]
    measured = trials[1:]  # trial 0 warms the worker up: process start, imports, corpus load
    window = max(t.finished_at for t in measured) - trials[0].finished_at
    steps = sum(t.steps_done for t in measured)
    phases = phase_totals(measured)
    per_step = {k: v / steps for k, v in phases.items()}
    per_step["other"] = (window - sum(phases.values())) / steps
    return {
        "s_per_step": window / steps,
        "per_step": per_step,
        "per_trial": {k: v * steps / len(measured) for k, v in per_step.items()},
        "measured_trials": len(measured),
        "measured_steps": steps,
        "warm_starts": sum(1 for t in measured if t.warm_start),
        "study_wall_s": wall,
    }


def ratios(run: dict[str, Any], bare_s: float) -> dict[str, float]:
    s, per_step = run["s_per_step"], run["per_step"]
    return {
        "ratio": s / bare_s,
        "ratio_excluding_evaluation": (s - per_step["evaluate"]) / bare_s,
        "overhead_s_per_step": s - bare_s,
        "overhead_s_per_step_excluding_evaluation": s - per_step["evaluate"] - bare_s,
        "train_phase_over_bare": per_step["train"] / bare_s,
        # Window over the trials' own training time: both from the same run, so a busy machine
        # (which slows training and everything else alike) moves it much less than `ratio`.
        "ratio_to_own_train": s / per_step["train"],
        "ratio_to_own_train_excluding_evaluation": (s - per_step["evaluate"]) / per_step["train"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "cpu", "gpu"], default="cpu")
    parser.add_argument("--data", default=str(ROOT / "data" / "speech"))
    parser.add_argument("--steps", type=int, nargs="+", default=[100, 1000], help="steps per trial")
    parser.add_argument("--trials", type=int, default=3, help="measured trials per study (plus one warm-up)")
    parser.add_argument("--executors", nargs="+", choices=["embedded", "celery"], default=["embedded", "celery"])
    parser.add_argument("--policies", nargs="+", choices=["pbt", "bayes"], default=["pbt"])
    parser.add_argument("--bare-steps", type=int, default=300, help="bare-loop steps before and after each study")
    parser.add_argument("--redis", default=os.environ.get("PBT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"))
    parser.add_argument("--out", default=str(ROOT / "bench-results" / "overhead.json"))
    args = parser.parse_args(argv)

    config = trainer_config(args.size, ensure_corpus(args.data))
    bares = [bare_loop(config, args.bare_steps)]
    print(f"bare loop: {bares[-1]['s_per_step'] * 1000:.2f} ms/step", file=sys.stderr)
    runs: dict[str, Any] = {}
    scratch = ROOT / "bench-results"  # on the local disk: checkpoint I/O is part of the overhead
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pbt-overhead-", dir=scratch) as tmp:
        workers = None
        try:
            for executor in args.executors:
                broker = queue = None
                if executor == "celery":
                    from pbt.testing import Workers, ping

                    if not ping(args.redis):
                        raise SystemExit(f"no Redis at {args.redis} (set --redis or PBT_TEST_REDIS_URL)")
                    workers = Workers(args.redis, Path(tmp))
                    workers.start(1)
                    broker, queue = args.redis, workers.queue
                for policy in args.policies:
                    for steps in args.steps:
                        key = f"{executor}/{policy}/{steps}"
                        name = f"overhead-{executor}-{policy}-{steps}-{os.getpid()}"
                        data = study(name, policy, steps, args.trials + 1, config, args.size, str(Path(tmp) / key),
                                     broker, queue)
                        load_before = os.getloadavg()[0]
                        run = measure(data)
                        run["load_average_1min"] = [load_before, os.getloadavg()[0]]
                        # The bare loop on either side of this study: the machine as this study saw it.
                        bares.append(bare_loop(config, args.bare_steps))
                        around = (bares[-2]["s_per_step"], bares[-1]["s_per_step"])
                        run["bare_s_per_step"] = statistics.fmean(around)
                        run["bare_spread"] = max(around) / min(around) - 1
                        runs[key] = {**ratios(run, run["bare_s_per_step"]), **run}
                        r = runs[key]
                        print(f"{key}: {r['s_per_step'] * 1000:.2f} ms/step, bare {r['bare_s_per_step'] * 1000:.2f},"
                              f" ratio {r['ratio']:.3f} ({r['ratio_excluding_evaluation']:.3f} without evaluation;"
                              f" {r['ratio_to_own_train']:.3f} to its own training)", file=sys.stderr)
                if workers is not None:
                    workers.stop_all()
                    workers = None
        finally:
            if workers is not None:
                workers.stop_all()
    bare_all = [b["s_per_step"] for b in bares]
    result = {
        "size": args.size,
        "model": {k: config[k] for k in ("stacks", "layers_per_stack", "residual_channels", "skip_channels",
                                         "batch_size", "crop")},
        "bare": {
            "s_per_step": statistics.fmean(bare_all),
            "s_per_step_each": bare_all,
            "spread": max(bare_all) / min(bare_all) - 1,
            "trainer_setup_s": statistics.fmean(b["trainer_setup_s"] for b in bares),
            "device": bares[0]["device"],
            "threads": bares[0]["threads"],
            "steps": args.bare_steps,
        },
        "runs": runs,
        "ratio_at_1000": {k.rsplit("/", 1)[0]: {n: v[n] for n in ("ratio", "ratio_excluding_evaluation",
                                                                   "ratio_to_own_train_excluding_evaluation")}
                          for k, v in runs.items() if k.endswith("/1000")},
        "note": ("each run's ratio uses the bare loop measured just before and after it; bare spread and the "
                 "load average show how quiet the machine was"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
