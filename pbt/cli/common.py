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

from pbt.errors import PbtError, ServiceError, SpecError, StorageError, StudyLockedError
from pbt.urls import redact_logs, redact_secrets

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
EXIT_ENVIRONMENT = ServiceError.exit_code  # 5: broker or storage unreachable, refusing us, or a bucket missing
EXIT_INTERRUPTED = 130

T = TypeVar("T")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    redact_logs()  # no credentials in any log line, at any level


@contextmanager
def cli_errors(json_out: bool = False) -> Iterator[None]:
    """Turn pbt's errors into a one-paragraph message and a meaningful exit code.

    With ``json_out`` (a command's ``--json``), stdout also gets one JSON object
    ``{"outcome": "error", "reason": "usage|locked|environment|error|interrupted", "message",
    "exit_code"}``, so a script reading stdout always gets an object.
    """
    try:
        yield
    # Messages are text, not markup: "pip install 'pbt[tensorboard]'" must print its brackets.
    except SpecError as exc:
        _fail(str(exc), EXIT_USAGE, "usage", json_out)
    except StudyLockedError as exc:
        _fail(str(exc), EXIT_LOCKED, "locked", json_out)
    except (ServiceError, StorageError) as exc:
        _fail(redact_secrets(str(exc)), EXIT_ENVIRONMENT, "environment", json_out)
    except PbtError as exc:
        _fail(str(exc), EXIT_FAILURE, "error", json_out)
    except KeyboardInterrupt:
        console.print("interrupted; the study resumes from its records with the same command")
        if json_out:
            _print_error_json("interrupted", "interrupted", EXIT_INTERRUPTED)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except Exception as exc:
        if not _is_broker_error(exc):
            raise
        message = f"the broker is unusable: {type(exc).__name__}: {redact_secrets(str(exc))}"
        _fail(message, EXIT_ENVIRONMENT, "environment", json_out)


def _fail(message: str, code: int, reason: str, json_out: bool) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=code == EXIT_ENVIRONMENT)
    if json_out:
        _print_error_json(reason, message, code)
    raise typer.Exit(code) from None


def _print_error_json(reason: str, message: str, code: int) -> None:
    import json

    print(json.dumps({"outcome": "error", "reason": reason, "message": message, "exit_code": code}), flush=True)


def _is_broker_error(exc: BaseException) -> bool:
    """A Redis or kombu connection error that reached the command line (the broker went away mid-run)."""
    module = type(exc).__module__
    return module.startswith(("redis.", "kombu.")) and any(
        word in type(exc).__name__ for word in ("Connection", "Timeout", "Authentication", "Operational")
    )


def call(fn: Callable[[], T]) -> T:
    with cli_errors():
        return fn()
