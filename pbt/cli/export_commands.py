"""``pbt export``: a study's records for other tools, TensorBoard event files and CSV tables."""

from __future__ import annotations

import enum
from pathlib import Path

import typer

from pbt.cli.common import cli_errors, console, out
from pbt.cli.options import StudyStorage


class Per(str, enum.Enum):
    trial = "trial"
    evaluation = "evaluation"


def tensorboard(
    study: str = typer.Argument(..., help="study name"),
    storage: StudyStorage = "runs",
    out_dir: Path = typer.Option(
        Path("tensorboard"), "--out", "-o", file_okay=False,
        help="TensorBoard log folder; the study's runs go to OUT/STUDY/ (an earlier export there is replaced)",
    ),
) -> None:
    """Write a study's trials as TensorBoard events: curves at lineage steps, hyperparameters in HParams.

    One run per trial (member-003/t000042). Works on a running study (what is recorded so far).
    Needs the tensorboard extra: pip install 'pbt[tensorboard]'. Prints the study's folder on stdout.
    """
    with cli_errors():
        from pbt.analysis.export import write_tensorboard
        from pbt.analysis.study import open_study

        stored = open_study(storage, study)
        where = write_tensorboard(stored, out_dir)
        console.print(f"study {study}: {len(stored.trials)} trials written; view them with "
                      f"`tensorboard --logdir {out_dir}`", highlight=False)
        out.print(str(where), highlight=False, soft_wrap=True)


def csv(
    study: str = typer.Argument(..., help="study name"),
    storage: StudyStorage = "runs",
    out_file: str = typer.Option("-", "--out", "-o", help="CSV file to write; - (default) for stdout"),
    per: Per = typer.Option(Per.trial, "--per", help="one row per trial, or per evaluation (with step, values.*)"),
) -> None:
    """Write a study's trials as CSV, with the keys of `pbt status --json` (params.h0, timings.train, ...).

    --per evaluation: one row per reported evaluation, with step, lineage_step and values.METRIC.
    """
    with cli_errors():
        from pbt.analysis.export import write_csv
        from pbt.analysis.study import open_study

        n = write_csv(open_study(storage, study), out_file, per.value)
        if out_file != "-":
            console.print(f"wrote {out_file}: {n} rows, one per {per.value}", highlight=False)
