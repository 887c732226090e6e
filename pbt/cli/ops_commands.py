"""``pbt deadletters``, ``pbt logs`` and ``pbt clear``: what an operator needs when something went wrong.

* ``deadletters`` shows (and with ``--clear`` empties) the messages workers and controllers set
  aside because they could not decode or validate them (:mod:`pbt.tasks.deadletter`);
* ``logs`` prints what a trial's trainer wrote to stdout and stderr, kept per attempt in the
  study's storage (:mod:`pbt.tasks.output`);
* ``clear`` deletes a study: one left half-created (a spec and no trial record, which older
  versions could leave behind when a study's first suggestion failed) at once, one with trial
  records only with ``--force``.
"""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer
from rich.markup import escape

from pbt.cli.common import EXIT_FAILURE, EXIT_USAGE, cli_errors, console, out
from pbt.cli.options import StudyStorage, broker_option, json_option


def deadletters(
    broker: Annotated[str | None, broker_option("redis://[:password@]host:port/db of the workers' broker")] = None,
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000, help="how many to show, newest first"),
    clear: bool = typer.Option(False, "--clear", help="delete them all after showing them"),
    json_out: Annotated[bool, json_option("one JSON object: count and letters")] = False,
) -> None:
    """Show the messages set aside because nobody could read them (newest first), and optionally clear them."""
    with cli_errors():
        from pbt.launch import check_broker
        from pbt.tasks import deadletter
        from pbt.tasks.channels import broker_url, redis_client

        url = broker_url(broker)
        check_broker(url)
        client = redis_client(url)
        letters = deadletter.read(client, limit)
        total = deadletter.count(client)
        if json_out:
            print(json.dumps({"count": total, "letters": [d.to_json() for d in letters]}))
        elif not total:
            out.print("no dead letters")
        else:
            out.print(f"{total} dead letter(s) (at most {deadletter.MAX_LETTERS} are kept), newest first:",
                      highlight=False)
            for d in letters:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.at))
                out.print(f"[bold]{when}[/bold] {escape(d.queue)} ({escape(d.seen_by)}): {escape(d.reason)}",
                          highlight=False)
                out.print(f"    {escape(d.body[:300])}", highlight=False, soft_wrap=True)
        if clear:
            n = deadletter.clear(client)
            console.print(f"cleared {n} dead letter(s)")


def logs(
    study: str = typer.Argument(..., help="study name"),
    trial: str = typer.Argument(..., help="trial id, e.g. t000042"),
    storage: StudyStorage = "runs",
    attempt: int | None = typer.Option(None, "--attempt", "-a", min=1, help="this attempt (default: the latest)"),
    tail: int | None = typer.Option(None, "--tail", min=1, help="only the last N lines"),
) -> None:
    """Print what a trial's trainer wrote to stdout and stderr (kept per attempt, head and tail if long)."""
    with cli_errors():
        from pbt.analysis.logs import attempts_logged, read_log
        from pbt.analysis.study import open_study
        from pbt.errors import InvalidNameError
        from pbt.names import validate_trial_id

        try:
            validate_trial_id(trial)
        except InvalidNameError as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)
            raise typer.Exit(EXIT_USAGE) from None
        stored = open_study(storage, study)
        available = attempts_logged(stored.store.objects, study, trial)
        if not available:
            stored.trial(trial)  # NotFoundError (exit 1) for a trial the study does not have
            console.print(f"trial {trial} of study {study} has no output kept (it printed nothing, or never ran)")
            raise typer.Exit(EXIT_FAILURE)
        chosen = attempt or available[-1]
        if chosen not in available:
            console.print(f"trial {trial} has output for attempts {available}, not {chosen}")
            raise typer.Exit(EXIT_USAGE)
        text = read_log(stored.store.objects, study, trial, chosen)
        if tail:
            text = "\n".join(text.splitlines()[-tail:])
        console.print(f"== {study} {trial} attempt {chosen} (of {available}) ==", highlight=False)
        print(text, end="" if text.endswith("\n") else "\n")


def clear(
    study: str = typer.Argument(..., help="study name"),
    storage: StudyStorage = "runs",
    force: bool = typer.Option(False, "--force", help="also delete a study that has trial records"),
) -> None:
    """Delete a study's records, checkpoints and logs: a half-created one (no trial) at once, others with --force.

    Refused while a controller holds the study. Exit status 2 when --force is needed.
    """
    with cli_errors():
        from pbt.controller.lease import local_lease
        from pbt.storage import open_object_store
        from pbt.storage.study_store import StudyStore

        objects = open_object_store(storage)
        store = StudyStore(objects, study)
        keys = [o.key for o in objects.list(store.key("") + "/")]
        if not keys:
            console.print(f"no study {study!r} in {objects.uri}; nothing to clear")
            return
        trials = store.load_trials() if store.exists() else []
        if trials and not force:
            console.print(f"[red]error:[/red] study {study} has {len(trials)} trial record(s); "
                          "pass --force to delete them with its checkpoints and logs", highlight=False)
            raise typer.Exit(EXIT_USAGE)
        in_flight = sum(1 for t in trials if not t.status.terminal)
        spec = store.read_spec() if store.exists() else {}
        if in_flight and spec.get("broker"):
            console.print(f"[red]error:[/red] study {study} has {in_flight} trial(s) in flight on Celery workers; "
                          f"stop it first (pbt stop {study} --wait)", highlight=False)
            raise typer.Exit(EXIT_USAGE)
        lease = local_lease(objects.uri, study)
        lease.acquire()  # a controller on this machine still driving it: StudyLockedError, exit 3
        lock = store.key("controller.lock")
        try:
            objects.delete([k for k in keys if k != lock])
        finally:
            lease.release()
        if objects.exists(lock):
            objects.delete([lock])
        what = f"{len(trials)} trial record(s)" if trials else "a half-created study (no trial record)"
        console.print(f"cleared study {study} from {objects.uri}: {what}, {len(keys)} object(s)", highlight=False)
