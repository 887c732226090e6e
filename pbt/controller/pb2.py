"""PB2: explore with a time-varying Gaussian-process bandit instead of random perturbation.

Parker-Holder et al., "Provably Efficient Online Hyperparameter Optimization with
Population-Based Bandits" (NeurIPS 2020). PBT's explore step multiplies the copied values by
0.8 or 1.2; with a small population most of those random steps are wasted. PB2 instead models
*how much a trial improves over one interval* as a function of its hyperparameters and of time,
and picks the child's values where that model is optimistic (upper confidence bound). This
module implements it for PBT's numeric parameters (``float`` and ``int``); discrete and
categorical parameters keep the ``perturb`` rules (:mod:`pbt.controller.explore`), and
``mutable: false`` ones their parent's value.

**Data.** Every recent trial that trained an interval from a known starting value gives one
observation: ``x`` = its numeric hyperparameters mapped to [0, 1] (``param.to_unit``, so log
parameters are modelled in log space) and the lineage step its interval began at (time); ``y`` =
the improvement per step, ``(fitness at its end − fitness it started from) / steps``, where the
start is its parent's fitness (the checkpoint it warm-started from) — or, for a trial trained
from scratch, its own first intermediate evaluation — and the end is its final fitness, or its
last evaluation before an early stop. Only the most recent ``pb2_window`` observations are used
(as PB2 does), found by walking back from the newest trial over at most ``4 × pb2_window``
trials, so the cost of a decision does not grow with the study. Time is scaled to [0, 1] over
the window and ``y`` is standardised.

**Model.** scikit-learn's :class:`~sklearn.gaussian_process.GaussianProcessRegressor` with the
kernel ``C × RBF(x) × exp(−|t − t′| / ℓ_t) + white noise``. The time factor is PB2's
time-varying kernel, ``(1 − ε)^{|t − t′|/2}`` with ``ε ≤ 0.5``, written as a Matérn-½ kernel on
the time column (``ℓ_t = −2 / ln(1 − ε) ≥ 2.885``): old observations count less where the
landscape drifts, as a learning rate's best value does during training. scikit-learn kernels act
on every column, so the RBF's length scale on the time column and the Matérn's on the
hyperparameter columns are fixed at 1e5 (their factor is 1 to within 1e-9 over [0, 1]); the
kernel's other hyperparameters are fitted by maximum likelihood (L-BFGS-B, bounded iterations),
the RBF length scales capped at 1 as PB2 caps them.

**Choice.** ``UCB(x) = μ(x, t) + κ σ(x, t)`` at the child's time ``t`` (its parent's lineage
steps), with PB2's ``κ = √(0.2 + max(0, ln(0.4 n)))`` for ``n`` observations. ``σ`` comes from the
same kernel conditioned also on the trials still running and on the children already chosen in
this ``suggest`` call (whose outcomes are unknown): their variance collapses, so parallel
children spread out instead of all taking the same value (GP-BUCB, Desautels et al. 2014, as
PB2 does). The acquisition is maximised over the unit box: 512 random candidates from the
policy's generator plus the parent's own values, the best three refined by L-BFGS-B. Everything
is a function of the trial list and the seeded generator, so the same seed gives the same
children. With fewer than ``MIN_OBSERVATIONS`` observations (the first generation) or when
the fit fails, numeric parameters are perturbed as with ``perturb``.

scikit-learn is imported when the policy first explores, never by policies that do not use PB2;
a study file that names ``explore: pb2`` without it installed fails validation with the command
that fixes it (``pip install 'pbt[pb2]'``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pbt.controller.evolution import Reproduction
from pbt.controller.view import TrialView
from pbt.errors import SpecError, StudyFailedError
from pbt.space import FloatParam, IntParam, SearchSpace, Value
from pbt.trial import MetricReport, Trial, TrialStatus

INSTALL_HINT = "pip install 'pbt[pb2]'"
MIN_OBSERVATIONS = 4
CANDIDATES = 512
LOCAL_STARTS = 3
FIXED = 1e5  # length scale that makes a kernel factor ignore a column
TIME_SCALE_MIN = 2.0 / math.log(2.0)  # PB2's epsilon <= 0.5
FIT_ITERATIONS = 60
ACQ_ITERATIONS = 30
FD_STEP = 1e-5  # finite-difference step of the acquisition's gradient, in the unit box

Fitness = Callable[[Trial], float]
ReportFitness = Callable[[MetricReport], float]


def import_sklearn() -> Any:
    """scikit-learn's GP module, or SpecError with the install command."""
    try:
        import scipy.optimize  # noqa: F401 - scikit-learn's own dependency: L-BFGS-B
        from sklearn import gaussian_process
    except ImportError as exc:
        raise SpecError(
            f"algorithm.options.explore: 'pb2' needs scikit-learn for its Gaussian process: {INSTALL_HINT} ({exc})"
        ) from None
    return gaussian_process


