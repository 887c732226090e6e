"""Bayesian optimisation: the paper's GP-bandit baseline, with Optuna's ``GPSampler`` inside.

Like random search, each trial draws hyperparameters once and trains from scratch for its share
of the budget (``total_steps / num_trials``); what changes is *where* it draws them: after
``n_startup_trials`` random trials, a Gaussian process fitted to every finished trial proposes
the point of highest (log) expected improvement. That is the Vizier default the paper compares
against, and Optuna keeps a well-tested implementation of it, so this file only translates.

The policy stays stateless, as every policy must: each call rebuilds an in-memory Optuna
study from the trial list (completed trials with their objective, failed ones as failed,
stopped ones as pruned) and asks it for up to ``k`` points, seeding the sampler from
``(seed, len(trials))`` so the same trial list always gets the same answer.

**Parallel suggestions.** Trials still running (and, with deterministic ordering, finished but
not yet applied ones, which the controller shows as running) must push new points away from
themselves, or every free worker would train the same learning rate. Two ways, chosen by
``parallel``:

* ``running`` (``auto`` on Optuna >= 5) — they enter the study as RUNNING trials, and
  ``GPSampler`` uses q-batch log EI, which integrates over their unknown outcomes under the GP.
  What earlier versions do with running trials varies (ignored at first, a liar of their own
  later), so ``auto`` does not rely on it there.
* ``constant_liar`` (``auto`` before Optuna 5) — they enter as completed with a made-up value,
  the worst objective seen so far (the pessimistic liar, as Optuna's TPE uses): the GP's mean
  there is pulled towards the worst and its variance shrinks, so expected improvement moves
  elsewhere. Lies are added only once the real completed trials reach ``n_startup_trials``, so
  they never end the random phase early. Faster (no Monte Carlo), but it over-explores: on a
  1-D quadratic with k=4 it sent two of its seven GP-guided points to a bound, q-batch EI none.

Either way a point that lands on an unfinished one is replaced by a draw from the prior: when
the acquisition is flat away from the incumbent, greedy q-batch EI can settle on a pending point
itself (seen on the toy problem, optimum on a corner), and a second copy in flight teaches the
GP nothing.

Within one call the ``k`` points are asked one after another, each left RUNNING (or lied about)
for the next. Optuna is imported when the policy is built, so a study file naming ``bayes``
without it installed fails validation with the command that fixes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from pydantic import Field

from pbt.controller.policy import FromScratch, Options
from pbt.errors import SpecError
from pbt.space import CategoricalParam, DiscreteParam, FloatParam, IntParam, Value, _Param, sample_params
from pbt.trial import Suggestion, Trial, TrialStatus

INSTALL_HINT = "pip install 'pbt[wavenet]'"


class BayesOptions(Options):
    num_trials: int | None = Field(default=None, gt=0, description="default: budget.max_trials")
    steps_per_trial: int | None = Field(default=None, gt=0, description="default: total_steps / num_trials")
    n_startup_trials: int | None = Field(
        default=None, ge=1, description="random trials before the GP; default: num_trials // 4, within [2, 10]"
    )
    parallel: Literal["auto", "running", "constant_liar"] = Field(
        default="auto", description="how unfinished trials steer new points; auto: running on Optuna >= 5"
    )


def _import_optuna() -> Any:
    try:
        import optuna
        import optuna.samplers  # GPSampler lives here
    except ImportError as exc:
        raise SpecError(
            f"algorithm.name: 'bayes' needs optuna (and torch, scipy) for its Gaussian process: {INSTALL_HINT} ({exc})"
        ) from None
    if not hasattr(optuna.samplers, "GPSampler"):
        raise SpecError(f"algorithm.name: 'bayes' needs optuna >= 4.0 (found {optuna.__version__}): {INSTALL_HINT}")
    return optuna


class BayesianOptimization(FromScratch):
    Options = BayesOptions
    options: BayesOptions

    def __init__(self, spec) -> None:
        super().__init__(spec)
        if len(spec.objectives) > 1:
            raise ValueError("bayes optimises one objective; give `objective` a single {metric, mode} "
                             "(several objectives: use pbt, which ranks by Pareto dominance)")
        self.optuna = _import_optuna()
        self.num_trials = self.resolve_num_trials(self.options.num_trials)
        self.steps_per_trial = self.share_steps(self.num_trials, self.options.steps_per_trial)
        self.n_startup = self.options.n_startup_trials or min(10, max(2, self.num_trials // 4))
        parallel = self.options.parallel
        if parallel == "auto":
            major = int(self.optuna.__version__.split(".")[0])
            parallel = "running" if major >= 5 else "constant_liar"
        self.parallel = parallel
        self.distributions = {name: _distribution(self.optuna, p) for name, p in self.space.items()}

    def suggest(self, trials: Sequence[Trial], k: int) -> list[Suggestion]:
        count = 0
        room = self.room(trials)
        while count < k and len(trials) + count < self.num_trials and room.take(self.steps_per_trial):
            count += 1
        if count == 0:
            return []  # no Optuna study to build: the common call once the budget is spent
        seed = int(self.rng(trials).integers(2**31 - 1))
        fallback = self.rng(trials, salt=1)
        unfinished = [t.params for t in trials if not t.status.terminal]
        state = self.optuna.trial.TrialState
        out: list[Suggestion] = []
        with _quiet(self.optuna):
            study, lie = self._study(trials, seed)
            for _ in range(count):
                asked = study.ask(fixed_distributions=self.distributions)
                params = {name: _from_optuna(p, asked.params[name]) for name, p in self.space.items()}
                if any(self._same_point(params, other) for other in unfinished):  # see module docstring
                    params = sample_params(self.space, fallback)
                    study.tell(asked, state=state.FAIL)
                    if self.parallel == "running":
                        study.add_trial(self._frozen(self._to_optuna(params), state.RUNNING))
                    elif lie is not None:
                        study.add_trial(self._frozen(self._to_optuna(params), state.COMPLETE, value=lie))
                elif self.parallel == "constant_liar":
                    if lie is None:  # random phase: nothing to lie with, and nothing needs it
                        study.tell(asked, state=state.FAIL)
                    else:
                        study.tell(asked, lie)
                unfinished.append(params)
                out.append(Suggestion(params=params, steps=self.steps_per_trial))
        return out

    def _same_point(self, a: dict[str, Value], b: dict[str, Value]) -> bool:
        return all(n in b and abs(p.to_unit(a[n]) - p.to_unit(b[n])) < 1e-3 for n, p in self.space.items())

    # Building the study ---------------------------------------------------------------------

    def _study(self, trials: Sequence[Trial], seed: int) -> tuple[Any, float | None]:
        """The trial list as an Optuna study, and the constant liar's value (None: no lies yet)."""
        optuna = self.optuna
        sampler = optuna.samplers.GPSampler(seed=seed, n_startup_trials=self.n_startup, warn_independent_sampling=False)
        direction = "minimize" if self.objective.mode == "min" else "maximize"
        study = optuna.create_study(direction=direction, sampler=sampler)
        state = optuna.trial.TrialState
        finished = [t for t in trials if t.usable]
        lie = None
        if self.parallel == "constant_liar" and len(finished) >= self.n_startup:
            lie = min(finished, key=self.fitness).objective
        frozen = []
        for t in trials:
            params = self._to_optuna(t.params)
            if params is None:
                continue  # a value outside today's space (a hand-edited record): nothing to learn from it
            if t.usable:
                frozen.append(self._frozen(params, state.COMPLETE, value=t.objective))
            elif t.status is TrialStatus.STOPPED:
                frozen.append(self._frozen(params, state.PRUNED))
            elif t.status.terminal:  # failed, or completed with a non-finite objective
                frozen.append(self._frozen(params, state.FAIL))
            elif self.parallel == "running":
                frozen.append(self._frozen(params, state.RUNNING))
            elif lie is not None:
                frozen.append(self._frozen(params, state.COMPLETE, value=lie))
        study.add_trials(frozen)
        return study, lie

    def _frozen(self, params: dict[str, Any], state: Any, value: float | None = None) -> Any:
        return self.optuna.trial.create_trial(state=state, value=value, params=params, distributions=self.distributions)

    def _to_optuna(self, params: dict[str, Value]) -> dict[str, Any] | None:
        out = {}
        for name, p in self.space.items():
            if name not in params or not p.contains(params[name]):
                return None
            out[name] = _to_optuna(p, params[name])
        return out


