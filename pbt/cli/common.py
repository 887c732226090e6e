"""Helpers shared by the CLI modules: exit codes, error printing, logging."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from pbt.errors import PbtError, SpecError, StudyLockedError

#: Columns when output goes to a file or a pipe (and COLUMNS is unset): rich would wrap tables at
#: 80 there; tables are only as wide as their content, so this is just a limit.
PIPE_WIDTH = 200


def _console(stream: TextIO, **kw) -> Console:
    """A console that wraps at the terminal's width, or at :data:`PIPE_WIDTH` when not a terminal."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    width = None if tty or os.environ.get("COLUMNS") else PIPE_WIDTH
    return Console(width=width, **kw)


console = _console(sys.stderr, stderr=True)  # progress, notices, errors
out = _console(sys.stdout)  # results: what a script or a file gets

# Exit statuses, the same for `pbt run`, `pbt resume` and their --json output (README, "Exit status").
EXIT_OK = 0  # the study ended with a best trial
EXIT_FAILURE = 1  # the study failed (a fatal error, too many failures, no trial completed), or another error
EXIT_USAGE = 2  # bad study file or flags, as Click uses for usage errors
EXIT_LOCKED = 3  # another controller drives this study
EXIT_PAUSED = 4  # paused with `pbt stop`: `pbt resume` continues it
EXIT_INTERRUPTED = 130

T = TypeVar("T")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@contextmanager
def cli_errors() -> Iterator[None]:
    """Turn pbt's errors into a one-paragraph message and a meaningful exit code."""
    try:
        yield
    # Messages are text, not markup: "pip install 'pbt[tensorboard]'" must print its brackets.
    except SpecError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except StudyLockedError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_LOCKED) from None
    except PbtError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        console.print("interrupted; the study resumes from its records with the same command")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def call(fn: Callable[[], T]) -> T:
    with cli_errors():
        return fn()
