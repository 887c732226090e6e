"""``pbt run``'s progress while a study runs: a live bar on a terminal, plain lines in a log.

Both are controller observers (called with a :class:`~pbt.controller.ledger.Snapshot` after each
tick) and print to stderr, so stdout keeps only the result. Which one a run gets depends on
whether stderr is a terminal: piped into a file or a CI log, a bar would print once, so lines
come instead, more sparsely as the run grows longer.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pbt.analysis.budget import BudgetUse
from pbt.cli.live import duration


def describe(spec, snap) -> tuple[str, int, int | None, str]:
    """``(unit, done, total, "trials 12 done, 4 running | best q 1.19 (t000011)")`` of a snapshot."""
    completed = snap.by_status.get("completed", 0)
    unit, done, total = BudgetUse(snap.steps_done, completed, snap.budget_steps, snap.budget_trials).measure
    best = "—" if snap.best is None else f"{snap.best.objective:.6g} ({snap.best.id})"
    ended = sum(snap.by_status.get(s, 0) for s in ("completed", "failed", "stopped"))
    failed = snap.by_status.get("failed", 0)
    info = f"trials {ended} done, {snap.in_flight} running" + (f", {failed} failed" if failed else "")
    return unit, done, total, f"{info} | best {spec.objective.metric} {best}"


class BarView:
    """A rich progress bar on a terminal."""

    def __init__(self, spec, console: Console) -> None:
        self.spec = spec
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        unit, _, total = BudgetUse.of(spec.budget).measure
        self.task = self.progress.add_task(unit, total=total, info="")
        self.progress.start()

    def update(self, snap) -> None:
        _, done, _, info = describe(self.spec, snap)
        self.progress.update(self.task, completed=done, info=info)

    def stop(self) -> None:
        self.progress.stop()


class LineView:
    """A plain line every ``interval(elapsed)`` seconds: every 10 s at first, then a tenth of the
    time elapsed, at most every 5 minutes (a 3-minute run prints about a dozen lines, a day-long
    one a line every 5 minutes)."""

    def __init__(self, spec, console: Console, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self.console = console
        self.clock = clock
        self.started = clock()
        self.last = self.started

    @staticmethod
    def interval(elapsed: float) -> float:
        return min(300.0, max(10.0, elapsed / 10))

    def update(self, snap) -> None:
        now = self.clock()
        if now - self.last < self.interval(now - self.started):
            return
        self.last = now
        self.console.print(self.line(snap, now - self.started), highlight=False, markup=False, soft_wrap=True)

    def line(self, snap, elapsed: float) -> str:
        unit, done, total, info = describe(self.spec, snap)
        budget = f"{done:,}/{total:,} {unit} ({100 * done / total:.0f}%)" if total else f"{done:,} {unit}"
        return f"[{duration(elapsed)}] {budget} | {info}"

    def stop(self) -> None:
        pass


def progress_view(spec, console: Console, *, quiet: bool) -> BarView | LineView | None:
    """The view for this console: a bar on a terminal, lines otherwise, nothing when quiet."""
    if quiet:
        return None
    return BarView(spec, console) if console.is_terminal else LineView(spec, console)
