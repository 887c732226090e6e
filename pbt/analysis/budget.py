"""How much of a study's budget is spent, and the one way pbt writes it down.

``pbt run``'s progress bar, ``pbt status`` and the report all show steps trained against
``budget.total_steps`` and trials completed against ``budget.max_trials``; they take the numbers
and the words from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pbt.spec import Budget
from pbt.trial import Trial, TrialStatus


@dataclass(frozen=True)
class BudgetUse:
    """Steps trained and trials completed so far, against the study's limits (None: no such limit).

    A trial's ``steps_done`` counts whatever it trained, so failed and stopped trials spend budget
    too; only completed trials count against ``max_trials`` here (the policy's own accounting
    decides when to stop creating trials).
    """

    steps_done: int
    completed: int
    total_steps: int | None
    max_trials: int | None

    @classmethod
    def of(cls, budget: Budget, trials: Iterable[Trial] = ()) -> BudgetUse:
        """What ``trials`` (any records of the study, running ones included) spent of ``budget``."""
        steps = completed = 0
        for t in trials:
            steps += t.steps_done
            completed += t.status is TrialStatus.COMPLETED
        return cls(steps, completed, budget.total_steps, budget.max_trials)

    @property
    def fraction(self) -> float | None:
        """Share of the budget used, 0..1 (the closer of the two limits when both are set)."""
        parts = []
        if self.total_steps:
            parts.append(self.steps_done / self.total_steps)
        if self.max_trials:
            parts.append(self.completed / self.max_trials)
        return min(1.0, max(parts)) if parts else None

    @property
    def measure(self) -> tuple[str, int, int | None]:
        """What a progress bar counts: ``("steps", done, total)``, or trials without a step budget."""
        if self.total_steps is not None:
            return "steps", self.steps_done, self.total_steps
        return "trials", self.completed, self.max_trials

    def parts(self, trials_word: str = "trials") -> list[str]:
        """``["1,200 / 4,000 steps", "3 / 10 trials"]``: steps always, trials when limited.

        ``trials_word`` names what the trial count counts (the report says "trials completed").
        """
        if self.total_steps:
            out = [f"{self.steps_done:,} / {self.total_steps:,} steps"]
        else:
            out = [f"{self.steps_done:,} steps"]
        if self.max_trials:
            out.append(f"{self.completed} / {self.max_trials} {trials_word}")
        return out
