"""Built-in policies, looked up by the study file's ``algorithm.name``.

A custom policy is plugged in by import path (``algorithm.name: mypkg.module:MyPolicy``),
no registry needed, as with Optuna's samplers.
"""

from __future__ import annotations

import importlib
from typing import Any

from pbt.controller.policy import Policy
from pbt.errors import SpecError
from pbt.spec import StudySpec

BUILTIN = {
    "pbt": "pbt.controller.policies.pbt:PBT",
    "random": "pbt.controller.policies.random_search:RandomSearch",
    "grid": "pbt.controller.policies.grid:GridSearch",
    "bayes": "pbt.controller.policies.bayes:BayesianOptimization",
}


def policy_class(name: str) -> type[Policy]:
    path = BUILTIN.get(name, name)
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise SpecError(f"algorithm.name: unknown algorithm {name!r}; expected one of {', '.join(BUILTIN)}")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SpecError(f"algorithm.name: cannot load policy {name!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise SpecError(f"algorithm.name: {name!r} is not a pbt.controller.policy.Policy subclass")
    return cls


def make_policy(spec: StudySpec) -> Policy:
    """The study's policy. A custom one (``package.module:MyPolicy``) has its suggestions checked
    against the search space, as an explore hook's are: a value out of range, of the wrong type, or
    a parameter missing or unknown ends the study with a message naming the policy and the value,
    instead of sending trainers hyperparameters the study file does not allow."""
    policy = policy_class(spec.algorithm.name)(spec)
    if spec.algorithm.name not in BUILTIN:
        policy.suggest = _checked_suggest(policy, spec)  # type: ignore[method-assign]
    return policy


def _checked_suggest(policy: Policy, spec: StudySpec) -> Any:
    from pbt.controller.explore import checked

    suggest = policy.suggest
    who = f"policy {spec.algorithm.name}"

    def checked_suggest(trials: Any, k: int) -> Any:
        out = suggest(trials, k)
        for s in out or ():
            checked(getattr(s, "params", s), spec.parameters, who)
        return out

    return checked_suggest


def validate_options(spec: StudySpec, *, check_imports: bool = True) -> dict[str, Any]:
    """Validate ``algorithm.options`` and build the policy once, so budget errors show early;
    with ``check_imports``, also import what it will need (:meth:`Policy.check_imports`)."""
    cls = policy_class(spec.algorithm.name)
    options = cls.Options.model_validate(spec.algorithm.options)  # ValidationError names the field
    try:
        policy = cls(spec)
    except ValueError as exc:
        field, sep, reason = str(exc).partition(": ")
        if sep and field in cls.Options.model_fields:  # the policy named the option: name it in full
            raise SpecError(f"algorithm.options.{field}: {reason}") from None
        raise SpecError(f"algorithm.options: {exc}") from None
    except SpecError:
        raise
    except Exception as exc:  # a custom policy's bug (an abstract method left out, a RuntimeError)
        raise SpecError(f"algorithm.name: policy {spec.algorithm.name!r} cannot be built: "
                        f"{type(exc).__name__}: {exc}") from None
    if check_imports:
        policy.check_imports()
    return options.model_dump(mode="json", exclude_unset=True)
