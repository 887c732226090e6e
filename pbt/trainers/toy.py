"""The toy problem of the original PBT paper (Jaderberg et al. 2017, section 4.1).

Maximise Q(θ) = 1.2 − (θ₀² + θ₁²) while training only sees the surrogate
Q̂(θ|h) = 1.2 − (h₀θ₀² + h₁θ₁²). Gradient ascent on Q̂ shrinks θᵢ by (1 − 2ηhᵢ) per step,
so a member whose h is small in one coordinate stalls there; PBT wins by copying θ from
better members and moving h. It runs in microseconds, which makes it the trainer for tests
and for the controller benchmarks; it still writes real checkpoint files.

Config (``trainer.config`` in the study file):
  ``lr`` (η, default 0.01), ``theta0`` (default [0.9, 1.0]),
  ``fail_above`` (test hook: raise in ``train`` when h0 exceeds this value),
  ``nan_above`` (test hook: report NaN when h0 exceeds this value),
  ``hang_above`` (test hook: block forever in ``train`` when h1 exceeds this value),
  ``sleep_per_step`` (seconds, to make trials long enough to kill in chaos tests),
  ``step_log`` (a file to which every step appends "pid lineage_step": how the recovery
  benchmark measures exactly how much work a killed worker lost).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pbt.trainers.base import HParams


def true_objective(theta: list[float]) -> float:
    return 1.2 - (theta[0] ** 2 + theta[1] ** 2)


class ToyTrainer:
    """Implements :class:`pbt.trainers.Trainer` with two floats of state."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        self.lr = float(config.get("lr", 0.01))
        self.theta0 = [float(x) for x in config.get("theta0", [0.9, 1.0])]
        self.fail_above = config.get("fail_above")
        self.nan_above = config.get("nan_above")
        self.hang_above = config.get("hang_above")
        self.sleep_per_step = float(config.get("sleep_per_step", 0.0))
        self.step_log = config.get("step_log")
        self.theta = list(self.theta0)
        self.h = [1.0, 1.0]
        self.step = 0

    def setup(self, hparams: HParams, *, seed: int = 0) -> None:
        self.h = [float(hparams["h0"]), float(hparams["h1"])]
        self.theta = list(self.theta0)
        self.step = 0

    def train(self, steps: int) -> dict[str, float]:
        if self.fail_above is not None and self.h[0] > float(self.fail_above):
            raise RuntimeError(f"toy trainer told to fail: h0={self.h[0]:.3f} > {self.fail_above}")
        if self.hang_above is not None and self.h[1] > float(self.hang_above):
            while True:  # a deadlocked data loader, a stuck collective: only a time limit ends it
                time.sleep(3600)
        log = open(self.step_log, "a", buffering=1) if self.step_log else None  # noqa: SIM115
        try:
            for _ in range(steps):
                # ∇θ Q̂ = −2 h∘θ; ascend it.
                self.theta = [t - self.lr * 2.0 * h * t for t, h in zip(self.theta, self.h)]
                self.step += 1
                if log:
                    log.write(f"{os.getpid()} {self.step}\n")
                if self.sleep_per_step:
                    time.sleep(self.sleep_per_step)
        finally:
            if log:
                log.close()
        return {"surrogate": 1.2 - sum(h * t * t for h, t in zip(self.h, self.theta))}

    def evaluate(self) -> dict[str, float]:
        q = true_objective(self.theta)
        if self.nan_above is not None and self.h[0] > float(self.nan_above):
            q = math.nan
        return {"q": q}

    def save(self, directory: Path) -> None:
        state = {"theta": self.theta, "step": self.step}
        (Path(directory) / "state.json").write_text(json.dumps(state))

    def load(self, directory: Path) -> None:
        state = json.loads((Path(directory) / "state.json").read_text())
        self.theta = [float(x) for x in state["theta"]]
        self.step = int(state["step"])


def train_toy(hparams: HParams, ctx: Any) -> None:
    """The same toy problem as a function trainer: ``trainer.path: pbt.trainers.toy:train_toy``.

    Same arithmetic in the same order and the same checkpoint file as :class:`ToyTrainer`, so a
    study gives identical trials with either (tests check it). Config: ``lr``, ``theta0`` and
    ``sleep_per_step``, as for the class.
    """
    lr = float(ctx.config.get("lr", 0.01))
    sleep = float(ctx.config.get("sleep_per_step", 0.0))
    h = [float(hparams["h0"]), float(hparams["h1"])]
    state = {"theta": [float(x) for x in ctx.config.get("theta0", [0.9, 1.0])], "step": 0}
    if ctx.checkpoint is not None:  # warm start or resume; h stays this trial's
        saved = json.loads((Path(ctx.checkpoint) / "state.json").read_text())
        state = {"theta": [float(x) for x in saved["theta"]], "step": int(saved["step"])}

    def evaluate() -> dict[str, float]:
        return {"q": true_objective(state["theta"])}

    def save(directory: Path) -> None:
        (directory / "state.json").write_text(json.dumps(state))

    for _ in ctx.steps(evaluate=evaluate, save=save):
        state["theta"] = [t - lr * 2.0 * hi * t for t, hi in zip(state["theta"], h)]
        state["step"] += 1
        if sleep:
            time.sleep(sleep)
