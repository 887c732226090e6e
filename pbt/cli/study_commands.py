"""``pbt run`` and ``pbt status``: start or resume a study, and look at one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pbt.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_PAUSED, cli_errors, console, out, setup_logging
from pbt.cli.options import (
    EmbeddedWorkers,
    Quiet,
    SummaryJson,
    TensorBoardDir,
    Verbose,
    broker_option,
    json_option,
    storage_option,
)
from pbt.cli.progress import progress_view


def run(
    study_file: Path = typer.Argument(..., help="study YAML file", exists=False, dir_okay=False),
    storage: Annotated[str | None, storage_option(
        "where checkpoints and records go: a path, file:///abs/path or s3://bucket/prefix (overrides the file)"
    )] = None,
    broker: Annotated[str | None, broker_option(
        "redis://[:password@]host:port/db of Celery workers; without it trials run on this machine"
    )] = None,
    workers: EmbeddedWorkers = None,
    seed: int | None = typer.Option(None, "--seed", help="overrides the file's seed"),
    name: str | None = typer.Option(None, "--name", help="overrides the study name (a new study)"),
    tensorboard: TensorBoardDir = None,
    quiet: Quiet = False,
    json_out: SummaryJson = False,
    verbose: Verbose = 0,
) -> None:
    """Run a study to the end, or resume it from its records if it already exists."""
    setup_logging(verbose)
    with cli_errors(json_out):
        from pbt.api import study_spec

        spec = study_spec(study_file, storage=storage, broker=broker, seed=seed, name=name, tensorboard=tensorboard)
        drive(spec, workers=workers, quiet=quiet, json_out=json_out, how=f"{spec.algorithm.name} on",
              source=str(study_file))


def drive(spec, *, workers: int | None, quiet: bool, json_out: bool, how: str, source: str | None = None) -> None:
    """Run a study with a progress view, then print its outcome: `pbt run` and `pbt resume` alike.

    Exits with the study's status (README, "Exit status"): 0 with a best trial, 1 when it failed,
    4 when paused.
    """
    from pbt.launch import check_identity, check_services, run_study
    from pbt.study_state import Outcome
    from pbt.urls import redact_url

    check_services(spec)  # an unusable broker or storage is one line and exit 5, before anything is shown
    check_identity(spec)  # so is another study's spec under this name (exit 2)
    where = f"Celery workers via {redact_url(spec.broker)}" if spec.broker else "embedded workers"
    finished_before = _finished_trials(spec)
    progress = progress_view(spec, console, quiet=quiet or json_out)
    started = False

    def observe(snapshot) -> None:
        # The header waits for the first tick, i.e. for the study's lease: a study another
        # controller drives is refused (exit 3) without first being announced as started.
        nonlocal started
        if not started:
            started = True
            console.print(f"study [bold]{spec.name}[/bold]: {how} {where}; records in {spec.storage}")
            if spec.execution.tensorboard:
                console.print(f"TensorBoard events go to {spec.execution.tensorboard}/{spec.name} "
                              f"(tensorboard --logdir {spec.execution.tensorboard})", highlight=False)
        if progress:
            progress.update(snapshot)

    try:
        snapshot = run_study(spec, workers=workers, observer=observe)
    finally:
        if progress:
            progress.stop()
    code = {Outcome.SUCCEEDED: EXIT_OK, Outcome.PAUSED: EXIT_PAUSED}.get(snapshot.outcome, EXIT_FAILURE)
    if finished_before is not None and snapshot.trials == finished_before:
        _print_already_finished(spec, source)
    if json_out:
        _print_json_outcome(spec, snapshot, code)
    elif snapshot.outcome is Outcome.PAUSED:
        resume = f"pbt resume {spec.name} --storage {spec.storage}"
        console.print(f"study {spec.name} paused; continue it with `{resume}`")
    elif snapshot.outcome is Outcome.SUCCEEDED:
        _print_outcome(spec)
    elif snapshot.outcome is Outcome.FAILED:
        _print_failure(spec, snapshot)
    else:
        console.print(f"study {spec.name} stopped before it ended; run the same command to continue")
    if code != EXIT_OK:
        raise typer.Exit(code)


def _finished_trials(spec) -> int | None:
    """How many trials a study had if its last run finished it (None: new, paused, or cut short)."""
    from pbt.storage import open_object_store
    from pbt.storage.study_store import StudyStore

    store = StudyStore(open_object_store(spec.storage), spec.name)
    state = store.read_doc("state") if store.exists() else None
    if not state or not state.get("finished"):
        return None
    return len(store.load_trials())


def _print_already_finished(spec, source: str | None) -> None:
    """A finished study run again with nothing new to do: say so, and how to get more out of it."""
    from pbt.analysis.study import open_study
    from pbt.study_state import ending

    end = ending(open_study(spec.storage, spec.name).state)
    why = f" ({end.reason.text})" if end else ""
    where = f"in {source} " if source else "in the study file "
    console.print(
        f"study {spec.name} had already finished{why}; nothing new ran and the result below is the one "
        f"recorded. To train it further, raise budget.total_steps or budget.max_trials {where}and run "
        f"`pbt run` again (budget and execution may change between runs, the rest may not); for a new "
        f"study, pass --name NEW or another --storage.",
        highlight=False, soft_wrap=True,
    )


def _print_failure(spec, snapshot) -> None:
    """Why the study failed: the reason, the trial's error with its traceback, what to do next."""
    console.print(f"[red]study {spec.name} failed:[/red] {snapshot.message}", highlight=False)
    if snapshot.error and snapshot.error.strip() != (snapshot.message or "").strip():
        console.print(snapshot.error.rstrip(), markup=False, highlight=False)
    console.print(f"({snapshot.reason.text}; `pbt status {spec.name} --storage {spec.storage}` shows every trial)",
                  highlight=False)


