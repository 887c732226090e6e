"""The pluggable parts of PBT's evolution engine (the paper's section 3.3).

PBT is an evolutionary algorithm whose individuals are trials. The generalized framework
splits it into parts that can be swapped independently:

* **fitness** — how good a trial is: the objective, a weighted sum of several metrics, or, with
  several objectives, Pareto dominance (NSGA-II's non-domination rank, then crowding distance);
* **selection** — given an *initiator* (a member whose trial just ended), which trial it
  copies: binary tournament against an opponent from the last generations (the paper's
  default), or truncation (bottom fraction copies the top fraction, as in Jaderberg et al.);
* **reproduction** — how the child's hyperparameters derive from the parent's (perturb
  ×0.8/×1.2, resample from the prior with some probability, neighbours for discrete values,
  resampling for categories).

All parts are deterministic given the ``numpy`` generator they are handed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pbt.controller.view import TrialView
from pbt.lineage import objective_point
from pbt.pareto import nsga2_keys
from pbt.space import SearchSpace, Value
from pbt.spec import Objective
from pbt.trial import Trial


class Fitness(Protocol):
    """How selection compares trials (usable ones only)."""

    def order(self, trials: Sequence[Trial]) -> list[Trial]:
        """``trials`` best first; equally good ones by trial number."""

    def beats(self, a: Trial, b: Trial, pool: Callable[[], Sequence[Trial]]) -> bool:
        """Whether ``a`` is strictly better than ``b``, judged among ``pool()`` where that matters."""


@dataclass(frozen=True)
class ScalarFitness:
    """A number per trial, larger is better: the objective or a weighted sum."""

    value: Callable[[Trial], float]

    def __call__(self, trial: Trial) -> float:
        return self.value(trial)

    def order(self, trials: Sequence[Trial]) -> list[Trial]:
        return sorted(trials, key=lambda t: (-self.value(t), t.number))

    def beats(self, a: Trial, b: Trial, pool: Callable[[], Sequence[Trial]]) -> bool:
        return self.value(a) > self.value(b)


def objective_fitness(sign: float) -> ScalarFitness:
    """Fitness from the trial's objective; ``sign`` = -1 when the objective is minimised."""
    return ScalarFitness(lambda trial: sign * float(trial.objective))  # type: ignore[arg-type]


def weighted_fitness(weights: dict[str, float]) -> ScalarFitness:
    """Σ weight × metric over the trial's last evaluation; a missing metric makes it −∞."""

    def fitness(trial: Trial) -> float:
        last = trial.metrics[-1].values if trial.metrics else {}
        total = 0.0
        for name, weight in weights.items():
            value = last.get(name)
            if value is None or not math.isfinite(value):
                return -math.inf
            total += weight * value
        return total

    return ScalarFitness(fitness)


@dataclass(frozen=True)
class ParetoFitness:
    """Several objectives at once: NSGA-II order (non-domination rank, then crowding distance).

    A trial's point is its final evaluation's value of each objective, signed so that larger is
    better; a missing or non-finite value is the worst. In a tournament the two trials are ranked
    among the initiator's window (``pool``), so a trial that dominates the other always wins,
    and between two of one front the one in the less crowded region does.
    """

    objectives: tuple[Objective, ...]

    def _keys(self, trials: Sequence[Trial]) -> dict[int, tuple[int, float, int]]:
        points = np.array([objective_point(t, self.objectives) for t in trials], dtype=float)
        ranks, crowding = nsga2_keys(points.reshape(len(trials), len(self.objectives)))
        return {t.number: (int(r), -float(c), t.number) for t, r, c in zip(trials, ranks, crowding)}

    def order(self, trials: Sequence[Trial]) -> list[Trial]:
        keys = self._keys(trials)
        return sorted(trials, key=lambda t: keys[t.number])

    def beats(self, a: Trial, b: Trial, pool: Callable[[], Sequence[Trial]]) -> bool:
        members = {t.number: t for t in pool()}
        members.update({a.number: a, b.number: b})
        keys = self._keys(list(members.values()))
        return keys[a.number][:2] < keys[b.number][:2]


@dataclass(frozen=True)
class Population:
    """What selection may look at: the indexed trial view, each member's latest trial, fitness.

    ``stopped_fitness``: the fitness a trial stopped early showed at the evaluation that stopped
    it (None for any other trial); selection uses it to make a stopped member copy a better one.
    """

    view: TrialView
    fitness: Fitness
    stopped_fitness: Callable[[Trial], float | None] | None = None

    @property
    def latest(self) -> dict[int, Trial]:
        return self.view.latest_by_member

    def best_usable(self) -> Trial | None:
        usable = list(self.view.all_parent_candidates())
        return self.fitness.order(usable)[0] if usable else None


class Selection(Protocol):
    def ready(self, initiator: Trial, population: Population) -> bool:
        """Whether the initiator can be decided now (else its member waits)."""

    def choose_parent(self, initiator: Trial, population: Population, rng: np.random.Generator) -> Trial | None:
        """The trial the initiator's member should copy, or None to continue from its own."""

    def window(self, population: Population) -> set[str]:
        """Trial ids that a future ``choose_parent`` may still return (for checkpoint GC)."""


