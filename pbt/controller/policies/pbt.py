"""Population Based Training with initiator-based evolution (the paper's default engine).

The population has ``population_size`` members. A member whose trial has ended is *ready*;
``suggest`` turns ready members into new trials:

* a member with no trial yet starts from scratch with hyperparameters drawn from the prior;
* otherwise its last trial is the *initiator*: selection picks a parent (the tournament
  opponent that beat it, or a top member under truncation). Losing → the child warm-starts
  from the parent's checkpoint with explored hyperparameters (exploit + explore). Winning →
  it continues from its own checkpoint with the same hyperparameters.

Failed or stopped trials never become parents; their member copies a winner. With fewer
workers than members ("budget mode"), the ready member that has trained least goes first, so
members stay at comparable training progress. Tournament opponents come from the initiator's
last ``window_generations`` generations; truncation ranks the members at the same generation
and so decides a generation once all of it has ended (:class:`~pbt.controller.evolution.Truncation`).
Every trial trains ``steps_per_trial`` steps; the study ends when the step or trial budget
would be exceeded.

**Explore** (``explore``): ``perturb`` (default; ×``perturb_factors``, resampling with
``resample_probability``), ``pb2`` (a time-varying GP bandit for numeric parameters,
:mod:`pbt.controller.pb2`) or a user function ``package.module:function``
(:mod:`pbt.controller.explore`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pbt.controller.evolution import (
    Fitness,
    ParetoFitness,
    Population,
    Reproduction,
    ScalarFitness,
    Tournament,
    Truncation,
    objective_fitness,
    weighted_fitness,
)
from pbt.controller.explore import Explorer, Hook, Perturb, Session, check_rule, load_hook
from pbt.controller.pb2 import PB2, import_sklearn
from pbt.controller.policy import Options, Policy
from pbt.controller.view import TrialView
from pbt.importing import import_path
from pbt.space import sample_params
from pbt.trial import MetricReport, Suggestion, Trial


class PBTOptions(Options):
    population_size: int = Field(default=10, ge=2)
    steps_per_trial: int = Field(gt=0, description="training steps between exploit/explore decisions")
    selection: Literal["tournament", "truncation"] = "tournament"
    window_generations: int = Field(default=2, ge=1, description="tournament opponents' generation window")
    truncation_fraction: float = Field(default=0.2, gt=0, le=0.5)
    perturb_factors: tuple[float, float] = (0.8, 1.2)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    explore_on_win: bool = Field(
        default=False, description="also explore (by the `explore` rule) a member that won its tournament"
    )
    fitness_weights: dict[str, float] | None = Field(
        default=None,
        description="fitness = Σ weight×metric instead of the objective; with several objectives and no "
        "weights, members are ranked by Pareto dominance",
    )
    explore: str = Field(
        default="perturb",
        description="`perturb` (factors and resampling), `pb2` (GP bandit for numeric parameters; needs "
                    "scikit-learn: `pip install 'pbt[pb2]'`) or `package.module:function` (see Explore)",
    )
    pb2_window: int = Field(default=32, ge=4, description="pb2: the most recent intervals its GP is fitted to")

    @field_validator("explore", mode="before")
    @classmethod
    def _explore(cls, v: Any) -> Any:
        """A function given from Python becomes its import path, as a trainer does."""
        if callable(v):
            v = import_path(v)
        return check_rule(v) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _factors(self) -> PBTOptions:
        lo, hi = self.perturb_factors
        if not (0 < lo < 1 < hi):
            raise ValueError("perturb_factors must be (down, up) with 0 < down < 1 < up")
        return self


class PBT(Policy):
    Options = PBTOptions
    options: PBTOptions

    def __init__(self, spec) -> None:
        super().__init__(spec)
        o = self.options
        self.selection = (
            Tournament(o.window_generations) if o.selection == "tournament"
            else Truncation(o.truncation_fraction, o.population_size)
        )
        self.reproduction = Reproduction(self.space, o.perturb_factors, o.resample_probability)
        if o.fitness_weights:
            self.fitness_model: Fitness = weighted_fitness(o.fitness_weights)
        elif len(spec.objectives) > 1:
            self.fitness_model = ParetoFitness(tuple(spec.objectives))
        else:
            self.fitness_model = objective_fitness(self.objective.sign())
        self.explorer = self._explorer(o.explore)

    def _explorer(self, rule: str) -> Explorer:
        if rule == "perturb":
            return Perturb(self.reproduction)
        if rule == "pb2":
            if not isinstance(self.fitness_model, ScalarFitness):
                raise ValueError("explore: pb2 models the improvement of one number: with several objectives, "
                                 "give fitness_weights (or use explore: perturb)")
            return PB2(self.space, self.reproduction, self.fitness_model, self.report_fitness,
                       self.options.pb2_window)
        return Hook(rule, self.space)

    def check_imports(self) -> None:
        """Resolve what exploring will import: scikit-learn for ``pb2``, the user's function for a hook."""
        if isinstance(self.explorer, PB2):
            import_sklearn()
        elif isinstance(self.explorer, Hook):
            load_hook(self.explorer.path)

    def report_fitness(self, report: MetricReport) -> float:
        """The scalar fitness an evaluation shows (larger is better): the weighted sum, else the
        (first) objective; −∞ when a value is missing or not finite."""
        weights = self.options.fitness_weights or {self.objective.metric: self.objective.sign()}
        total = 0.0
        for name, weight in weights.items():
            value = report.values.get(name)
            if value is None or not math.isfinite(value):
                return -math.inf
            total += weight * value
        return total

    def _population(self, trials: Sequence[Trial]) -> Population:
        return Population(TrialView.of(trials), self.fitness_model)

    def suggest(self, trials: Sequence[Trial], k: int) -> list[Suggestion]:
        steps = self.options.steps_per_trial
        room = self.room(trials)
        if k <= 0 or not room.fits(steps):
            return []  # O(1) once the budget is spent, however large the population
        population = self._population(trials)
        rng = self.rng(trials)
        # Members are started in index order, so the ones without a trial are a contiguous tail.
        fresh = range(len(population.latest), self.options.population_size)
        out: list[Suggestion] = []
        for member in fresh:
            if len(out) >= k or not room.take(steps):
                return out
            out.append(Suggestion(params=sample_params(self.space, rng), steps=steps, member=member))
        session: Session | None = None
        for initiator in population.view.ready_in_order():
            if len(out) >= k:
                break
            if not self.selection.ready(initiator, population):
                continue
            if not room.take(steps):
                break
            if session is None:  # one per call: PB2 fits its model once, and sees the children it chose
                session = self.explorer.session(population.view)
            out.append(self._reproduce(initiator, population, rng, steps, session))
        return out

    def _reproduce(self, initiator: Trial, population: Population, rng, steps: int, session: Session) -> Suggestion:
        child_generation = initiator.generation + 1
        parent = self.selection.choose_parent(initiator, population, rng)
        if parent is not None:  # exploit, then explore
            params = session.explore(parent, rng)
            return Suggestion(
                params=params,
                steps=steps,
                parent=parent.id,
                member=initiator.member,
                generation=child_generation,
                metadata={"exploit": True, "copied_from_member": parent.member},
            )
        if initiator.usable:  # won: keep training
            params = dict(initiator.params)
            if self.options.explore_on_win:
                params = session.explore(initiator, rng)
            return Suggestion(
                params=params,
                steps=steps,
                parent=initiator.id,
                member=initiator.member,
                generation=child_generation,
            )
        # Failed with nothing usable anywhere (early in a study): a new root from the prior.
        return Suggestion(
            params=sample_params(self.space, rng),
            steps=steps,
            member=initiator.member,
            generation=0,
            metadata={"restart": True},
        )

    def parent_candidates(self, trials: Sequence[Trial]) -> set[str]:
        """The selection's window, every member's latest usable trial, and PBT's own best (by its
        fitness): the parent a failed member copies when its window holds nothing usable, which
        need not be the controller's best by the primary objective (weighted or Pareto fitness)."""
        population = self._population(trials)
        keep = self.selection.window(population)
        keep.update(t.id for t in population.latest.values() if t.usable)
        best = population.best_usable()
        if best is not None:
            keep.add(best.id)
        return keep
