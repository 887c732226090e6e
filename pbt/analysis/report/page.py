"""The report's HTML page: standard library only, every value escaped.

Figures are embedded as ``data:`` URIs so the page is one file that survives being mailed,
attached to an issue or copied out of a bucket on its own; the same PNGs are also written next
to it for slides and papers. Every string that comes from a study (names, parameter values,
trial ids) passes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from html import escape

from pbt.analysis.report.data import PHASES, ReportData
from pbt.space import Value

_CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #222; }
h1 { margin-bottom: .2em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
.summary { display: flex; flex-wrap: wrap; gap: .5em 2em; margin: .5em 0 1em; }
.summary div b { display: block; font-size: 12px; color: #666; font-weight: normal; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .4em .8em; }
.muted { color: #777; font-size: 12px; }
"""


def fmt(v: Value | None) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], left: Sequence[int] = ()) -> str:
    """An HTML table; cells are escaped here, so callers pass raw strings."""
    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="l"' if i in left else ""
        return f"<{tag}{cls}>{escape(text)}</{tag}>"

    out = ["<table>", "<tr>" + "".join(cell("th", i, h) for i, h in enumerate(head)) + "</tr>"]
    out += ["<tr>" + "".join(cell("td", i, c) for i, c in enumerate(r)) + "</tr>" for r in rows]
    out.append("</table>")
    return "\n".join(out)


def _figure(name: str, png: bytes, alt: str, caption: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    return (
        f'<figure><img src="{uri}" alt="{escape(alt)}">'
        f'<figcaption class="muted">{escape(caption)} (also <a href="{escape(name)}">{escape(name)}</a>)'
        "</figcaption></figure>"
    )


def _front_section(data: ReportData, figures: Mapping[str, bytes]) -> list[str]:
    """Several objectives: the front plot (first two objectives) and a table of the front."""
    (mx, _), (my, _) = data.objectives[:2]
    out = ["<h2>Pareto front</h2>"]
    if "front.png" in figures:
        out.append(_figure(
            "front.png", figures["front.png"], f"{my} against {mx} for every completed trial",
            f"Each point is a completed trial; red: the {len(data.front)} trial(s) no other completed trial beats "
            "in every objective. Replay any of them with pbt replay STUDY --trial ID.",
        ))
    metrics = [m for m, _ in data.objectives]
    rows = [(p.trial, *[fmt(v) for v in p.values]) for p in data.front]
    out.append(_table(["trial", *metrics], rows, left=(0,)) if rows else "<p>No trial has completed yet.</p>")
    return out


def render(data: ReportData, figures: Mapping[str, bytes]) -> str:
    """The whole page for ``data``; ``figures`` maps PNG file names to their bytes."""
    when = dt.datetime.fromtimestamp(data.generated_at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    counts = ", ".join(f"{v} {k}" for k, v in data.counts.items()) or "none yet"
    best = f"{fmt(data.best_objective)} ({data.best})" if data.best else "none yet"
    summary = [
        ("state", data.state if data.ended is None else f"{data.state} — {data.ended}"),
        ("algorithm", data.algorithm),
        ("objective", ", ".join(f"{m} ({mode})" for m, mode in data.objectives) or f"{data.metric} ({data.mode})"),
        ("trials", f"{data.trials}: {counts}"),
        ("budget", "; ".join(data.budget.parts(trials_word="trials completed"))),
        ("best", best),
        ("best lineage", f"{len(data.best_lineage)} trials, {len(data.exploits)} exploits in the study"),
    ]
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>pbt report: {escape(data.study)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Study {escape(data.study)}</h1>",
        f'<p class="muted">generated {escape(when)} by <code>pbt report</code></p>',
        '<div class="summary">'
        + "".join(f"<div><b>{escape(k)}</b>{escape(v)}</div>" for k, v in summary)
        + "</div>",
    ]
    parts += [f'<p class="note">{escape(n)}</p>' for n in data.notes]

    parts.append("<h2>Objective</h2>")
    parts.append(_figure(
        "objective.png", figures["objective.png"], f"{data.metric} against lineage step for every trial",
        "Each line is one trial, starting at its parent's last evaluation (where its weights came from). "
        "Colour = the generation-0 trial the lineage descends from; triangles mark exploits; black = best lineage; "
        "✕ = a trial stopped early by the policy, at the evaluation that stopped it.",
    ))

    if len(data.objectives) > 1:
        parts += _front_section(data, figures)

    parts.append("<h2>Hyperparameter schedules</h2>")
    parts.append(_figure(
        "schedules.png", figures["schedules.png"], "hyperparameter values over lineage steps",
        "Thin lines: the value each trial trained with, over the steps it trained. Black: the schedule the best "
        "lineage followed (what pbt replay re-runs); triangles: where it copied another member's weights.",
    ))
    parts.append("<h3>Schedule of the best lineage</h3>")
    if data.best_runs:
        rows = [
            (
                f"{r.start}–{r.end}",
                r.first_trial if r.trials == 1 else f"{r.first_trial} … {r.last_trial} ({r.trials})",
                "copied" if r.exploit else "",
                *[fmt(r.params.get(p)) for p in data.parameters],
            )
            for r in data.best_runs
        ]
        parts.append(_table(["lineage steps", "trials", "exploit", *data.parameters], rows, left=(1, 2)))
        parts.append('<p class="muted">Consecutive trials with the same hyperparameters are merged.</p>')
    else:
        parts.append("<p>No trial has completed yet.</p>")

    parts.append("<h2>Lineage tree</h2>")
    parts.append(_figure(
        "lineage.png", figures["lineage.png"], "lineage tree of the population",
        f"One row per {data.row_label}; {len(data.edges)} parent links, "
        f"{sum(e.exploit for e in data.edges)} of them exploits.",
    ))

    parts.append("<h2>Where the time went</h2>")
    parts.append(_figure(
        "times.png", figures["times.png"], "time per trial phase",
        "Seconds per phase as the workers measured them (queue wait from publication to start).",
    ))
    if data.time_use is not None:
        parts += [f"<p>{escape(line)}</p>" for line in data.time_use.explain()]
    total = sum(data.time_totals.values()) or 1.0
    n = max(1, len(data.times))
    parts.append(_table(
        ["phase", "total s", "share", "mean s per trial"],
        [(p, f"{data.time_totals[p]:.4g}", f"{100 * data.time_totals[p] / total:.1f}%",
          f"{data.time_totals[p] / n:.4g}") for p in PHASES],
        left=(0,),
    ))

    parts.append(f"<h2>Top trials by {escape(data.metric)}</h2>")
    if data.top:
        parts.append(_table(
            ["rank", "trial", data.metric, "member", "generation", "lineage steps", "parent", *data.parameters],
            [
                (str(r.rank), r.trial, fmt(r.objective), fmt(r.member), str(r.generation), str(r.lineage_steps),
                 r.parent or "—", *[fmt(r.params.get(p)) for p in data.parameters])
                for r in data.top
            ],
            left=(1, 6),
        ))
    else:
        parts.append("<p>No trial has completed yet.</p>")
    parts.append(
        '<p class="muted">Data behind the figures: <a href="report.json">report.json</a>. '
        f"Replay the best schedule: <code>pbt replay {escape(data.study)} --storage {escape(data.storage or '…')}"
        "</code></p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
