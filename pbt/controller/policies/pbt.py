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

**Early stopping** (``early_stop``, off by default). Each intermediate evaluation of a running
trial (every ``execution.checkpoint_every`` steps) is compared with the rest of the population
*at comparable training progress*: for every other member, the evaluation at the same lineage
step ``L`` — or, when it has none there, its latest one in ``(L − steps_per_trial, L]``, which
trained less and so can only make the rule more cautious — taken from the member's last few
trials that existed when the trial was created (:meth:`~pbt.controller.policy.Policy.peers`'s
rule: they are final, so a seed stops the same trials at the same steps in every run, whatever
the workers' speed). Completed trials count, and trials stopped early with their evaluations
up to the stop. When at least ``min_peers`` members have such a value and the trial's fitness
is below their ``quantile`` (0.25: worse than three in four), it is stopped: it is charged the
steps up to that evaluation, and its member is decided at once: a stopped trial is not usable,
so it loses its tournament, to an opponent of the window that beats the fitness it had at its
stop (the window's best when none does; a random one could be older and worse) — truncation: a
member of the top fraction, once its generation has ended. With every member in flight the
trials fixed at a trial's creation are mostly the previous generation, an interval less
trained: then only trials that got worse than where most of the population already was are
stopped; in budget mode most trials have peers at the same step. Evaluations in a
trial's first ``grace_steps`` steps are not judged (a child that just changed hyperparameters
may dip before it improves); a non-finite evaluation is worse than any value. Needs
intermediate evaluations: ``execution.checkpoint_every`` below ``steps_per_trial``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
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
from pbt.controller.policy import NEW_STUDY_CHECKS, Options, Policy
from pbt.controller.view import TrialView
from pbt.importing import import_path
from pbt.space import FloatParam, IntParam, sample_params
from pbt.trial import MetricReport, Suggestion, Trial, TrialStatus

#: Trials of each other member, created before the judged one, searched for a comparable
#: evaluation (newest first): a member's trial at the same lineage step is among its last few.
PEER_TRIALS_PER_MEMBER = 4


class EarlyStopOptions(Options):
    quantile: float = Field(
        default=0.25, gt=0, lt=1,
        description="stop a trial whose fitness is below this quantile of the other members' at comparable "
                    "progress (0.25: worse than three in four)",
    )
    min_peers: int | None = Field(
        default=None, ge=1,
        description="members with a comparable evaluation before any decision (default: 3, or population_size − 1 "
                    "if smaller)",
    )
    grace_steps: int = Field(default=0, ge=0, description="evaluations in a trial's first N steps are not judged")


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
    early_stop: EarlyStopOptions | None = Field(
        default=None, description="stop trials clearly among the worst at comparable progress (off; `{}` or "
                                  "`true`: the defaults below; see Early stopping)",
    )

    @field_validator("explore", mode="before")
    @classmethod
    def _explore(cls, v: Any) -> Any:
        """A function given from Python becomes its import path, as a trainer does."""
        if callable(v):
            v = import_path(v)
        return check_rule(v) if isinstance(v, str) else v

    @field_validator("perturb_factors", mode="before")
    @classmethod
    def _factors_list(cls, v: Any) -> Any:
        """YAML and JSON have no tuple: ``[0.8, 1.2]`` in a study file (or a stored spec) is the pair."""
        return tuple(v) if isinstance(v, list) else v

    @field_validator("early_stop", mode="before")
    @classmethod
    def _early_stop(cls, v: Any) -> Any:
        return {} if v is True else None if v is False else v

    @model_validator(mode="after")
    def _factors(self) -> PBTOptions:
        lo, hi = self.perturb_factors
        if not (0 < lo < 1 < hi):
            raise ValueError("perturb_factors must be (down, up) with 0 < down < 1 < up")
        ignored = {
            "truncation_fraction": self.selection != "truncation" and "truncation_fraction" in self.model_fields_set,
            "window_generations": self.selection != "tournament" and "window_generations" in self.model_fields_set,
        }
        for option, unused in ignored.items():
            if unused and NEW_STUDY_CHECKS.get():
                raise ValueError(f"{option} applies to selection: "
                                 f"{'truncation' if option == 'truncation_fraction' else 'tournament'}, and this "
                                 f"study uses selection: {self.selection}; remove one of the two")
        if "pb2_window" in self.model_fields_set and self.explore != "pb2" and NEW_STUDY_CHECKS.get():
            raise ValueError("pb2_window applies to explore: pb2; this study explores with "
                             f"{self.explore!r}: remove one of the two")
        peers = self.early_stop.min_peers if self.early_stop is not None else None
        if peers is not None and peers > self.population_size - 1:
            raise ValueError(f"early_stop.min_peers ({self.early_stop.min_peers}) must be below population_size "
                             f"({self.population_size}): a trial is compared with the other members")
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
        self.stops_early = o.early_stop is not None
        self.min_peers = min(3, o.population_size - 1)
        if o.early_stop is not None and o.early_stop.min_peers is not None:
            self.min_peers = o.early_stop.min_peers
        if o.early_stop is not None:
            if not isinstance(self.fitness_model, ScalarFitness):
                raise ValueError("early_stop compares one number at comparable progress: with several objectives, "
                                 "give fitness_weights")
            every = spec.execution.checkpoint_every
            if every is None or every >= o.steps_per_trial or not spec.execution.evaluate_every_checkpoint:
                raise ValueError(
                    "early_stop judges intermediate evaluations: set execution.checkpoint_every below "
                    f"steps_per_trial ({o.steps_per_trial}) and keep execution.evaluate_every_checkpoint on"
                )

    def _explorer(self, rule: str) -> Explorer:
        if rule == "perturb":
            return Perturb(self.reproduction)
        if rule == "pb2":
            if not isinstance(self.fitness_model, ScalarFitness):
                raise ValueError("explore: pb2 models the improvement of one number: with several objectives, "
                                 "give fitness_weights (or use explore: perturb)")
            numeric = any(isinstance(p, (FloatParam, IntParam)) and p.mutable for p in self.space.values())
            if not numeric and NEW_STUDY_CHECKS.get():
                raise ValueError("explore: pb2 chooses float and int parameters, and this search space has no "
                                 "mutable one: it would only ever perturb (use explore: perturb)")
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
        scalar = isinstance(self.fitness_model, ScalarFitness)
        return Population(TrialView.of(trials), self.fitness_model, self.stopped_fitness if scalar else None)

    def stopped_fitness(self, trial: Trial) -> float | None:
        """The fitness a trial stopped early showed at the evaluation that stopped it, if finite."""
        reports = _final_evaluations(trial) if not trial.usable else []
        value = self.report_fitness(reports[-1]) if reports else None
        return value if value is not None and math.isfinite(value) else None

    def required_metrics(self) -> list[str]:
        """The other objectives, and every metric ``fitness_weights`` weighs (a weight on a metric
        the trainer never returns would rank every member at -inf: PBT that never exploits)."""
        needed = super().required_metrics()
        for metric in self.options.fitness_weights or {}:
            if metric != self.objective.metric and metric not in needed:
                needed.append(metric)
        return needed

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

    # Early stopping ---------------------------------------------------------------------------

    def should_stop(self, trial: Trial, trials: Sequence[Trial]) -> str | None:
        """Stop ``trial`` when its latest evaluation is clearly among the population's worst at
        comparable progress (the module docstring's rule)."""
        rule = self.options.early_stop
        if rule is None or not trial.metrics or trial.member is None:
            return None
        latest = trial.metrics[-1]
        if latest.step < rule.grace_steps or latest.step >= trial.steps:
            return None
        peers = self._comparable(trial, trials, latest.lineage_step)
        if len(peers) < self.min_peers:
            return None
        value = self.report_fitness(latest)
        threshold = float(np.quantile(np.array(list(peers.values())), rule.quantile))
        if not value < threshold:
            return None
        metric = self.objective.metric
        shown = latest.values.get(metric)
        shown_text = f"{metric} {shown:.6g}" if shown is not None else f"fitness {value:.6g}"
        if self.options.fitness_weights:
            threshold_text = f"{threshold:.6g} (fitness)"
        else:
            threshold_text = f"{self.objective.sign() * threshold:.6g}"
        return (f"{shown_text} at lineage step {latest.lineage_step} is below the {rule.quantile:g} quantile "
                f"{threshold_text} of {len(peers)} other members at comparable progress")

    def _comparable(self, trial: Trial, trials: Sequence[Trial], lineage_step: int) -> dict[int, float]:
        """Each other member's fitness at ``lineage_step`` or at most one interval before it, from
        its trials that existed when ``trial`` was created (see :meth:`peers`)."""
        view = TrialView.of(trials)
        if self.spec.execution.ordering == "deterministic":
            limit = min(int(trial.metadata.get("created_after", 0)), len(view))
        else:
            limit = len(view)
        low = lineage_step - self.options.steps_per_trial
        out: dict[int, float] = {}
        for member in sorted(view.latest_by_member):
            if member == trial.member:
                continue
            history = view.member_trials(member)
            end = bisect.bisect_left(history, limit, key=lambda t: t.number)
            best: tuple[int, int, float] | None = None  # (lineage step, trial number, fitness)
            for t in reversed(history[max(0, end - PEER_TRIALS_PER_MEMBER):end]):
                if t.id == trial.id or not (t.start_lineage_steps < lineage_step and t.lineage_steps > low):
                    continue
                for report in _final_evaluations(t):
                    if low < report.lineage_step <= lineage_step:
                        key = (report.lineage_step, t.number, self.report_fitness(report))
                        if best is None or key[:2] > best[:2]:
                            best = key
            if best is not None and math.isfinite(best[2]):  # a diverged peer: no comparable value
                out[member] = best[2]
        return out


def _final_evaluations(trial: Trial) -> list[MetricReport]:
    """The evaluations of a trial whose record will not change: all of a usable trial's, those up
    to the stop of a trial stopped early; none of a failed or running one's."""
    if trial.usable:
        return trial.metrics
    stop = trial.metadata.get("stop_step")
    if trial.status is TrialStatus.STOPPED and stop is not None:
        return [m for m in trial.metrics if m.step <= int(stop)]
    return []
