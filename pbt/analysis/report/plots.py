"""The report's figures, drawn from :class:`~pbt.analysis.report.data.ReportData` with Matplotlib's Agg canvas.

Figures are built with ``matplotlib.figure.Figure`` and an explicit ``FigureCanvasAgg`` rather
than ``pyplot``: no global figure registry, no backend negotiation, nothing that needs a display
(a GPU node or CI runner has none), and nothing leaks between reports in one process. Large
studies draw through ``LineCollection`` so thousands of trials cost one artist, not thousands.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence

import matplotlib as mpl
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pbt.analysis.report.data import PHASES, ReportData

DPI = 110
STOP_COLOR = "#c62828"  # trials stopped early by the policy
MAX_ROOTS = 16  # lineage roots named one by one in the objective plot's legend
_PHASE_COLORS = {
    "queue_wait": "#9e9e9e",
    "checkpoint_load": "#1f77b4",
    "train": "#2ca02c",
    "evaluate": "#ff7f0e",
    "checkpoint_save": "#9467bd",
}


def png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes on an Agg canvas."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def root_colors(data: ReportData) -> dict[str, tuple[float, float, float, float]]:
    """A colour per lineage root, in order of first appearance (colours repeat past 20 roots)."""
    order = list(dict.fromkeys(data.roots[s.trial] for s in data.series))
    cmap = mpl.colormaps["tab10" if len(order) <= 10 else "tab20"]
    return {root: cmap(i % cmap.N) for i, root in enumerate(order)}


def objective_figure(data: ReportData) -> Figure:
    """Objective vs lineage step: a line per trial from its parent's last point, coloured by root.

    Two panels: the objective itself, and its distance to the study's best on a log scale, where
    the late part of a study (members within a hair of each other) is still readable.
    """
    colors = root_colors(data)
    fig = Figure(figsize=(10, 8.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[1.15, 1])
    _draw_objective(top, data, colors, lambda v: v)
    top.set_ylabel(f"{data.metric} ({'higher' if data.mode == 'max' else 'lower'} is better)")
    top.set_title(f"{data.study}: {data.metric} of every trial, coloured by the root of its lineage", fontsize=10)
    # Distance to the best value any evaluation reached (running trials included, so it never
    # goes negative); that point itself (distance 0) has no place on a log axis and is left out.
    values = [v for s in data.series for v in s.values]
    ref = (max(values) if data.mode == "max" else min(values)) if values else None
    if ref is not None and any(v != ref for v in values):
        _draw_objective(bottom, data, colors, lambda v: abs(ref - v) if v != ref else math.nan)
        bottom.set_yscale("log")
        bottom.set_ylabel(f"|best {data.metric} − {data.metric}| (log)")
        bottom.set_title(f"distance to the best {data.metric} evaluated ({ref:.6g}): the end of the study, magnified",
                         fontsize=10)
    else:
        bottom.set_axis_off()
    bottom.set_xlabel("lineage step (steps the model has trained, across copies)")
    handles, title = _root_handles(data, colors)
    handles += [
        Line2D([], [], color="black", linewidth=2.2, label="best lineage"),
        Line2D([], [], marker="v", linestyle="", markerfacecolor="white", markeredgecolor="black",
               label="exploit: a member copied this point"),
    ]
    if any(s.stopped_at is not None for s in data.series):
        handles.append(Line2D([], [], marker="X", linestyle="", color=STOP_COLOR, label="stopped early by the policy"))
    if any(s.status not in ("completed", "stopped") for s in data.series):
        handles.append(Line2D([], [], color="grey", linestyle="--", label="running / failed (partial)"))
    # Beside the plot, not on it: with a population's worth of roots it would hide the curves.
    top.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title=title,
               title_fontsize=8, alignment="left")
    return fig


def _root_handles(data: ReportData, colors, limit: int = MAX_ROOTS) -> tuple[list[Line2D], str]:
    """A legend entry per lineage root, survivors first, each saying how far its lineage got.

    Past ``limit`` roots the rest share one entry; a study without population members (every
    trial its own root) gets none.
    """
    if data.row_label != "member" or not data.root_fates:
        return [], "trials"
    handles = []
    for fate in data.root_fates[:limit]:
        what = "survives" if fate.survives else f"died out at step {fate.last_step}"
        handles.append(Line2D([], [], color=colors[fate.root], label=f"{fate.root}: {what}"))
    rest = data.root_fates[limit:]
    if rest:
        handles.append(Line2D([], [], color="0.6", label=f"{len(rest)} more roots, died out by step "
                              f"{max(f.last_step for f in rest)}"))
    alive = sum(f.survives for f in data.root_fates)
    return handles, f"lineages by root ({alive} of {len(data.root_fates)} survive)"


def _draw_objective(ax, data: ReportData, colors, f) -> None:
    """Every trial's curve, the exploit marks and the best lineage, with ``f`` applied to values."""
    solid, solid_c, dashed, dashed_c = [], [], [], []
    for s in data.series:
        xs, ys = list(s.steps), [f(v) for v in s.values]
        if s.anchor is not None and xs:
            xs.insert(0, s.anchor[0])
            ys.insert(0, f(s.anchor[1]))
        if len(xs) >= 2:
            done = s.status in ("completed", "stopped")
            (solid if done else dashed).append(np.column_stack([xs, ys]))
            (solid_c if done else dashed_c).append(colors[s.root])
        elif len(xs) == 1:
            ax.plot(xs, ys, "o", ms=2.5, color=colors[s.root], alpha=0.8)
    ax.add_collection(LineCollection(solid, colors=solid_c, linewidths=1.0, alpha=0.75))
    if dashed:
        ax.add_collection(LineCollection(dashed, colors=dashed_c, linewidths=1.0, linestyles="--", alpha=0.9))
    ex = [(e.step, f(e.value)) for e in data.exploits if e.value is not None]
    if ex:
        ax.scatter(*zip(*ex), marker="v", s=16, facecolor="white", edgecolor="black", linewidth=0.6, zorder=3)
    stops = [(s.steps[-1], f(s.values[-1])) for s in data.series if s.stopped_at is not None and s.steps]
    if stops:  # the evaluation that stopped each trial early
        ax.scatter(*zip(*stops), marker="X", s=22, color=STOP_COLOR, linewidth=0, zorder=3)
    by_id = {s.trial: s for s in data.series}
    bx = [x for t in data.best_lineage for x in by_id[t].steps]
    by = [f(v) for t in data.best_lineage for v in by_id[t].values]
    if bx:
        ax.plot(bx, by, color="black", linewidth=2.2, zorder=4)
    ax.autoscale_view()
    ax.grid(alpha=0.3)


