"""``pbt stop`` and ``pbt resume``: pause a study's publishing and pick it up again later.

Both act through the study's storage, not through the controller process: ``stop`` writes the
pause flag in the study's ``control`` document, which the running controller reads every couple
of seconds — it then publishes nothing new, lets in-flight trials finish and record, and exits
with its state marked paused. ``resume`` clears the flag and runs a controller again from the
spec stored with the study, so it needs nothing but the storage URI (and the broker, whose
password the stored spec never holds). Because a paused controller applies no result and makes
no suggestion, the resumed study takes exactly the decisions it would have taken without the
pause.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pbt.cli.common import EXIT_FAILURE, cli_errors, console, setup_logging
from pbt.cli.options import (
    EmbeddedWorkers,
    Quiet,
    StudyStorage,
    SummaryJson,
    TensorBoardDir,
    Verbose,
    broker_option,
)
from pbt.cli.study_commands import drive


def stop(
    study: str = typer.Argument(..., help="study name"),
    storage: StudyStorage = "runs",
    wait: bool = typer.Option(
        False, "--wait", help="wait until the controller has finished in-flight trials and exited"
    ),
    timeout: float = typer.Option(3600.0, "--timeout", min=0.0, help="give up waiting after this many seconds"),
) -> None:
    """Pause a study: the controller stops publishing, finishes in-flight trials and exits.

    Nothing is lost: continue it with `pbt resume STUDY`. Exit status 1 if --wait timed out.
    """
    with cli_errors():
        from pbt.analysis.study import open_study
        from pbt.api.specs import request_pause, wait_until_paused
        from pbt.study_state import StudyState

        stored = open_study(storage, study)
        if stored.study_state is StudyState.FINISHED:
            console.print(f"study {study} has already finished; nothing to stop")
            return
        asked = request_pause(stored, by="pbt stop")
        console.print(
            f"study {study}: pause requested; the controller publishes nothing new and exits once the "
            f"{stored.in_flight} trial(s) in flight have finished. "
            f"Continue with `pbt resume {study} --storage {storage}`."
        )
        if not wait:
            return
        if wait_until_paused(stored, asked, timeout):
            console.print(f"study {study} is paused; no trial in flight")
            return
        console.print(f"[red]timed out[/red] after {timeout:g}s: is a controller running study {study}?")
        raise typer.Exit(EXIT_FAILURE)


def resume(
    study: str = typer.Argument(..., help="study name"),
    storage: StudyStorage = "runs",
    broker: Annotated[str | None, broker_option(
        "redis://[:password@]host:port/db of the study's workers (needed if the study ran on Celery)"
    )] = None,
    workers: EmbeddedWorkers = None,
    tensorboard: TensorBoardDir = None,
    quiet: Quiet = False,
    json_out: SummaryJson = False,
    verbose: Verbose = 0,
) -> None:
    """Clear a study's pause flag and run its controller again from the stored spec, to the end.

    Exit status: 0 finished or paused again, 1 not finished, 2 bad spec or flags, 3 study locked.

    Locked: another controller still holds the study; it sees the cleared flag and carries on.
    """
    setup_logging(verbose)
    with cli_errors(json_out):
        from pbt.analysis.study import open_study
        from pbt.api.specs import resume_spec
        from pbt.errors import StudyLockedError

        stored = open_study(storage, study)
        spec = resume_spec(stored, storage, broker, broker_hint="pass --broker or set PBT_BROKER_URL", by="pbt resume",
                           tensorboard=tensorboard)
        try:
            drive(spec, workers=workers, quiet=quiet, json_out=json_out, how="resumed on")
        except StudyLockedError as exc:
            raise StudyLockedError(
                f"{exc}. The pause flag is cleared: a controller still running this study carries on; "
                "if it has exited meanwhile, run `pbt resume` again"
            ) from None
