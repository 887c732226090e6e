"""Run a PBT study from Python with a function trainer, then read its results.

    python examples/python_api.py                        # embedded workers on this machine
    python examples/python_api.py --broker redis://127.0.0.1:6379/0   # Celery workers (`pbt worker`)

The trainer is the toy problem of the PBT paper (as ``examples/toy.yaml``, whose class trainer
gives the same numbers) written as one function. With ``--broker`` the workers import it as
``python_api:train``, so start them where this folder is importable:
``PYTHONPATH=examples pbt worker --broker ...``. Needs the ``pandas`` extra for the DataFrames.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pbt


def train(hparams, ctx):
    """Maximise Q(θ) = 1.2 − |θ|² by gradient ascent on the surrogate 1.2 − (h0·θ0² + h1·θ1²)."""
    lr = ctx.config.get("lr", 0.01)
    state = {"theta": [0.9, 1.0], "step": 0}
    if ctx.checkpoint is not None:  # a copied member's weights, or this trial's own after a crash
        state = json.loads((ctx.checkpoint / "state.json").read_text())

    def evaluate():
        return {"q": 1.2 - (state["theta"][0] ** 2 + state["theta"][1] ** 2)}

    def save(directory):
        (directory / "state.json").write_text(json.dumps(state))

    h = [hparams["h0"], hparams["h1"]]
    for _ in ctx.steps(evaluate=evaluate, save=save):
        state["theta"] = [t - lr * 2.0 * hi * t for t, hi in zip(state["theta"], h)]
        state["step"] += 1


def toy_study(total_steps: int = 2000) -> dict:
    """The study of examples/toy.yaml, as a dict."""
    return {
        "name": "toy-python",
        "objective": {"metric": "q", "mode": "max"},
        "parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                       "h1": {"type": "float", "low": 0.0, "high": 1.0}},
        "algorithm": {"name": "pbt", "options": {"population_size": 10, "steps_per_trial": 4}},
        "budget": {"total_steps": total_steps},
        "trainer": {"path": "pbt.trainers.toy:ToyTrainer", "config": {"lr": 0.01}},  # replaced by train below
        "execution": {"parallelism": 10},
    }


def main(argv: list[str] | None = None) -> pbt.Study:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", default="runs", help="where records go (default: runs)")
    parser.add_argument("--broker", default=None, help="redis:// URL of Celery workers (default: embedded)")
    parser.add_argument("--workers", type=int, default=None, help="embedded worker processes (default: CPU cores)")
    parser.add_argument("--queue", default=None, help="Celery queue the workers consume (default: pbt.trials)")
    parser.add_argument("--steps", type=int, default=2000, help="total training steps (default: 2000)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the CSV files")
    args = parser.parse_args(argv)

    study_data = toy_study(args.steps)
    if args.queue:
        study_data["execution"]["queue"] = args.queue
    study = pbt.run(study_data, trainer=train, storage=args.storage, broker=args.broker, workers=args.workers)

    best = study.best
    print(f"study {study.name}: {study.ending.summary()}, {len(study.trials)} trials")
    print(f"best trial {best.id}: q = {best.objective:.9f} after {best.lineage_steps} steps")
    print("its hyperparameter schedule (lineage steps, first trial; * = began by copying a better member):")
    runs = []  # consecutive trials of the lineage with the same hyperparameters, merged
    for seg in study.schedule(best):
        if runs and runs[-1]["params"] == seg.params and not seg.exploit:
            runs[-1]["end"] = seg.end
        else:
            runs.append({"start": seg.start, "end": seg.end, "trial": seg.trial, "exploit": seg.exploit,
                         "params": seg.params})
    for r in runs:
        print(f"  {r['start']:>5}-{r['end']:<5} {r['trial']}{'*' if r['exploit'] else ' '} "
              f"h0={r['params']['h0']:.4f} h1={r['params']['h1']:.4f}")

    args.out.mkdir(parents=True, exist_ok=True)
    study.to_dataframe().to_csv(args.out / "trials.csv", index=False)  # one row per trial
    study.to_dataframe(per="evaluation").to_csv(args.out / "evaluations.csv", index=False)
    print(f"DataFrames: {args.out / 'trials.csv'}, {args.out / 'evaluations.csv'}")

    # --- TensorBoard (issue 13b): write the study's curves for `tensorboard --logdir` here. ---
    return study


if __name__ == "__main__":
    main()
