"""The read-only trial list a policy sees, with the indexes that keep policies sub-linear.

Policies are pure functions of "all trials so far". Handing them a plain list would make
every decision O(study length), and a study quadratic. :class:`TrialView` is still a
``Sequence[Trial]`` in creation order, but it also maintains, as trials are added or replaced,
the aggregates the built-in policies need: steps committed against the budget, each member's
latest trial, and usable trials by generation. A policy given a plain list (as in unit tests)
builds the same view in one pass with :meth:`TrialView.of`.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from pbt.trial import Trial, TrialStatus


def committed(trial: Trial) -> int:
    """Steps a trial holds against ``budget.total_steps``.

    A trial is charged the steps it was given when it is created, and keeps that charge when it
    completes *or fails* — so failing work uses up the budget and no study can run forever on
    trials that fail before their first step. A trial stopped early is charged the steps it
    trained up to its stop (what the policy's view shows as its ``steps_done``).
    """
    return trial.steps_done if trial.status is TrialStatus.STOPPED else trial.steps


class TrialView(Sequence[Trial]):
    """Trials in creation order, plus incrementally maintained indexes:

    * ``committed_steps`` — steps held against the budget;
    * ``latest_by_member`` — each PBT member's newest trial;
    * ``ready`` — members whose newest trial has ended (the ones waiting for a decision), also
      in decision order (:meth:`ready_in_order`: least trained first);
    * ``running_by_generation`` — members' trials not ended yet, counted per generation;
    * each member's trials in creation order (:meth:`member_trials`), and every trial by id
      (:meth:`get`);
    * per-generation lists of *parent candidates* — usable trials whose checkpoints still exist,
      kept sorted by trial number so a random pick is canonical (the same after a restart).
    """

    def __init__(self, trials: Iterable[Trial] = ()) -> None:
        self._items: list[Trial] = []
        self.committed_steps = 0
        self.latest_by_member: dict[int, Trial] = {}
        self.ready: dict[int, Trial] = {}
        self._ready_order: list[tuple[int, int, int]] = []  # (lineage steps, number, member), sorted
        self.running_by_generation: dict[int, int] = defaultdict(int)
        self._member_trials_by_generation: dict[int, int] = defaultdict(int)
        self._members: dict[int, list[Trial]] = defaultdict(list)
        self._parents: dict[int, list[Trial]] = defaultdict(list)
        self._by_id: dict[str, Trial] = {}
        for t in trials:
            self.append(t)

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
        self._by_id[t.id] = t
        if t.member is not None:
            history = self._members[t.member]
            i = bisect.bisect_left(history, t.number, key=_number)
            if i < len(history) and history[i].number == t.number:
                history[i] = t
            else:
                history.insert(i, t)
            if not t.status.terminal:
                self.running_by_generation[t.generation] += 1
            self._member_trials_by_generation[t.generation] += 1
            current = self.latest_by_member.get(t.member)
            if current is None or current.number <= t.number:
                self.latest_by_member[t.member] = t
                self._set_ready(t.member, t if t.status.terminal else None)
        if _is_parent_candidate(t):
            bucket = self._parents[t.generation]
            bisect.insort(bucket, t, key=_number)

    def _set_ready(self, member: int, trial: Trial | None) -> None:
        old = self.ready.pop(member, None)
        if old is not None:
            key = (old.lineage_steps, old.number, member)
            i = bisect.bisect_left(self._ready_order, key)
            if i < len(self._ready_order) and self._ready_order[i] == key:
                del self._ready_order[i]
        if trial is not None:
            self.ready[member] = trial
            bisect.insort(self._ready_order, (trial.lineage_steps, trial.number, member))

    def ready_in_order(self) -> Iterator[Trial]:
        """Ready members' latest trials, least trained first (ties: oldest trial first)."""
        for _, _, member in self._ready_order:
            yield self.ready[member]

    def get(self, trial_id: str | None) -> Trial | None:
        """The trial with this id, as this view shows it; None if there is none."""
        return self._by_id.get(trial_id) if trial_id is not None else None

    def member_trials(self, member: int) -> Sequence[Trial]:
        """The member's trials in creation order."""
        return self._members.get(member, ())

    def trials_up_to(self, generation: int) -> int:
        """Members' trials of at most ``generation``, ended or not."""
        return sum(n for g, n in self._member_trials_by_generation.items() if g <= generation)

    def running_up_to(self, generation: int) -> int:
        """Members' trials of at most ``generation`` that have not ended yet."""
        return sum(n for g, n in self.running_by_generation.items() if g <= generation)

    def _remove(self, t: Trial) -> None:
        self.committed_steps -= committed(t)
        if t.member is not None:
            self._member_trials_by_generation[t.generation] -= 1
            if not t.status.terminal:
                self.running_by_generation[t.generation] -= 1
        if _is_parent_candidate(t):
            bucket = self._parents[t.generation]
            i = bisect.bisect_left(bucket, t.number, key=_number)
            if i < len(bucket) and bucket[i].number == t.number:
                del bucket[i]

    def parents_count(self, low: int, high: int) -> int:
        """How many parent candidates have low <= generation <= high."""
        return sum(len(self._parents.get(g, ())) for g in range(max(low, 0), high + 1))

    def parent_at(self, low: int, high: int, index: int) -> Trial:
        """The ``index``-th candidate of those generations, generation by generation, by number."""
        for g in range(max(low, 0), high + 1):
            bucket = self._parents.get(g, ())
            if index < len(bucket):
                return bucket[index]
            index -= len(bucket)
        raise IndexError(index)

    def parent_position(self, low: int, high: int, trial: Trial) -> int | None:
        """``trial``'s index among the candidates of those generations, or None if not one."""
        if not (max(low, 0) <= trial.generation <= high) or not _is_parent_candidate(trial):
            return None
        bucket = self._parents.get(trial.generation, [])
        i = bisect.bisect_left(bucket, trial.number, key=_number)
        if i == len(bucket) or bucket[i].number != trial.number:
            return None
        return self.parents_count(low, trial.generation - 1) + i

    def usable_in(self, low: int, high: int) -> list[Trial]:
        """Parent candidates with low <= generation <= high (materialised: not for hot paths)."""
        return [t for g in range(max(low, 0), high + 1) for t in self._parents.get(g, ())]

    def all_parent_candidates(self) -> Iterator[Trial]:
        for bucket in self._parents.values():
            yield from bucket


def _number(t: Trial) -> int:
    return t.number


def _is_parent_candidate(t: Trial) -> bool:
    return t.usable and not t.checkpoint_deleted  # a parent needs its checkpoint