# Parameter types <-> Optuna distributions ------------------------------------------------------
#
# Discrete parameters become the *index* into their ordered values (an IntDistribution): the GP
# keeps their order, which a categorical would throw away, and for evenly spaced values the index
# is an affine map of the value, which the GP's [0, 1] normalisation makes identical to a stepped
# FloatDistribution, without that distribution's float-divisibility pitfalls.


def _distribution(optuna: Any, p: _Param) -> Any:
    d = optuna.distributions
    if isinstance(p, FloatParam):
        return d.FloatDistribution(float(p.low), float(p.high), log=p.scale == "log")
    if isinstance(p, IntParam):
        return d.IntDistribution(int(p.low), int(p.high), log=p.scale == "log")
    if isinstance(p, DiscreteParam):
        return d.IntDistribution(0, len(p.values) - 1)
    if isinstance(p, CategoricalParam):
        return d.CategoricalDistribution(list(p.values))
    raise TypeError(f"bayes: unsupported parameter type {type(p).__name__}")


def _to_optuna(p: _Param, value: Value) -> Any:
    if isinstance(p, DiscreteParam):
        return p._index(value)
    if isinstance(p, FloatParam):
        return float(value)
    if isinstance(p, IntParam):
        return int(value)
    return value


def _from_optuna(p: _Param, value: Any) -> Value:
    if isinstance(p, DiscreteParam):
        return p.sample_value(int(value))
    if isinstance(p, FloatParam):
        return float(min(max(float(value), p.low), p.high))
    if isinstance(p, IntParam):
        return int(value)
    return str(value)


@contextlib.contextmanager
def _quiet(optuna: Any) -> Iterator[None]:
    """Silence Optuna's per-study INFO lines (one study per call) without changing it for the caller."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)
