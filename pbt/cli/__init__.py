"""The ``pbt`` command line: one Typer app, one module per command group.

Each submodule registers its commands on :data:`app` when imported; ``main`` imports them
lazily-enough that ``pbt --help`` stays fast (heavy imports live inside the commands).
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pbt",
    help="Population Based Training as a black-box service: run studies, workers and reports.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _register() -> None:
    # Imported for their side effect of adding commands to `app`.
    from pbt.cli import (  # noqa: F401
        control_commands,
        data_commands,
        report_commands,
        study_commands,
        worker_commands,
    )


def main() -> None:
    _register()
    app()
