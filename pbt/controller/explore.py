"""Explore: how a child's hyperparameters derive from its parent's (PBT's reproduction part).

``algorithm.options.explore`` chooses the rule:

* ``perturb`` (the default) — :class:`~pbt.controller.evolution.Reproduction`: each parameter
  is resampled from the prior with ``resample_probability``, else numbers are multiplied by one
  of ``perturb_factors``, discrete values step to a neighbour and categories are resampled;
* ``pb2`` — numeric parameters (``float``, ``int``) are chosen by a time-varying Gaussian-process
  bandit fitted to the improvement recent trials made (:mod:`pbt.controller.pb2`, Parker-Holder
  et al. 2020); discrete and categorical parameters keep the ``perturb`` rules;
* ``package.module:function`` — a function of the user's, called as
  ``function(params, space, rng)`` with a copy of the parent's hyperparameters, the search space
  (``{name: parameter}``, :mod:`pbt.space`) and the policy's seeded ``numpy`` generator, which
  returns the child's hyperparameters. It is resolved when the study file loads (importable,
  callable with those three arguments) and its answer is checked against the space at every
  use: a missing, extra or out-of-range value, a value of the wrong type, a changed
  ``mutable: false`` value, or an exception fails the study with a message naming the hook
  (:class:`~pbt.errors.StudyFailedError`). Draw every
  random number from ``rng``, never from ``random`` or ``numpy.random``'s global state, or the
  study is no longer reproducible from its seed.

A rule is asked through a :class:`Session`, one per ``suggest`` call, so that a rule which
models the population (PB2) fits its model once per call and sees the children it already
chose in that call.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from pbt.controller.evolution import Reproduction
from pbt.controller.view import TrialView
from pbt.errors import SpecError, StudyFailedError
from pbt.importing import import_object
from pbt.space import CategoricalParam, DiscreteParam, FloatParam, IntParam, SearchSpace, Value, _Param
from pbt.trial import Trial

BUILTIN_RULES = ("perturb", "pb2")
HOOK_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
FIELD = "algorithm.options.explore"

ExploreFunction = Callable[[dict[str, Value], SearchSpace, np.random.Generator], Any]


class Session(Protocol):
    def explore(self, parent: Trial, rng: np.random.Generator) -> dict[str, Value]:
        """The hyperparameters of a child that starts from ``parent``'s checkpoint."""


class Explorer(Protocol):
    def session(self, view: TrialView) -> Session:
        """A session for one ``suggest`` call on ``view``."""


class Perturb:
    """The default rule (:class:`~pbt.controller.evolution.Reproduction`); it needs no state."""

    def __init__(self, reproduction: Reproduction) -> None:
        self.reproduction = reproduction

    def session(self, view: TrialView) -> Perturb:
        return self

    def explore(self, parent: Trial, rng: np.random.Generator) -> dict[str, Value]:
        return self.reproduction.explore(dict(parent.params), rng)


def check_rule(value: str) -> str:
    """``explore``'s syntax: a built-in rule or an import path (resolved later, see :func:`load_hook`)."""
    if value in BUILTIN_RULES or HOOK_PATH.match(value):
        return value
    raise ValueError(f"expected {' or '.join(BUILTIN_RULES)}, or an import path 'package.module:function' "
                     f"(got {value!r})")


def load_hook(path: str) -> ExploreFunction:
    """The user's explore function at ``path``; SpecError naming the field when it cannot be one."""
    fn = import_object(path, FIELD, "package.module:function")
    if not callable(fn):
        raise SpecError(f"{FIELD}: {path!r} is a {type(fn).__name__}, not a function")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: judged when it is called
        return fn
    try:
        signature.bind(object(), object(), object())
    except TypeError as exc:
        raise SpecError(f"{FIELD}: {path!r} must accept (params, space, rng): {exc}") from None
    return fn


class Hook:
    """A user's explore function, its every answer checked against the space."""

    def __init__(self, path: str, space: SearchSpace) -> None:
        self.path = path
        self.space = space
        self._fn: ExploreFunction | None = None

    @property
    def fn(self) -> ExploreFunction:
        if self._fn is None:
            try:
                self._fn = load_hook(self.path)
            except SpecError as exc:  # validated at load; this is a process where it no longer imports
                raise StudyFailedError(str(exc)) from None
        return self._fn

    def session(self, view: TrialView) -> Hook:
        return self

    def explore(self, parent: Trial, rng: np.random.Generator) -> dict[str, Value]:
        try:
            child = self.fn(dict(parent.params), dict(self.space), rng)
        except Exception as exc:
            raise StudyFailedError(
                f"explore hook {self.path} raised {type(exc).__name__}: {exc} (parent {parent.id}, "
                f"params {dict(parent.params)})"
            ) from exc
        who = f"explore hook {self.path}"
        out = checked(child, self.space, who)
        for name, p in self.space.items():
            if not p.mutable and name in parent.params and out[name] != parent.params[name]:
                raise StudyFailedError(f"{who} changed {name} from {parent.params[name]!r} to {out[name]!r}, "
                                       "which is mutable: false (the child loads the parent's weights)")
        return out


def checked(params: Any, space: SearchSpace, who: str) -> dict[str, Value]:
    """``params`` as the trainer will get them (plain ``int``/``float``/``str``), or StudyFailedError
    saying what is wrong: not a mapping, a parameter missing or unknown, a value out of range or of
    the wrong type."""
    if not isinstance(params, Mapping):
        raise StudyFailedError(f"{who} returned {type(params).__name__}, not a mapping of parameter values")
    missing = [n for n in space if n not in params]
    unknown = [str(n) for n in params if n not in space]
    if missing or unknown:
        raise StudyFailedError(
            f"{who} returned the wrong parameters: "
            + "; ".join(part for part in (f"missing {missing}" if missing else "",
                                          f"not in the search space {unknown}" if unknown else "") if part)
        )
    return {name: _typed(name, p, params[name], who) for name, p in space.items()}


def _typed(name: str, p: _Param, value: Any, who: str) -> Value:
    def bad(why: str) -> StudyFailedError:
        return StudyFailedError(f"{who} returned {name}={value!r}: {why}")

    if isinstance(p, (FloatParam, IntParam)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad(f"expected a number in [{p.low:g}, {p.high:g}]")
        if isinstance(p, IntParam):
            if not isinstance(value, numbers.Integral):
                raise bad(f"expected an int in [{p.low}, {p.high}]")
            value = int(value)
        else:
            value = float(value)
        if not (math.isfinite(value) and p.low <= value <= p.high):
            raise bad(f"outside [{p.low:g}, {p.high:g}]")
        return value
    if isinstance(p, DiscreteParam):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not p.contains(float(value)):
            raise bad(f"expected one of {p.values}")
        return p.sample_value(p._index(float(value)))
    if isinstance(p, CategoricalParam):
        if not isinstance(value, str) or value not in p.values:
            raise bad(f"expected one of {p.values}")
        return str(value)
    raise TypeError(f"unknown parameter type {type(p).__name__}")
