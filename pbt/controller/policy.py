"""The policy interface: how a controller asks "what next?" without knowing how trials run.

After Vizier's Pythia: a policy has two questions to answer, ``suggest(trials, k)`` (the
paper's GetNewSuggestion) and ``early_stop(trials)`` (GetEarlyStoppingTrials). Both are pure
functions of the trial list and the study seed: a policy keeps no state between calls, so the
controller can be killed and rebuilt at any moment and ask again with the same answer. Policies
never import Celery, Redis or boto3; they can be unit-tested with a list of records.

Each policy declares an ``Options`` model: the study file's ``algorithm.options`` are
validated against it before anything runs.

**Errors.** A policy that cannot answer *now* (it waits for a result, a model fit failed this
time) raises :class:`~pbt.errors.TemporaryPolicyError`: the controller logs it and asks again
at the next tick. A policy that finds the study cannot go on raises
:class:`~pbt.errors.StudyFailedError`: the controller ends the study with its message and a
non-zero exit. Any other exception is a bug in the policy and ends the controller.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from pbt.controller.view import TrialView
from pbt.spec import StudySpec
from pbt.trial import Suggestion, Trial, TrialStatus


@dataclass(frozen=True)
class EarlyStopDecision:
    """Stop running trial ``trial_id`` now, because of ``reason`` (shown in records and reports).

    ``step``: the trial's step at the evaluation the decision was made on, when known; the
    trial is charged the steps up to there.
    """

    trial_id: str
    reason: str
    step: int | None = None


def as_decisions(items: Iterable[EarlyStopDecision | str]) -> list[EarlyStopDecision]:
    """Normalise ``early_stop``'s answer: policies written before decisions carried a reason
    return bare trial ids."""
    return [i if isinstance(i, EarlyStopDecision) else EarlyStopDecision(i, "stopped early by the policy")
            for i in items]


#: True only while :func:`pbt.study_file.parse_spec` validates a study file (or dict) for a run:
#: the checks that refuse options a new study would silently ignore, or a stopping rule that could
#: never act, are made there, and never when a stored study's spec is read back (``pbt status``, a
#: resume, the controller building its policy), so an existing study is not locked out of its records.
NEW_STUDY_CHECKS: ContextVar[bool] = ContextVar("pbt_new_study_checks", default=False)


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Room:
    """The budget left for one ``suggest`` call, in O(1) per check.

    ``budget.max_trials`` counts every trial created, failed and stopped ones included;
    ``budget.total_steps`` counts the steps trials hold (:func:`~pbt.controller.view.committed`).
    """

    def __init__(self, max_trials: int | None, total_steps: int | None, trials: int, steps: int) -> None:
        self.trials_left = None if max_trials is None else max_trials - trials
        self.steps_left = None if total_steps is None else total_steps - steps

    def fits(self, steps: int) -> bool:
        """Whether one more trial of ``steps`` steps fits."""
        return (self.trials_left is None or self.trials_left > 0) and (
            self.steps_left is None or steps <= self.steps_left
        )

    def take(self, steps: int) -> bool:
        """Reserve one trial of ``steps`` steps if it fits; whether it did."""
        if not self.fits(steps):
            return False
        if self.trials_left is not None:
            self.trials_left -= 1
        if self.steps_left is not None:
            self.steps_left -= steps
        return True


class Policy(ABC):
    """Base class: subclasses implement :meth:`suggest`; the rest has safe defaults.

    ``stops_early``: whether the controller should ask :meth:`should_stop` / :meth:`early_stop`
    at all; a policy whose early stopping is an option it was not given sets it False, so its
    studies pay nothing per evaluation.
    """

    Options: ClassVar[type[Options]] = Options
    stops_early: bool = True

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self.space = spec.parameters
        self.objective = spec.objective
        self.budget = spec.budget
        self.options = self.Options.model_validate(spec.algorithm.options)

    def check_imports(self) -> None:
        """Import what the policy will need later (an optional library, a user's function) and
        raise :class:`~pbt.errors.SpecError` naming the field when it cannot. Called when a study
        file is loaded to be run, not when a stored study is only read (status, report), so
        those work on a machine without them. Default: nothing to import."""
        return None

    def required_metrics(self) -> list[str]:
        """Metrics besides the objective that every evaluation must report, because the policy's
        decisions read them: the study's other objectives by default. A trial whose evaluation
        misses one fails with a study-scoped error (every trial would miss it), so the study ends
        at its first result instead of ranking every member as the worst."""
        return [o.metric for o in self.spec.further_objectives]

    @abstractmethod
    def suggest(self, trials: Sequence[Trial], k: int) -> list[Suggestion]:
        """Up to ``k`` new trials given every trial so far (in creation order); [] when done."""

    def should_stop(self, trial: Trial, trials: Sequence[Trial]) -> str | None:
        """Why running ``trial`` should stop, judged on its latest intermediate evaluation, or None.

        The controller asks once per intermediate evaluation of every running trial, in step
        order — also for evaluations of a trial whose result arrived before they were judged, so
        a fast trial is judged exactly like a slow one. For a decision that is the same in every
        run of a seed, compare ``trial`` only with :meth:`peers`. Default: never stop.
        """
        return None

    def early_stop(self, trials: Sequence[Trial]) -> list[EarlyStopDecision]:
        """Running trials that should stop now, each with its reason (the paper's
        GetEarlyStoppingTrials). Default: :meth:`should_stop` on each running trial that has
        reported an evaluation. The controller calls :meth:`should_stop` itself when a policy
        overrides it, and this method every tick when a policy overrides only this one."""
        out = []
        for trial in trials:
            if trial.status is TrialStatus.RUNNING and trial.metrics:
                reason = self.should_stop(trial, trials)
                if reason is not None:
                    out.append(EarlyStopDecision(trial.id, reason, trial.metrics[-1].step))
        return out

    def peers(self, trial: Trial, trials: Sequence[Trial]) -> list[Trial]:
        """Usable trials an early-stopping decision about ``trial`` may compare it with.

        In deterministic ordering, the trials the policy had seen when ``trial`` was created
        (numbered below its ``metadata.created_after``): they are final, so the decision is the
        same in every run of the seed, embedded or distributed, however fast the workers are.
        In arrival ordering, every usable trial seen so far.
        """
        if self.spec.execution.ordering == "deterministic":
            limit = min(int(trial.metadata.get("created_after", 0)), len(trials))
            return [t for t in trials[:limit] if t.usable]
        return [t for t in trials if t.usable and t.id != trial.id]

    def parent_candidates(self, trials: Sequence[Trial]) -> set[str]:
        """Trials whose checkpoints a future suggestion may warm-start from (kept by GC).

        The default keeps every usable trial, which is always safe; policies that know their
        window override it so long studies do not keep every checkpoint forever.
        """
        return {t.id for t in trials if t.usable}

    # Helpers shared by the built-in policies -------------------------------------------

    def rng(self, trials: Sequence[Trial], salt: int = 0) -> np.random.Generator:
        """A generator determined by the seed and how many trials exist: same input, same draws."""
        return np.random.default_rng([self.spec.seed, len(trials), salt])

    def fitness(self, trial: Trial) -> float:
        """Larger is better; only meaningful for usable trials."""
        assert trial.objective is not None
        return self.objective.sign() * trial.objective

    def committed_steps(self, trials: Sequence[Trial]) -> int:
        """Steps held against ``budget.total_steps`` (see :func:`pbt.controller.view.committed`)."""
        return TrialView.of(trials).committed_steps

    def room(self, trials: Sequence[Trial]) -> Room:
        """What the budget still admits after ``trials``: ask it once per suggestion."""
        return Room(self.budget.max_trials, self.budget.total_steps, len(trials), self.committed_steps(trials))

    def room_for(self, trials: Sequence[Trial], new: Sequence[Suggestion], steps: int) -> bool:
        """Whether the budget admits one more trial of ``steps`` after ``new`` suggestions."""
        room = self.room(trials)
        return all(room.take(s.steps) for s in new) and room.fits(steps)


class FromScratch(Policy):
    """Base of the baselines whose trials each train from scratch (random, grid, bayes).

    No trial is ever a parent, so garbage collection may drop every checkpoint but the best
    lineage's; and each trial gets an equal share of the step budget, as in the paper.
    """

    def parent_candidates(self, trials: Sequence[Trial]) -> set[str]:
        return set()

    def resolve_num_trials(self, num_trials: int | None) -> int:
        n = num_trials or self.budget.max_trials
        if n is None:
            raise ValueError(f"{self.spec.algorithm.name} needs algorithm.options.num_trials or budget.max_trials")
        return n

    def share_steps(self, num_trials: int, steps_per_trial: int | None) -> int:
        """``steps_per_trial`` if given, else ``total_steps / num_trials``."""
        steps = steps_per_trial
        if steps is None:
            if self.budget.total_steps is None:
                raise ValueError(
                    f"{self.spec.algorithm.name} needs algorithm.options.steps_per_trial or budget.total_steps"
                )
            steps = self.budget.total_steps // num_trials
        if steps < 1:
            raise ValueError(f"budget.total_steps is smaller than the number of trials ({num_trials})")
        return steps
