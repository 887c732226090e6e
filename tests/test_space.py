"""Sampling and exploring stay inside the search space and move the way the paper says."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from pbt.controller.evolution import Reproduction
from pbt.space import CategoricalParam, DiscreteParam, FloatParam, IntParam, Parameter

parse = TypeAdapter(Parameter).validate_python


def test_log_float_samples_are_spread_over_decades():
    p = parse({"type": "float", "low": 1e-5, "high": 1e-1, "scale": "log"})
    rng = np.random.default_rng(0)
    xs = np.array([p.sample(rng) for _ in range(4000)])
    assert xs.min() >= 1e-5 and xs.max() <= 1e-1
    # Uniform in log space: each decade gets about a quarter of the draws.
    counts = np.histogram(np.log10(xs), bins=[-5, -4, -3, -2, -1])[0] / len(xs)
    assert np.all(np.abs(counts - 0.25) < 0.04)


@given(st.floats(0.0, 1.0), st.integers(0, 10_000))
def test_float_perturb_is_x08_or_x12_clipped(value, seed):
    p = FloatParam(type="float", low=0.0, high=1.0)
    new = p.perturb(value, np.random.default_rng(seed), (0.8, 1.2))
    assert 0.0 <= new <= 1.0
    assert math.isclose(new, value * 0.8) or math.isclose(new, min(value * 1.2, 1.0))


@given(st.integers(1, 50), st.integers(0, 10_000))
def test_int_perturb_always_moves_unless_clipped(value, seed):
    p = IntParam(type="int", low=1, high=50)
    new = p.perturb(value, np.random.default_rng(seed), (0.8, 1.2))
    assert isinstance(new, int) and 1 <= new <= 50
    assert new != value or value in (1, 50)


def test_discrete_moves_to_a_neighbour_and_categorical_resamples():
    d = DiscreteParam(type="discrete", values=[16, 32, 64, 128])
    rng = np.random.default_rng(1)
    moves = {d.perturb(32, rng, (0.8, 1.2)) for _ in range(50)}
    assert moves == {16, 64}
    assert {d.perturb(16, rng, (0.8, 1.2)) for _ in range(20)} == {32}  # the edge has one neighbour
    assert all(isinstance(v, int) for v in moves)
    c = CategoricalParam(type="categorical", values=["relu", "gelu", "tanh"])
    assert {c.perturb("relu", rng, (0.8, 1.2)) for _ in range(100)} == {"relu", "gelu", "tanh"}


def test_reproduction_resamples_with_the_given_probability():
    space = {"x": FloatParam(type="float", low=0.0, high=1.0)}
    rng = np.random.default_rng(3)
    always = Reproduction(space, resample_probability=1.0)
    never = Reproduction(space, resample_probability=0.0)
    perturbed = [never.explore({"x": 0.5}, rng)["x"] for _ in range(50)]
    assert set(np.round(perturbed, 9)) == {0.4, 0.6}
    resampled = [always.explore({"x": 0.5}, rng)["x"] for _ in range(50)]
    assert len(set(resampled)) == 50


@pytest.mark.parametrize(
    "param",
    [
        {"type": "float", "low": 0.001, "high": 10, "scale": "log"},
        {"type": "int", "low": 1, "high": 1000, "scale": "log"},
        {"type": "int", "low": -3, "high": 3},
        {"type": "discrete", "values": [0.1, 0.5, 2.5]},
        {"type": "categorical", "values": ["a", "b"]},
    ],
)
def test_samples_and_perturbations_stay_in_the_space(param):
    p = parse(param)
    rng = np.random.default_rng(0)
    for _ in range(300):
        v = p.sample(rng)
        assert p.contains(v), v
        assert p.contains(p.perturb(v, rng, (0.8, 1.2)))
        if param["type"] != "categorical":
            assert -1e-9 <= p.to_unit(v) <= 1 + 1e-9