@dataclass(frozen=True)
class Observation:
    x: tuple[float, ...]  # numeric hyperparameters in [0, 1]
    time: float  # lineage step the interval began at
    y: float  # improvement per step over the interval
    trial: str


def observations(
    view: TrialView, numeric: Sequence[str], space: SearchSpace, fitness: Fitness, report_fitness: ReportFitness,
    window: int,
) -> tuple[list[Observation], list[tuple[tuple[float, ...], float]]]:
    """The last ``window`` observations, oldest first, and the points still running (x, time).

    Walks back from the newest trial over at most ``4 × window`` trials (see the module docstring).
    """
    data: list[Observation] = []
    running: list[tuple[tuple[float, ...], float]] = []
    for i in range(len(view) - 1, max(-1, len(view) - 1 - 4 * window), -1):
        trial = view[i]
        x = _unit(trial.params, numeric, space)
        if x is None:
            continue  # a value outside today's space (a hand-edited record): nothing to learn from it
        if not trial.status.terminal:
            running.append((x, float(trial.start_lineage_steps)))
            continue
        if len(data) >= window:
            continue
        interval = _interval(trial, view, fitness, report_fitness)
        if interval is not None:
            start_step, y = interval
            data.append(Observation(x, float(trial.start_lineage_steps + start_step), y, trial.id))
    data.reverse()
    running.reverse()
    return data, running


def _unit(params: dict[str, Value], numeric: Sequence[str], space: SearchSpace) -> tuple[float, ...] | None:
    out = []
    for name in numeric:
        value = params.get(name)
        if value is None or not space[name].contains(value):
            return None
        out.append(float(space[name].to_unit(value)))
    return tuple(out)


def _interval(
    trial: Trial, view: TrialView, fitness: Fitness, report_fitness: ReportFitness
) -> tuple[int, float] | None:
    """(step of the start within the trial, improvement per step) of an ended trial, or None."""
    if trial.usable:
        end_step, end = trial.steps_done, fitness(trial)
    elif trial.status is TrialStatus.STOPPED and trial.metadata.get("stop_step") is not None:
        stop = int(trial.metadata["stop_step"])
        before = [m for m in trial.metrics if m.step <= stop]
        if not before:
            return None
        end_step, end = before[-1].step, report_fitness(before[-1])
    else:
        return None  # failed, diverged, or stopped when the study ended: no interval measured
    if trial.parent is not None:
        parent = view.get(trial.parent)
        if parent is None or not parent.usable:
            return None
        start_step, start = 0, fitness(parent)
    else:
        first = next((m for m in trial.metrics if m.step < end_step), None)
        if first is None:
            return None
        start_step, start = first.step, report_fitness(first)
    if end_step <= start_step or not (math.isfinite(start) and math.isfinite(end)):
        return None
    return start_step, (end - start) / (end_step - start_step)


@dataclass
class PB2:
    """The ``pb2`` explore rule (see the module docstring)."""

    space: SearchSpace
    reproduction: Reproduction  # discrete and categorical parameters, and the fallback
    fitness: Fitness
    report_fitness: ReportFitness
    window: int = 32

    def __post_init__(self) -> None:
        # mutable: false parameters keep the parent's value (Reproduction does that), so no model.
        self.numeric = [n for n, p in self.space.items() if isinstance(p, (FloatParam, IntParam)) and p.mutable]
        self._gp: Any = None

    @property
    def gp(self) -> Any:
        if self._gp is None:
            try:
                self._gp = import_sklearn()
            except SpecError as exc:  # checked when the study file loaded; gone from this process since
                raise StudyFailedError(str(exc)) from None
        return self._gp

    def session(self, view: TrialView) -> PB2Session:
        return PB2Session(self, view)


