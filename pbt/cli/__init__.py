"""The ``pbt`` command line: one Typer app, one module per command group, every command listed here.

Command modules hold plain functions (their parameters declare the flags, with the shared ones
from :mod:`pbt.cli.options`); this module is the one place that names them as commands. Heavy
imports live inside the commands, so ``pbt --help`` stays fast.
"""

from __future__ import annotations

import typer

from pbt.cli import (
    control_commands,
    data_commands,
    export_commands,
    report_commands,
    study_commands,
    worker_commands,
)

app = typer.Typer(
    name="pbt",
    help="Population Based Training as a black-box service: run studies, workers and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Build the data sets of the built-in case studies.", no_args_is_help=True)
export_app = typer.Typer(help="Write a study's records for other tools: TensorBoard events, CSV.",
                         no_args_is_help=True)

# Registration order is the order `pbt --help` lists commands in (within each panel).
app.command(rich_help_panel="Pause and resume")(control_commands.stop)
app.command(rich_help_panel="Pause and resume")(control_commands.resume)
app.add_typer(data_app, name="data")
data_app.command("speech")(data_commands.speech)
app.command()(data_commands.sample)
app.command(rich_help_panel="Results")(report_commands.report)
app.command(rich_help_panel="Results")(report_commands.replay)
app.add_typer(export_app, name="export", rich_help_panel="Results")
export_app.command("tensorboard")(export_commands.tensorboard)
export_app.command("csv")(export_commands.csv)
app.command()(study_commands.run)
app.command()(study_commands.status)
app.command()(worker_commands.worker)


def main() -> None:
    app()