def _print_json_outcome(spec, snapshot, code: int) -> None:
    from pbt.analysis.study import open_study
    from pbt.lineage import trial_json

    stored = open_study(spec.storage, spec.name)
    best = stored.best
    print(json.dumps({
        "study": spec.name, "storage": spec.storage,
        "outcome": str(snapshot.outcome) if snapshot.outcome else None,
        "reason": str(snapshot.reason) if snapshot.reason else None,
        "message": snapshot.message, "exit_code": code,
        "best": trial_json(best) if best else None, "trials": len(stored.trials),
    }))


def status(
    study: str = typer.Argument(..., help="study name"),
    storage: Annotated[str, storage_option("the study's storage URI")] = "runs",
    json_out: Annotated[bool, json_option("one JSON object: study spec, trials, best")] = False,
    watch: bool = typer.Option(False, "--watch", "-w", help="refresh live until the study finishes or pauses"),
    interval: float = typer.Option(2.0, "--interval", "-n", min=0.1, help="seconds between refreshes with --watch"),
    broker: Annotated[str | None, broker_option(
        "the broker of a distributed study, to count its dead letters (the stored spec keeps no password)"
    )] = None,
) -> None:
    """Show a study: progress and ETA, workers busy/idle, best so far, top trials (works while it runs)."""
    with cli_errors(json_out):
        from pbt.analysis.status import overview
        from pbt.api import load_study
        from pbt.cli import live

        loaded = load_study(study, storage)
        stored = loaded.stored
        if json_out:
            doc = loaded.to_json()
            letters = _dead_letters(stored.spec_doc, broker)
            if letters is not None:  # a distributed study, with its broker reachable
                doc["dead_letters"] = letters
            print(json.dumps(doc))
            return

        def load():
            nonlocal stored
            stored = stored.reread()
            return overview(stored.spec, stored.trials, stored.state, stored.control)

        if watch and out.is_terminal:
            live.watch(load, interval, out)
        else:
            out.print(live.render(overview(stored.spec, stored.trials, stored.state, stored.control)))
        _print_top(stored.spec, stored.trials, stored.store.objects)
        letters = _dead_letters(stored.spec_doc, broker)
        if letters:
            console.print(f"[yellow]{letters} dead letter(s)[/yellow] on the broker: messages nobody could read, "
                          "set aside (`pbt deadletters` shows them)", highlight=False)


