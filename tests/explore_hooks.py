"""Explore hooks for the tests (``algorithm.options.explore: explore_hooks:NAME``): one good, the
rest each wrong in one way a user's function could be."""

from __future__ import annotations


def mirror(params, space, rng):
    """A legitimate hook: reflect numbers inside their range, draw categories from ``rng``, keep
    what is not mutable."""
    child = {}
    for name, p in space.items():
        value = params[name]
        if not p.mutable:
            child[name] = value
        elif p.type == "float":
            child[name] = p.low + p.high - value
        elif p.type == "int":
            child[name] = int(p.low + p.high - value)
        else:
            child[name] = p.sample(rng)
    return child


def out_of_range(params, space, rng):
    return {**params, "h0": 2.0}


def wrong_type(params, space, rng):
    return {**params, "h0": "0.5"}


def a_bool(params, space, rng):
    return {**params, "h0": True}


def nan(params, space, rng):
    return {**params, "h0": float("nan")}


def missing(params, space, rng):
    return {k: v for k, v in params.items() if k != "h1"}


def extra(params, space, rng):
    return {**params, "momentum": 0.9}


def not_a_mapping(params, space, rng):
    return list(params.values())


def raises(params, space, rng):
    raise RuntimeError("the hook's own bug")


def one_argument(params):
    return params


def keyword_only(params, space, *, rng):
    return params


def with_defaults(params, space=None, rng=None, scale=1.0):
    return params


NOT_CALLABLE = 3


def change_everything(params, space, rng):
    """Moves every parameter, architecture choices (mutable: false) included."""
    return {name: p.sample(rng) if p.type == "categorical" else p.low for name, p in space.items()}
