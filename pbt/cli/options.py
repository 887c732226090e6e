"""The options several commands share, declared once: flag names, short forms and environment variables.

Each alias is a Typer ``Annotated`` type; a command gives the default as the parameter's default
(``storage: StudyStorage = "runs"``). Where a command explains a shared flag in its own words,
it builds the option with the same factory and its own help text, so ``--storage`` is ``-s`` and
reads ``PBT_STORAGE`` everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

STUDY_STORAGE_HELP = "the study's storage: a path, file:///abs/path or s3://bucket/prefix"


def storage_option(help: str) -> Any:
    """``--storage/-s`` (env ``PBT_STORAGE``): a path, ``file:///abs/path`` or ``s3://bucket/prefix``."""
    return typer.Option("--storage", "-s", envvar="PBT_STORAGE", help=help)


def broker_option(help: str) -> Any:
    """``--broker/-b`` (env ``PBT_BROKER_URL``): the Redis URL of the Celery broker."""
    return typer.Option("--broker", "-b", envvar="PBT_BROKER_URL", help=help)


def workers_option(help: str) -> Any:
    """``--workers/-w``: a number of local processes, at least 1."""
    return typer.Option("--workers", "-w", min=1, help=help)


def json_option(help: str) -> Any:
    """``--json``: machine-readable output on stdout."""
    return typer.Option("--json", help=help)


#: The storage of an existing study (stop, resume, report, replay); default ``"runs"``.
StudyStorage = Annotated[str, storage_option(STUDY_STORAGE_HELP)]
#: Local worker processes when no broker is given (run, resume); default None: one per CPU core.
EmbeddedWorkers = Annotated[
    int | None, workers_option("embedded worker processes (default: number of CPU cores)")
]
#: No progress display (run, resume); default False.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress display")]
#: The outcome of a study run as JSON (run, resume); default False.
SummaryJson = Annotated[bool, json_option("print the final summary as JSON on stdout")]
#: Log level by repetition: 0 warnings, 1 info, 2 debug; default 0.
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="log more (-vv for debug)")]
#: A TensorBoard log folder written while the study runs (run, resume); default None: the study file's.
TensorBoardDir = Annotated[str | None, typer.Option(
    "--tensorboard", metavar="DIR",
    help="write every trial's curves and hyperparameters as TensorBoard events to DIR/STUDY/ while it runs "
         "(execution.tensorboard; needs pip install 'pbt[tensorboard]')",
)]
