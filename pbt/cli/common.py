"""Helpers shared by the CLI modules: exit codes, error printing, logging."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import typer
from rich.console import Console

from pbt.errors import PbtError, SpecError, StudyLockedError

console = Console(stderr=True)
out = Console()

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
    except SpecError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(EXIT_USAGE) from None
    except StudyLockedError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_LOCKED) from None
    except PbtError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(EXIT_FAILURE) from None
    except KeyboardInterrupt:
        console.print("interrupted; the study resumes from its records with the same command")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def call(fn: Callable[[], T]) -> T:
    with cli_errors():
        return fn()
