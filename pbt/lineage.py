"""Reading a study back: best trial, lineages and hyperparameter schedules.

Shared by ``pbt status``, ``pbt report``, ``pbt replay`` and the controller so they agree on
what "better", "best" and "schedule" mean. Pure functions over trial records.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pbt.pareto import nondominated_ranks
from pbt.space import Value
from pbt.spec import Objective
from pbt.trial import Trial


def is_better(a: Trial, b: Trial, objective: Objective) -> bool:
    """Whether ``a`` beats ``b``: the one definition of "better" between two trials.

    Only a usable trial (completed with a finite objective) can be better; it beats an unusable
    one, and a usable one only when its objective is strictly better (a tie is not better, so
    whoever came first stays best).
    """
    if not a.usable:
        return False
    if not b.usable:
        return True
    return objective.better(a.objective, b.objective)  # type: ignore[arg-type]


def best_trial(trials: Sequence[Trial], objective: Objective) -> Trial | None:
    """The usable trial with the best objective (earliest in ``trials`` on ties); None if none is usable."""
    best: Trial | None = None
    for t in trials:
        if t.usable and (best is None or is_better(t, best, objective)):
            best = t
    return best


def objective_point(trial: Trial, objectives: Sequence[Objective]) -> list[float]:
    """The trial's value of each objective, signed so that larger is better; non-finite or missing
    values are the worst (-inf). Taken from its last evaluation, the primary from ``objective``."""
    last = trial.metrics[-1].values if trial.metrics else {}
    point = []
    for i, objective in enumerate(objectives):
        value = trial.objective if i == 0 and trial.objective is not None else last.get(objective.metric)
        point.append(objective.sign() * value if value is not None and math.isfinite(value) else -math.inf)
    return point


def pareto_front(trials: Sequence[Trial], objectives: Sequence[Objective]) -> list[Trial]:
    """The usable trials no other usable trial dominates, best primary objective first.

    With one objective it is the best trial (all of those tied with it).
    """
    usable = [t for t in trials if t.usable]
    if not usable:
        return []
    ranks = nondominated_ranks(np.array([objective_point(t, objectives) for t in usable], dtype=float))
    front = [t for t, r in zip(usable, ranks) if r == 0]
    return sorted(front, key=lambda t: (-objective_point(t, objectives[:1])[0], t.number))


def lineage(trials: Sequence[Trial], trial: Trial) -> list[Trial]:
    """The chain of trials from a generation-0 root down to ``trial``, inclusive."""
    by_id = {t.id: t for t in trials}
    chain = [trial]
    seen = {trial.id}
    while chain[-1].parent is not None:
        parent = by_id.get(chain[-1].parent)
        if parent is None or parent.id in seen:
            raise ValueError(f"trial {chain[-1].id}: broken lineage at parent {chain[-1].parent!r}")
        chain.append(parent)
        seen.add(parent.id)
    return chain[::-1]


def ancestry(roots: Iterable[str], lookup: Callable[[str | None], Trial | None]) -> set[str]:
    """``roots`` and every ancestor of theirs: the trials whose checkpoints GC keeps.

    ``lookup`` maps a trial id to its record (None when unknown), so a caller that indexes its
    trials already pays O(size of the ancestry), not O(study).
    """
    keep: set[str] = set()
    for root in roots:
        node = lookup(root)
        while node is not None and node.id not in keep:
            keep.add(node.id)
            node = lookup(node.parent)
    return keep


@dataclass(frozen=True)
class ScheduleSegment:
    """``params`` were in force from ``start`` to ``end`` (lineage steps) during ``trial``."""

    trial: str
    start: int
    end: int
    params: dict[str, Value]
    exploit: bool  # this segment began by copying another member's weights

    def to_dict(self) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "start": self.start,
            "end": self.end,
            "params": self.params,
            "exploit": self.exploit,
        }


def schedule(chain: Sequence[Trial]) -> list[ScheduleSegment]:
    """The hyperparameter schedule along a lineage: one segment per trial."""
    return [
        ScheduleSegment(
            t.id,
            t.start_lineage_steps,
            t.start_lineage_steps + t.steps_done,
            dict(t.params),
            bool(t.metadata.get("exploit")),
        )
        for t in chain
    ]


def trial_json(trial: Trial) -> dict[str, Any]:
    """A trial as the stable JSON shape ``pbt status --json`` promises."""
    data = trial.model_dump(mode="json")
    data["lineage_steps"] = trial.lineage_steps
    return data