@dataclass(frozen=True)
class Tournament:
    """Binary tournament: the initiator meets one opponent drawn from the last generations.

    The opponent is a usable trial, not the initiator itself, whose generation lies within
    ``generations`` of the initiator's. A failed initiator always loses (it cannot be a parent).
    A trial stopped early loses too, to an opponent drawn among the window's trials whose fitness
    beats the one it had at its stop (the best of the window when none does): a random opponent
    could be an older, less trained trial, and copying it would throw progress away.
    """

    generations: int = 2

    def ready(self, initiator: Trial, population: Population) -> bool:
        return True  # asynchronous: a member never waits for the others

    def choose_parent(self, initiator: Trial, population: Population, rng: np.random.Generator) -> Trial | None:
        view, low, high = population.view, initiator.generation - self.generations + 1, initiator.generation
        stopped = population.stopped_fitness(initiator) if population.stopped_fitness else None
        if stopped is not None:
            return self._beats_stopped(initiator, population, low, high, stopped, rng)
        # Draw uniformly among the window's parent candidates other than the initiator, without
        # materialising the window: O(generations + log population) per decision.
        count = view.parents_count(low, high)
        own = view.parent_position(low, high, initiator)
        if count - (own is not None) <= 0:
            # Nobody in the window: a failed initiator copies the best of anything usable.
            return None if initiator.usable else population.best_usable()
        index = int(rng.integers(count - (own is not None)))
        if own is not None and index >= own:
            index += 1
        opponent = view.parent_at(low, high, index)
        if not initiator.usable or population.fitness.beats(opponent, initiator, lambda: view.usable_in(low, high)):
            return opponent
        return None

    def _beats_stopped(
        self, initiator: Trial, population: Population, low: int, high: int, stopped: float, rng: np.random.Generator
    ) -> Trial | None:
        """A stopped initiator's parent: O(window) (the window is materialised), as stops are few."""
        window = [t for t in population.view.usable_in(low, high) if t.id != initiator.id]
        if not window:
            return population.best_usable()
        value = population.fitness
        assert isinstance(value, ScalarFitness), "stopped_fitness is given with a scalar fitness only"
        better = [t for t in window if value(t) > stopped]
        if better:
            return better[int(rng.integers(len(better)))]
        return value.order(window)[0]

    def window(self, population: Population) -> set[str]:
        if not population.latest:
            return set()
        oldest = min(t.generation for t in population.latest.values()) - self.generations + 1
        newest = max(t.generation for t in population.latest.values())
        return {t.id for t in population.view.usable_in(oldest, newest)}


class Truncation:
    """Truncation selection at equal training progress (Jaderberg et al. 2017, section 3.1).

    A member whose trial of generation ``g`` has ended is decided once every member has started
    and no member's trial of generation ``g`` or less is still running. Then the members are
    ranked by their latest usable trial of generation ``g`` or less — like with like, whatever
    the parallelism and whatever order results arrive in — and a member in the bottom
    ``fraction`` (rounded, at least one) copies a random member of the top ``fraction``; the
    others keep training. A failed initiator always copies. So about ``fraction`` of the
    decisions are exploits, at parallelism 2 as at parallelism = population size; the price is
    that a member waits for the slowest member of its generation (tournament never waits).
    """

    def __init__(self, fraction: float = 0.2, population_size: int = 2) -> None:
        self.fraction = fraction
        self.population_size = population_size
        self._memo: dict[tuple[int, int, int], list[Trial]] = {}

    def ready(self, initiator: Trial, population: Population) -> bool:
        return (len(population.latest) >= self.population_size
                and population.view.running_up_to(initiator.generation) == 0)

    def _ranked(self, population: Population, generation: int) -> list[Trial]:
        """Each member's latest usable trial of at most ``generation``, best first.

        Once a generation is ready nothing of it changes, so the ranking is computed once per
        generation (keyed by how many member trials of at most that generation exist).
        """
        view = population.view
        key = (id(view), generation, view.trials_up_to(generation))
        ranked = self._memo.get(key)
        if ranked is None:
            latest = [t for m in population.latest if (t := _latest_usable(view.member_trials(m), generation))]
            ranked = population.fitness.order(latest)
            if len(self._memo) > 8:
                self._memo.clear()
            self._memo[key] = ranked
        return ranked

    def choose_parent(self, initiator: Trial, population: Population, rng: np.random.Generator) -> Trial | None:
        ranked = self._ranked(population, initiator.generation)
        cut = max(1, round(len(ranked) * self.fraction))
        bottom = {t.id for t in ranked[-cut:]}
        if initiator.usable and (len(ranked) < 2 or initiator.id not in bottom):
            return None  # good enough (or nobody to compare with): keep training
        top = [t for t in ranked[:cut] if t.id != initiator.id]
        return top[int(rng.integers(len(top)))] if top else None

    def window(self, population: Population) -> set[str]:
        """Every trial a ranking of a generation still to be decided may put on top."""
        if not population.latest:
            return set()
        oldest = min(t.generation for t in population.latest.values())
        keep: set[str] = set()
        for member in population.latest:
            for t in reversed(population.view.member_trials(member)):
                if t.usable:
                    keep.add(t.id)
                    if t.generation <= oldest:
                        break
        return keep


def _latest_usable(history: Sequence[Trial], generation: int) -> Trial | None:
    for t in reversed(history):
        if t.generation <= generation and t.usable:
            return t
    return None


@dataclass(frozen=True)
class Reproduction:
    """Explore: resample each parameter from the prior with ``resample_probability``, else perturb."""

    space: SearchSpace
    factors: tuple[float, float] = (0.8, 1.2)
    resample_probability: float = 0.25

    def explore(self, params: dict[str, Value], rng: np.random.Generator) -> dict[str, Value]:
        child: dict[str, Value] = {}
        for name, param in self.space.items():
            if name in params and not param.mutable:
                child[name] = params[name]  # an architecture choice: the child loads the parent's weights
            elif name not in params or rng.random() < self.resample_probability:
                child[name] = param.sample(rng)
            else:
                child[name] = param.perturb(params[name], rng, self.factors)
        return child