def front_figure(data: ReportData) -> Figure:
    """Two objectives: every completed trial as a point, the Pareto front joined and marked."""
    (mx, modex), (my, modey) = data.objectives[:2]
    fig = Figure(figsize=(7.5, 5.0), dpi=DPI)
    ax = fig.subplots()
    others = [p for p in data.points if not p.on_front]
    front = sorted(data.front, key=lambda p: p.values[0])
    if others:
        ax.scatter([p.values[0] for p in others], [p.values[1] for p in others], s=14, color="0.65",
                   label="completed trials", zorder=2)
    if front:
        xs, ys = [p.values[0] for p in front], [p.values[1] for p in front]
        ax.plot(xs, ys, color="tab:red", lw=1.2, drawstyle="steps-post" if modey == "min" else "steps-pre",
                zorder=3)
        ax.scatter(xs, ys, s=36, color="tab:red", edgecolor="black", lw=0.6, label="Pareto front", zorder=4)
        for p in front[:15]:
            ax.annotate(p.trial, (p.values[0], p.values[1]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(f"{mx} ({modex}imise)")
    ax.set_ylabel(f"{my} ({modey}imise)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def schedule_figure(data: ReportData) -> Figure:
    """Each hyperparameter: every trial's value (thin, by root) and the best lineage's (black)."""
    colors = root_colors(data)
    n = max(1, len(data.schedules))
    fig = Figure(figsize=(10, 2.6 * n + 0.6), layout="constrained")
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    for ax, sched in zip(axes, data.schedules):
        cats = sched.categories

        def y(v, cats=cats):
            return float(cats.index(v)) if cats else float(v)

        pop = [np.array([[s.start, y(s.value)], [s.end, y(s.value)]]) for s in sched.population]
        ax.add_collection(
            LineCollection(pop, colors=[colors[s.root] for s in sched.population], linewidths=1.2, alpha=0.45)
        )
        if sched.best:
            xs = [sched.best[0].start] + [s.end for s in sched.best]
            ys = [y(s.value) for s in sched.best]
            ax.stairs(ys, xs, color="black", linewidth=2.0, baseline=None, label="best lineage")
            jumps = [(s.start, y(s.value)) for s in sched.best if s.exploit]
            if jumps:
                ax.scatter(*zip(*jumps), marker="v", s=18, facecolor="white", edgecolor="black", zorder=3)
        ax.autoscale_view()
        if sched.log:
            ax.set_yscale("log")
        if cats:
            ax.set_yticks(range(len(cats)), cats)
        ax.set_ylabel(sched.name)
        ax.grid(alpha=0.3)
        ax.set_title(f"{sched.name}: every trial (thin, coloured by root) and the best lineage's schedule "
                     "(black; triangles: it copied another member)", fontsize=9, loc="left")
    axes[-1].set_xlabel("lineage step")
    return fig


def tree_figure(data: ReportData) -> Figure:
    """Who copied whom, when: a bar per trial on its member's row; arrows for exploits."""
    colors = root_colors(data)
    rows = sorted({n.row for n in data.nodes})
    index = {r: i for i, r in enumerate(rows)}
    height = min(14.0, max(3.0, 0.32 * len(rows) + 1.4))
    fig = Figure(figsize=(10, height), layout="constrained")
    ax = fig.add_subplot()
    by_id = {n.trial: n for n in data.nodes}
    done, partial = [], []
    for n in data.nodes:
        seg = np.array([[n.start, index[n.row]], [max(n.end, n.start + 0.3), index[n.row]]])
        (done if n.status == "completed" else partial).append((seg, colors[n.root], n))
    ax.add_collection(LineCollection([s for s, _, _ in done], colors=[c for _, c, _ in done], linewidths=5))
    if partial:
        ax.add_collection(
            LineCollection([s for s, _, _ in partial], colors=[c for _, c, _ in partial], linewidths=5,
                           linestyles=(0, (1.5, 1)), alpha=0.9)
        )
    failed = [n for _, _, n in partial if n.status == "failed"]
    if failed:
        ax.scatter([n.end for n in failed], [index[n.row] for n in failed], marker="x", color="red", s=30, zorder=4)
    early = [n for _, _, n in partial if n.stop_reason is not None]
    if early:  # stopped early: the bar ends at the evaluation that stopped it
        ax.scatter([n.end for n in early], [index[n.row] for n in early], marker="X", color=STOP_COLOR, s=34,
                   linewidth=0, zorder=4)
    best = [by_id[t] for t in data.best_lineage]
    if best:  # the best lineage: its bars and its jumps between members, in black
        path = [np.array([[n.start, index[n.row]], [n.end, index[n.row]]]) for n in best]
        path += [np.array([[p.end, index[p.row]], [c.start, index[c.row]]]) for p, c in itertools.pairwise(best)
                 if p.row != c.row]
        ax.add_collection(LineCollection(path, colors="black", linewidths=2.0, zorder=5))
    arrows = []
    for e in data.edges:
        p, c = by_id.get(e.parent), by_id.get(e.child)
        if p is None or c is None or p.row == c.row:
            continue  # a continuation on the same row needs no arrow
        arrows.append(np.array([[p.end, index[p.row]], [c.start, index[c.row]]]))
    if arrows:
        ax.add_collection(LineCollection(arrows, colors="0.25", linewidths=0.7, alpha=0.6, zorder=2))
        heads = [(a[1, 0], a[1, 1], 1 if a[1, 1] > a[0, 1] else -1) for a in arrows]
        ax.scatter([h[0] for h in heads], [h[1] - 0.18 * h[2] for h in heads], c="0.25", s=9,
                   marker="o", zorder=2)
    ax.autoscale_view()
    ax.set_ylim(-0.8, len(rows) - 0.2)
    if len(rows) <= 40:
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("lineage step")
    ax.set_ylabel(data.row_label)
    ax.set_title("lineage tree: a bar per trial on its member's row, coloured by root; "
                 "grey lines: exploits (from the copied trial, dot at the copier)", fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)
    handles = [
        Line2D([], [], color="black", linewidth=2.0, label="best lineage"),
        Line2D([], [], color="0.25", linewidth=0.7, marker="o", markersize=3, label="exploit (copy)"),
    ]
    if partial:
        handles.append(
            Line2D([], [], color="grey", linewidth=4, linestyle=(0, (1.5, 1)), label="running / not completed")
        )
    if failed:
        handles.append(Line2D([], [], color="red", marker="x", linestyle="", label="failed"))
    if early:
        handles.append(Line2D([], [], color=STOP_COLOR, marker="X", linestyle="", label="stopped early by the policy"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig


def times_figure(data: ReportData) -> Figure:
    """Where the time went: study totals per phase, and each trial's phases stacked."""
    fig = Figure(figsize=(10, 4.5), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1, 2.2])
    total = sum(data.time_totals.values()) or 1.0
    names = list(PHASES)
    vals = [data.time_totals[p] for p in names]
    bars = left.barh(names, vals, color=[_PHASE_COLORS[p] for p in names])
    for bar, v in zip(bars, vals):
        left.annotate(f" {v:.3g}s ({100 * v / total:.1f}%)", (bar.get_width(), bar.get_y() + bar.get_height() / 2),
                      va="center", fontsize=8)
    left.invert_yaxis()
    left.set_xlim(0, max([*vals, 1e-9]) * 1.6)
    left.set_xlabel("seconds, all trials")
    left.set_title("total per phase (queue wait: published → started)", fontsize=9)
    numbers, stacks = _binned_times(data, names)
    bottom = np.zeros(len(numbers))
    width = (numbers[1] - numbers[0]) if len(numbers) > 1 else 1.0
    # Worker phases stacked; the queue wait (not worker time, and often larger) on its own axis.
    for p, col in zip(names, stacks):
        if p == "queue_wait":
            continue
        right.bar(numbers, col, bottom=bottom, width=width, color=_PHASE_COLORS[p], label=p, align="edge",
                  linewidth=0)
        bottom += col
    wait = right.twinx()
    wait.plot(numbers + width / 2, stacks[names.index("queue_wait")], color="0.35", linewidth=0.9,
              label="queue_wait (right axis)")
    wait.set_ylabel("queue wait, s", color="0.35")
    wait.set_ylim(bottom=0)
    right.set_xlabel("trial number")
    right.set_ylabel("worker seconds per trial")
    right.set_title("per trial, summed over attempts" + (" (averaged per bin)" if width > 1 else ""), fontsize=9)
    h1, l1 = right.get_legend_handles_labels()
    h2, l2 = wait.get_legend_handles_labels()
    # Below the panels, where no bar or line can run into it.
    fig.legend(h1 + h2, l1 + l2, fontsize=8, ncols=len(l1) + len(l2), loc="outside lower center")
    right.set_ylim(0, max(bottom.max(initial=0) * 1.05, 1e-6))
    right.grid(axis="y", alpha=0.3)
    return fig


def _binned_times(data: ReportData, names: Sequence[str], max_bars: int = 300) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-trial phase seconds, averaged over bins of consecutive trials past ``max_bars`` trials."""
    matrix = np.array([[t.seconds[p] for p in names] for t in data.times]) if data.times else np.zeros((0, len(names)))
    numbers = np.array([t.number for t in data.times], dtype=float)
    if len(numbers) > max_bars:
        size = int(np.ceil(len(numbers) / max_bars))
        starts = np.arange(0, len(numbers), size)
        counts = np.diff(np.append(starts, len(numbers)))
        matrix = np.add.reduceat(matrix, starts, axis=0) / counts[:, None]
        numbers = numbers[starts]
    return numbers, [matrix[:, i] for i in range(len(names))]
