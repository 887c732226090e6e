"""Small builders shared by the tests: study specs and simulated trial histories."""

from __future__ import annotations

import copy
import math
from typing import Any

from pbt.spec import StudySpec
from pbt.study_file import parse_spec
from pbt.testing.executors import TOY as _TOY
from pbt.trial import Suggestion, Trial, TrialStatus

TOY: dict[str, Any] = _TOY  # the toy study of the executor contract: one home for it


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def toy_data(**over: Any) -> dict[str, Any]:
    return merge(TOY, over)


def toy_spec(**over: Any) -> StudySpec:
    return parse_spec(toy_data(**over))


def theta_after(h: tuple[float, float], steps: int, theta=(0.9, 1.0), lr: float = 0.01) -> tuple[float, float]:
    return tuple(t * (1 - 2 * lr * hi) ** steps for t, hi in zip(theta, h))  # type: ignore[return-value]


class Simulator:
    """Runs a policy against the toy objective in memory, the way the controller would.

    Trials run one "round" at a time: every suggestion of a round completes before the next
    round is asked for, with optional failures, so policy tests need no executor.
    """

    def __init__(self, policy, fail: set[int] | None = None) -> None:
        self.policy = policy
        self.trials: list[Trial] = []
        self.theta: dict[str, tuple[float, float]] = {}
        self.fail = fail or set()

    def create(self, s: Suggestion) -> Trial:
        number = len(self.trials)
        parent = next((t for t in self.trials if t.id == s.parent), None)
        trial = Trial(
            id=f"t{number:06d}", study="toy", number=number, params=s.params, parent=s.parent,
            parent_checkpoint=parent.checkpoint if parent else None, member=s.member, generation=s.generation,
            steps=s.steps, start_lineage_steps=parent.lineage_steps if parent else 0, status=TrialStatus.RUNNING,
            metadata=dict(s.metadata),
        )
        self.trials.append(trial)
        return trial

    def finish(self, trial: Trial) -> Trial:
        if trial.number in self.fail:
            done = trial.model_copy(update={"status": TrialStatus.FAILED, "steps_done": 1, "error": "boom"})
        else:
            start = self.theta[trial.parent] if trial.parent else (0.9, 1.0)
            theta = theta_after((trial.params["h0"], trial.params["h1"]), trial.steps, start)
            self.theta[trial.id] = theta
            q = 1.2 - (theta[0] ** 2 + theta[1] ** 2)
            done = trial.model_copy(update={
                "status": TrialStatus.COMPLETED, "steps_done": trial.steps, "objective": q,
                "checkpoint": f"toy/checkpoints/{trial.id}/step-{trial.steps:09d}",
            })
        self.trials[trial.number] = done
        return done

    def run(self, k: int, rounds: int = 1000) -> list[Trial]:
        for _ in range(rounds):
            new = [self.create(s) for s in self.policy.suggest(self.trials, k)]
            if not new:
                break
            for trial in new:
                self.finish(trial)
        return self.trials


def best_q(trials: list[Trial]) -> float:
    return max((t.objective for t in trials if t.objective is not None and math.isfinite(t.objective)), default=-1)
