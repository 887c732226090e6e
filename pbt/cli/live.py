"""``pbt status``'s terminal view: one renderable, printed once or refreshed by ``--watch``."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from pbt.analysis.status import Overview
from pbt.study_state import StudyState

_STATE_STYLE = {
    StudyState.FINISHED: "green",
    StudyState.PAUSED: "yellow",
    StudyState.PAUSING: "yellow",
    StudyState.RUNNING: "cyan",
    StudyState.IDLE: "dim",
}


def duration(seconds: float) -> str:
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def render(ov: Overview) -> RenderableType:
    """The overview as a rich renderable: header, budget bar, trials, best, workers."""
    head = Text.assemble(
        ("study ", ""), (ov.study, "bold"), (f" ({ov.algorithm}) — ", ""),
        (ov.state.value, _STATE_STYLE[ov.state]),
    )
    lines: list[RenderableType] = [head]
    if ov.ending is not None:
        style = {"succeeded": "green", "failed": "red"}.get(ov.ending.outcome.value, "yellow")
        lines.append(Text.assemble(("ended ", ""), (ov.ending.summary(), style)))
    frac = ov.budget.fraction
    budget = ov.budget.parts()
    if frac is not None:
        budget.append(f"{100 * frac:.0f}%")
    if ov.steps_per_second is not None:
        budget.append(f"{ov.steps_per_second:.3g} steps/s")
    if ov.eta_seconds is not None:
        budget.append(f"ETA {duration(ov.eta_seconds)}")
    bar = Table.grid(padding=(0, 1))
    bar.add_row(ProgressBar(total=1.0, completed=frac or 0.0, width=30), Text(" · ".join(budget)))
    lines.append(bar)
    counts = ", ".join(f"{v} {k}" for k, v in ov.counts.items()) or "none yet"
    lines.append(Text(f"trials: {ov.trials} ({counts})"))
    if ov.best is not None:
        b = ov.best
        lines.append(Text.assemble(
            (f"best {ov.metric} ", ""), (f"{b.objective:.6g}", "bold green"),
            (f"  {b.id}, member {b.member}, generation {b.generation}, {b.lineage_steps} lineage steps"
             f"  [{_params(b.params)}]", ""),
        ))
    else:
        lines.append(Text(f"best {ov.metric}: none yet"))
    if ov.front:
        lines.append(_front(ov))
    workers = Table(title=f"workers: {len(ov.busy)} busy, {len(ov.idle)} idle", title_justify="left", box=None,
                    padding=(0, 2), show_edge=False)
    for col in ("worker", "state", "trial", "step", "hyperparameters"):
        workers.add_column(col)
    for name, t in ov.busy.items():
        workers.add_row(name, Text("busy", "cyan"), t.id, f"{t.steps_done}/{t.steps}", _params(t.params))
    for name in ov.idle:
        workers.add_row(name, Text("idle", "dim"), "", "", "")
    if ov.busy or ov.idle:
        lines.append(workers)
    else:
        lines.append(Text("workers: none seen in the last 10 minutes", "dim"))
    return Group(*lines)


def _front(ov: Overview) -> RenderableType:
    """The Pareto front, one row per trial, each objective's value."""
    table = Table(title=f"Pareto front: {len(ov.front)} trial(s) no other beats in every objective",
                  title_justify="left", box=None, padding=(0, 2), show_edge=False)
    table.add_column("trial")
    for metric, mode in ov.objectives:
        table.add_column(f"{metric} ({mode})", justify="right")
    table.add_column("hyperparameters")
    shown = ov.front if len(ov.front) <= 12 else ov.front[:12]
    for t in shown:
        last = t.metrics[-1].values if t.metrics else {}
        cells = [f"{last[m]:.6g}" if m in last else "—" for m, _ in ov.objectives]
        table.add_row(t.id, *cells, _params(t.params))
    if len(ov.front) > len(shown):
        table.add_row(f"… {len(ov.front) - len(shown)} more", *["" for _ in ov.objectives], "")
    return table


def watch(load: Callable[[], Overview], interval: float, console) -> Overview:
    """Refresh until the study is finished or paused (or Ctrl-C); return the last overview."""
    ov = load()
    with Live(render(ov), console=console, refresh_per_second=4, transient=False) as live:
        try:
            while not ov.state.settled:
                time.sleep(interval)
                ov = load()
                live.update(render(ov))
        except KeyboardInterrupt:
            pass
    return ov
