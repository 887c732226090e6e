"""The read-only trial list a policy sees, with the indexes that keep policies sub-linear.

Policies are pure functions of "all trials so far". Handing them a plain list would make
every decision O(study length), and a study quadratic. :class:`TrialView` is still a
``Sequence[Trial]`` in creation order, but it also maintains, as trials are added or replaced,
the aggregates the built-in policies need: steps committed against the budget, each member's
latest trial, and usable trials by generation. A policy given a plain list (as in unit tests)
builds the same view in one pass with :meth:`TrialView.of`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import overload

from pbt.trial import Trial, TrialStatus


def committed(trial: Trial) -> int:
    """Steps a trial holds against the budget: what it trained if it ended early, else its target."""
    return trial.steps_done if trial.status in (TrialStatus.FAILED, TrialStatus.STOPPED) else trial.steps


class TrialView(Sequence[Trial]):
    def __init__(self, trials: Iterable[Trial] = ()) -> None:
        self._items: list[Trial] = []
        self.committed_steps = 0
        self.latest_by_member: dict[int, Trial] = {}
        self.usable_by_generation: dict[int, dict[str, Trial]] = defaultdict(dict)
        for t in trials:
            self.append(t)

    #: ``usable_by_generation`` holds usable trials whose checkpoints still exist: the ones a
    #: policy may pick as parents.

    @classmethod
    def of(cls, trials: Sequence[Trial]) -> TrialView:
        return trials if isinstance(trials, TrialView) else cls(trials)

    @overload
    def __getitem__(self, i: int) -> Trial: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Trial]: ...
    def __getitem__(self, i):
        return self._items[i]

    def __len__(self) -> int:
        return len(self._items)

    def append(self, trial: Trial) -> None:
        if trial.number != len(self._items):
            raise ValueError(f"trial {trial.id} has number {trial.number}, expected {len(self._items)}")
        self._items.append(trial)
        self._add(trial)

    def replace(self, trial: Trial) -> None:
        """Swap in a newer version of an existing trial (same number)."""
        self._remove(self._items[trial.number])
        self._items[trial.number] = trial
        self._add(trial)

    def _add(self, t: Trial) -> None:
        self.committed_steps += committed(t)
        if t.member is not None:
            current = self.latest_by_member.get(t.member)
            if current is None or current.number <= t.number:
                self.latest_by_member[t.member] = t
        if t.usable and not t.checkpoint_deleted:  # a parent needs its checkpoint
            self.usable_by_generation[t.generation][t.id] = t

    def _remove(self, t: Trial) -> None:
        self.committed_steps -= committed(t)
        if t.usable:
            self.usable_by_generation[t.generation].pop(t.id, None)

    def usable_in(self, low: int, high: int) -> list[Trial]:
        """Usable trials with low <= generation <= high, in creation order."""
        found = [t for g in range(max(low, 0), high + 1) for t in self.usable_by_generation.get(g, {}).values()]
        return sorted(found, key=lambda t: t.number)
