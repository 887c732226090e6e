"""``pbt report`` and ``pbt replay``: what a study did, and re-running its winning schedule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.table import Table

from pbt.cli.common import EXIT_USAGE, cli_errors, console, out, setup_logging
from pbt.cli.options import StudyStorage, Verbose, json_option


def report(
    study: str = typer.Argument(..., help="study name"),
    storage: StudyStorage = "runs",
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", file_okay=False, help="output folder (default: reports/STUDY); files in it are replaced"
    ),
) -> None:
    """Write an HTML report (index.html, PNGs, report.json) of a study, finished or still running.

    Prints the path of index.html on stdout.
    """
    with cli_errors():
        from pbt.analysis.report import report_study
        from pbt.errors import FatalError
        from pbt.names import validate_name

        target = out_dir or Path("reports", validate_name(study, "study name"))
        try:
            rep = report_study(study, storage, target)
        except OSError as exc:  # the output folder: not creatable, not a folder, full, read-only
            if not str(exc.filename or "").startswith(str(target)):
                raise
            raise FatalError(f"{target}: cannot write the report: {exc.strerror or exc}") from None
        d = rep.data
        if d.best:
            best = f"best {d.metric} {d.best_objective:.6g} ({d.best})"
        else:  # a study that ended without a result says how, not "yet"
            best = f"no completed trial ({d.ended})" if d.ended else "no completed trial yet"
        console.print(f"study {d.study} ({d.state}): {d.trials} trials, {best}; {len(d.edges)} parent links")
        out.print(str(rep.html.resolve()), highlight=False, soft_wrap=True)


def replay(
    study: str = typer.Argument(..., help="study name"),
    trial: str | None = typer.Option(None, "--trial", "-t", help="trial id to replay (default: the best trial)"),
    storage: StudyStorage = "runs",
    steps_scale: float | None = typer.Option(
        None, "--steps-scale", min=0.0, help="train every segment X times as many steps (e.g. 2 for a longer run)"
    ),
    extra_steps: int | None = typer.Option(
        None, "--extra-steps", min=1, help="after the schedule, keep training N more steps with its last values"
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="override trainer.config, KEY=VALUE (YAML value), e.g. --set data=/data/bigger; repeatable"
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", "-o", file_okay=False,
        help="write replay.json (and checkpoint/) here instead of STUDY/replays/ in the storage",
    ),
    save_checkpoint: bool = typer.Option(False, "--save-checkpoint", help="also keep the replayed model's state"),
    json_out: Annotated[bool, json_option("print the replay record as JSON on stdout")] = False,
    verbose: Verbose = 0,
) -> None:
    """Re-run a trial's whole hyperparameter schedule from scratch in this process; compare objectives.

    The paper's training replay: one trainer follows the lineage's schedule, segment by segment.

    New hyperparameters are applied as in a warm start: setup with them, then load the previous state.

    Without --steps-scale, --extra-steps or --set it reproduces the original (exactly, if deterministic).
    """
    setup_logging(verbose)
    if steps_scale is not None and extra_steps is not None:
        console.print("[red]error:[/red] use --steps-scale or --extra-steps, not both")
        raise typer.Exit(EXIT_USAGE)
    if steps_scale is not None and steps_scale <= 0:
        console.print("[red]error:[/red] --steps-scale must be > 0")
        raise typer.Exit(EXIT_USAGE)
    config = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            console.print(f"[red]error:[/red] --set {item!r}: expected KEY=VALUE")
            raise typer.Exit(EXIT_USAGE)
        config[key] = yaml.safe_load(value)
    with cli_errors():
        import tempfile

        from pbt.analysis.replay import ReplaySegment, save_replay
        from pbt.analysis.replay import replay as run_replay
        from pbt.analysis.study import open_study

        stored = open_study(storage, study)
        spec = stored.spec

        def show(seg: ReplaySegment) -> None:
            if not json_out:
                what = seg.trial or "extra steps"
                orig = "" if seg.original_objective is None else f" (original {seg.original_objective:.6g})"
                console.print(f"  {what}: steps {seg.start}–{seg.end}, {spec.objective.metric} {seg.objective:.6g}"
                              f"{orig}", highlight=False)

        with tempfile.TemporaryDirectory(prefix="pbt-replay-ckpt-") as tmp:
            ckpt = Path(tmp) / "checkpoint" if save_checkpoint else None
            result = run_replay(
                spec, stored.trials, trial, steps_scale=steps_scale or 1.0, extra_steps=extra_steps or 0,
                trainer_config=config, checkpoint_dir=ckpt, on_segment=show,
            )
            save_replay(result, storage, out_dir, ckpt)
        if json_out:
            print(json.dumps(result.to_json()))
            return
        _print_replay(spec, result)


def _print_replay(spec, result) -> None:
    from pbt.analysis.report.page import fmt as _fmt

    metric = spec.objective.metric
    table = Table(title=f"replay of {result.trial}: schedule as applied", title_justify="left")
    for col in ("replay steps", "trial", *spec.parameters, f"original {metric}", f"replay {metric}"):
        table.add_column(col, justify="left" if col == "trial" else "right")
    rows = result.segments
    shown = rows if len(rows) <= 30 else [*rows[:12], None, *rows[-12:]]
    for seg in shown:
        if seg is None:
            table.add_row(*["…"] * (4 + len(spec.parameters)))
            continue
        name = (seg.trial or "extra") + (" ⇐" if seg.exploit else "")
        table.add_row(f"{seg.start}–{seg.end}", name, *[_fmt(seg.params.get(p)) for p in spec.parameters],
                      _fmt(seg.original_objective), _fmt(seg.objective))
    out.print(table)
    out.print("⇐ = the original copied another member's weights before this segment", highlight=False)
    diff = result.difference
    verdict = ""
    if result.faithful:
        verdict = " — identical" if diff == 0 else f" — differs by {diff:+.3g}"
    out.print(
        f"original {metric} {result.original_objective:.10g} after {result.original_steps} steps; "
        f"replay {metric} {result.objective:.10g} after {result.steps} steps{verdict} ({result.seconds:.1f}s)",
        highlight=False,
    )
    out.print(f"record: {result.location}" + (f"\ncheckpoint: {result.checkpoint}" if result.checkpoint else ""),
              highlight=False, soft_wrap=True)