def _dead_letters(spec_doc: dict, broker: str | None) -> int | None:
    """Dead letters on a distributed study's broker; None when it has none or it cannot be reached."""
    import os

    url = broker or os.environ.get("PBT_BROKER_URL")
    if not spec_doc.get("broker") or not url:
        return None
    try:
        from pbt.tasks import deadletter
        from pbt.tasks.channels import check_broker_url, redis_client

        return deadletter.count(redis_client(check_broker_url(url)))
    except Exception:  # status reads storage; a broker it cannot reach is no reason to fail
        return None


def _print_outcome(spec) -> None:
    from pbt.analysis.study import open_study
    from pbt.lineage import lineage, schedule

    stored = open_study(spec.storage, spec.name)
    best = stored.best
    if out.is_terminal:
        out.print()
    out.print(
        f"best trial [bold]{best.id}[/bold] {spec.objective.metric} = [bold green]{best.objective:.6g}"
        f"[/bold green] after {best.lineage_steps} steps along its lineage (generation {best.generation})"
    )
    # The title on its own line: a table's title wraps at the table's width.
    out.print("hyperparameter schedule of the best lineage:", style="italic")
    table = Table()
    table.add_column("steps")
    table.add_column("trial")
    for name in spec.parameters:
        table.add_column(name, justify="right")
    rows = schedule(lineage(stored.trials, best))
    shown = rows if len(rows) <= 24 else [*rows[:10], None, *rows[-10:]]
    for seg in shown:
        if seg is None:
            table.add_row("…", "…", *["…" for _ in spec.parameters])
            continue
        cells = [_fmt(seg.params.get(n)) for n in spec.parameters]
        table.add_row(f"{seg.start}–{seg.end}", seg.trial + (" ⇐" if seg.exploit else ""), *cells)
    out.print(table)
    if any(seg.exploit for seg in rows):
        out.print("⇐ = copied another member's weights (exploit) before this segment")
    flag = f" --storage {spec.storage}"
    out.print(f"results: {spec.storage}/{spec.name}\nnext: pbt status {spec.name}{flag} · pbt report {spec.name}{flag}"
              f" · pbt replay {spec.name}{flag}", highlight=False, soft_wrap=True)


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _print_top(spec, trials, objects=None) -> None:
    """The ten trials with the best recorded objective, then the first failures' errors."""
    metric = spec.objective.metric
    ranked = sorted(
        (t for t in trials if t.objective is not None),
        key=lambda t: t.objective,
        reverse=spec.objective.mode == "max",
    )[:10]
    table = Table(title=f"top trials by {metric} ({spec.objective.mode})", title_justify="left")
    for col in ("trial", metric, "member", "gen", "lineage steps", "parent", *spec.parameters):
        table.add_column(col)
    for t in ranked:
        table.add_row(
            t.id,
            f"{t.objective:.6g}",
            str(t.member),
            str(t.generation),
            str(t.lineage_steps),
            str(t.parent),
            *[_fmt(t.params.get(n)) for n in spec.parameters],
        )
    out.print(table)
    failed = [t for t in trials if t.status.value == "failed"][:5]
    for t in failed:
        console.print(f"[red]{t.id} failed[/red]: {t.error.strip().splitlines()[0] if t.error else ''}")
        if objects is not None:
            from pbt.analysis.logs import last_lines

            try:
                lines = last_lines(objects, spec.name, t.id, 3)
            except Exception:  # the log is a courtesy: never fail status over it
                lines = []
            for line in lines:
                console.print(f"    | {line[:200]}", markup=False, highlight=False)
            if lines:
                console.print(f"    (pbt logs {spec.name} {t.id} shows its whole output)", highlight=False)
