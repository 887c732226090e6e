"""The paper's figures for benchmarks/wavenet_compare.py, drawn from measured runs (matplotlib, Agg).

Kept apart from the runner so the runner reads as the experiment and this as its presentation.
Every plotted number comes from the study records or timings handed in; nothing is typed here.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: benchmarks run on headless machines
import matplotlib.pyplot as plt
import numpy as np

COLORS = {"fixed": "tab:gray", "random": "tab:blue", "bayes": "tab:purple", "pbt5": "tab:orange",
          "pbt20": "tab:red", "pbt4": "tab:brown", "pb2-4": "tab:green", "pbt8": "tab:pink", "pb2-8": "tab:olive",
          "pbt8-es": "tab:cyan"}
LABELS = {"fixed": "fixed lr (best grid point)", "random": "random search", "bayes": "Bayesian (GP)",
          "pbt5": "PBT, population 5", "pbt20": "PBT, population 20", "pbt4": "PBT, population 4",
          "pb2-4": "PB2, population 4", "pbt8": "PBT, population 8", "pb2-8": "PB2, population 8",
          "pbt8-es": "PBT-8, early stopping"}
PHASES = ("queue_wait", "checkpoint_load", "train", "evaluate", "checkpoint_save", "controller_cpu", "other_worker")


def plot_all(out: Path, runs: dict[str, list[dict[str, Any]]], continued: dict[str, Any], fig9: dict[str, Any],
             args: Any) -> dict[str, str]:
    files = {
        "fig6": fig6(out / "fig6_objective_vs_steps.png", runs, args.budget),
        "fig7": fig7(out / "fig7_lr_schedules.png", runs),
        "fig8": fig8(out / "fig8_time_breakdown.png", runs),
        "fig9": fig9_plot(out / "fig9_time_per_step.png", fig9),
    }
    if continued:
        files["fig5"] = fig5(out / "fig5_continued_training.png", continued)
    return {k: str(v) for k, v in files.items()}


def _step_curve(points: list[tuple[int, float]], grid: np.ndarray) -> np.ndarray:
    """A best-so-far curve sampled on ``grid`` (NaN before its first finite value)."""
    xs = np.array([p[0] for p in points], dtype=float)
    ys = np.array([p[1] for p in points], dtype=float)
    idx = np.searchsorted(xs, grid, side="right") - 1
    out = np.where(idx >= 0, ys[np.clip(idx, 0, None)], np.nan)
    return np.where(np.isfinite(out), out, np.nan)


def _envelope(reports: list[tuple[int, float]]) -> list[tuple[int, float]]:
    best, out = math.inf, []
    for step, value in sorted(reports):
        if math.isfinite(value) and value < best:
            best = value
        out.append((step, best))
    return out


def fig6(path: Path, runs: dict[str, list[dict[str, Any]]], budget: int) -> Path:
    """Best validation bits/sample vs total training steps spent (left) and vs the model's own steps (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    grid = np.linspace(0, budget, 200)
    for method, rs in runs.items():
        for ax, key in ((left, "progress"), (right, "reports")):
            curves = np.array([_step_curve(r[key] if key == "progress" else _envelope(r[key]), grid) for r in rs])
            with warnings.catch_warnings():  # before a method's first result a column is all NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, std = np.nanmean(curves, axis=0), np.nanstd(curves, axis=0)
            ax.plot(grid, mean, color=COLORS[method], label=LABELS[method])
            ax.fill_between(grid, mean - std, mean + std, color=COLORS[method], alpha=0.15)
    left.set(xlabel="total training steps (all trials)", ylabel="best validation bits/sample",
             title="Equal total budget (Figure 6)")
    right.set(xlabel="training steps of the model's lineage", ylabel="best validation bits/sample",
              title="At a given iteration of the model")
    right.set_xlim(0, max(max(s for r in rs for s, _ in r["reports"]) for rs in runs.values()))
    for ax in (left, right):
        ax.grid(alpha=0.3)
        finite = [v for rs in runs.values() for r in rs for _, v in r["progress"] if math.isfinite(v)]
        if finite:
            lo, hi = min(finite), np.percentile(finite, 90)
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi)
    left.legend()
    return _save(fig, path)


def fig7(path: Path, runs: dict[str, list[dict[str, Any]]]) -> Path:
    """The learning-rate schedule behind each seed's best model."""
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3.8), sharey=True, squeeze=False)
    for ax, (method, rs) in zip(axes[0], runs.items()):
        for r in rs:
            xs, ys = [], []
            for start, end, lr in r["schedule"]:
                xs += [start, end]
                ys += [lr, lr]
            ax.plot(xs, ys, color=COLORS[method], alpha=0.8, label=f"seed {r['seed']}")
        ax.set(title=LABELS[method], xlabel="model steps", yscale="log")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("learning rate")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Learning-rate schedules of the best models (Figure 7)")
    return _save(fig, path)


def fig8(path: Path, runs: dict[str, list[dict[str, Any]]]) -> Path:
    """Where the time goes, per method: the trial phases, the controller, and the rest."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    methods = list(runs)
    bottom = np.zeros(len(methods))
    for phase in PHASES:
        values = []
        for m in methods:
            rs = runs[m]
            if phase == "controller_cpu":
                values.append(np.mean([r["controller_cpu_s"] for r in rs]))
            elif phase == "other_worker":
                values.append(np.mean([r["other_worker_s"] for r in rs]))
            else:
                values.append(np.mean([r["phases_s"][phase] for r in rs]))
        ax.bar(methods, values, bottom=bottom, label=phase.replace("_", " "))
        bottom += np.array(values)
    ax.set(ylabel="seconds per study (worker-seconds; controller: CPU s)",
           title="Time breakdown per method (Figure 8)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig9_plot(path: Path, fig9: dict[str, Any]) -> Path:
    """Seconds per training step against steps per trial, with the bare loop as the floor."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    series: dict[str, list[tuple[int, float, float]]] = {}
    for key, run in fig9.get("runs", {}).items():
        executor, policy, steps = key.split("/")
        evaluate = run["per_step"]["evaluate"]
        series.setdefault(f"{executor} / {policy}", []).append((int(steps), run["s_per_step"], evaluate))
    for label, points in sorted(series.items()):
        points.sort()
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1] for p in points], marker="o", label=f"{label}")
        ax.plot(xs, [p[1] - p[2] for p in points], marker="x", linestyle="--", label=f"{label}, excl. evaluation")
    ax.axhline(fig9["bare"]["s_per_step"], color="black", linestyle=":", label="bare PyTorch loop")
    ax.set(xscale="log", xlabel="steps per trial", ylabel="seconds per training step",
           title="Time per step vs trial length (Figure 9)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig5(path: Path, continued: dict[str, Any]) -> Path:
    """Each method's best checkpoint trained on alone at its final learning rate."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, c in continued.items():
        xs, ys = zip(*c["curve"])
        ax.plot(xs, ys, color=COLORS[method], label=f"{LABELS[method]} (lr {c['lr']:.1e})")
    ax.set(xlabel="model steps", ylabel="validation bits/sample",
           title="Continued training of each method's best model, seed 0 (Figure 5)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