@dataclass
class PB2Session:
    """One ``suggest`` call: the model is fitted at the first child, then reused."""

    rule: PB2
    view: TrialView
    fitted: bool = False
    model: Any = None  # (GaussianProcessRegressor, time scaling, n) once fitted; None: too little data
    pending: list[tuple[tuple[float, ...], float]] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    last_choice: dict[str, Any] = field(default_factory=dict)  # for tests and logs: what the last child saw

    def explore(self, parent: Trial, rng: np.random.Generator) -> dict[str, Value]:
        rule = self.rule
        child = rule.reproduction.explore(dict(parent.params), rng)  # discrete, categorical: the usual rules
        if not rule.numeric:
            return child
        if not self.fitted:
            self.fitted = True
            self._fit()
        if self.model is None:
            self.last_choice = {"model": False}
            return child
        time = float(parent.lineage_steps)
        start = _unit(parent.params, rule.numeric, rule.space)
        u = self._maximise(time, start, rng)
        self.pending.append((tuple(float(v) for v in u), time))
        for name, value in zip(rule.numeric, u):
            p = rule.space[name]
            raw = p.from_unit(float(value))
            child[name] = int(min(max(round(raw), p.low), p.high)) if isinstance(p, IntParam) else float(raw)
        _, t0, span, *_ = self.model
        self.last_choice = {"model": True, "unit": [float(v) for v in u], "time": time, "time_unit": (time - t0) / span}
        return child

    # The model ------------------------------------------------------------------------------

    def _fit(self) -> None:
        rule = self.rule
        data, running = observations(self.view, rule.numeric, rule.space, rule.fitness, rule.report_fitness,
                                     rule.window)
        self.pending = list(running)
        self.observations = data
        if len(data) < MIN_OBSERVATIONS:
            return
        times = np.array([o.time for o in data])
        t0, span = float(times.min()), max(float(times.max() - times.min()), 1.0)
        X = np.array([[*o.x, (o.time - t0) / span] for o in data])
        y = np.array([o.y for o in data])
        y = (y - y.mean()) / y.std() if y.std() > 0 else y - y.mean()
        gp = self.rule.gp
        k = gp.kernels
        d = len(rule.numeric)
        kernel = (
            k.ConstantKernel(1.0, (1e-2, 1e2))
            * k.RBF([0.5] * d + [FIXED], [(0.05, 1.0)] * d + [(FIXED, FIXED)])
            * k.Matern([FIXED] * d + [4.0], [(FIXED, FIXED)] * d + [(TIME_SCALE_MIN, 1e3)], nu=0.5)
            + k.WhiteKernel(0.1, (1e-4, 1.0))
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # bounds reached (the fixed columns always are)
                model = gp.GaussianProcessRegressor(kernel, alpha=1e-8, optimizer=_bounded_lbfgs).fit(X, y)
        except (np.linalg.LinAlgError, ValueError):
            return  # a degenerate window: perturb this time
        self.model = (model, t0, span, len(data), X, y)

    def _variance_model(self) -> Any:
        """The fitted kernel conditioned also on the points whose outcome is unknown."""
        model, t0, span, _, X, y = self.model
        if not self.pending:
            return model
        P = np.array([[*x, (t - t0) / span] for x, t in self.pending])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return self.rule.gp.GaussianProcessRegressor(model.kernel_, alpha=1e-8, optimizer=None).fit(
                np.vstack([X, P]), np.concatenate([y, np.zeros(len(P))])
            )

    def _maximise(self, time: float, start: tuple[float, ...] | None, rng: np.random.Generator) -> np.ndarray:
        model, t0, span, n, _, _ = self.model
        variance = self._variance_model()
        kappa = math.sqrt(0.2 + max(0.0, math.log(0.4 * n)))
        tu = (time - t0) / span
        d = len(self.rule.numeric)

        def ucb(Z: np.ndarray) -> np.ndarray:
            Zt = np.hstack([Z, np.full((len(Z), 1), tu)])
            mean = model.predict(Zt)
            _, std = variance.predict(Zt, return_std=True)
            return mean + kappa * std

        candidates = rng.random((CANDIDATES, d))
        if start is not None:
            candidates = np.vstack([np.array(start)[None, :], candidates])
        scores = ucb(candidates)
        order = np.argsort(-scores, kind="stable")
        best, best_score = candidates[order[0]], float(scores[order[0]])
        from scipy.optimize import minimize

        def negative_and_gradient(z: np.ndarray) -> tuple[float, np.ndarray]:
            # Forward differences, all d + 1 points in one prediction (stepping inwards at a bound).
            h = np.where(z + FD_STEP <= 1.0, FD_STEP, -FD_STEP)
            scores = ucb(np.vstack([z, z + np.diag(h)]))
            return -float(scores[0]), -(scores[1:] - scores[0]) / h

        for i in order[:LOCAL_STARTS]:
            res = minimize(negative_and_gradient, candidates[i], jac=True, method="L-BFGS-B",
                           bounds=[(0.0, 1.0)] * d, options={"maxiter": ACQ_ITERATIONS})
            z = np.clip(res.x, 0.0, 1.0)
            score = float(ucb(z[None, :])[0])
            if score > best_score:
                best, best_score = z, score
        return best


def _bounded_lbfgs(objective: Callable, theta: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, float]:
    """scikit-learn's default optimiser with an iteration cap: a decision's cost stays bounded."""
    from scipy.optimize import minimize

    res = minimize(objective, theta, jac=True, bounds=bounds, method="L-BFGS-B",
                   options={"maxiter": FIT_ITERATIONS})
    return res.x, float(res.fun)
