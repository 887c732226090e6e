"""``pbt report``: what PBT did in a study, as one HTML page plus its PNGs and data.

Three steps, one module each: :mod:`pbt.analysis.report.data` turns records into the numbers every
figure shows, :mod:`pbt.analysis.report.plots` draws them, :mod:`pbt.analysis.report.page` lays out the page.
Reading goes through the same :func:`~pbt.analysis.study.open_study` as ``pbt status``,
read-only, so a report of a running study is safe and simply partial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pbt.analysis.report.data import ReportData, prepare
from pbt.analysis.study import open_study
from pbt.spec import StudySpec
from pbt.trial import Trial

FIGURES = ("objective.png", "schedules.png", "lineage.png", "times.png")
FRONT = "front.png"  # drawn for studies with two (or more: the first two) objectives


@dataclass(frozen=True)
class Report:
    data: ReportData
    directory: Path

    @property
    def html(self) -> Path:
        return self.directory / "index.html"

    @property
    def files(self) -> list[Path]:
        figures = [*FIGURES, FRONT] if len(self.data.objectives) > 1 else list(FIGURES)
        return [self.html, self.directory / "report.json", *(self.directory / f for f in figures)]


def write_report(
    spec: StudySpec, trials: list[Trial], out: Path, state: dict | None = None, storage: str | None = None
) -> Report:
    """Prepare, draw and write the report into ``out`` (created; existing files replaced)."""
    from pbt.analysis.report import page, plots

    data = prepare(spec, trials, state, storage)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    builders = {
        "objective.png": plots.objective_figure,
        "schedules.png": plots.schedule_figure,
        "lineage.png": plots.tree_figure,
        "times.png": plots.times_figure,
    }
    if len(data.objectives) > 1:
        builders[FRONT] = plots.front_figure
    figures = {name: plots.png(build(data)) for name, build in builders.items()}
    for name, body in figures.items():
        (out / name).write_bytes(body)
    (out / "report.json").write_text(json.dumps(data.to_json(), indent=1))
    report = Report(data, out)
    report.html.write_text(page.render(data, figures), encoding="utf-8")
    return report


def report_study(study: str, storage: str, out: Path) -> Report:
    """Read study ``study`` from ``storage`` and write its report into ``out``."""
    stored = open_study(storage, study)
    return write_report(stored.spec, stored.trials, out, stored.state, storage)
