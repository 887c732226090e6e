"""A bad study file fails before anything runs, naming the field and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import TOY, toy_data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pbt.errors import SpecError
from pbt.study_file import load_spec, parse_spec
from pbt.urls import redact_url

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_example_toy_study_is_valid():
    spec = load_spec(EXAMPLES / "toy.yaml")
    assert spec.name == "toy"
    assert spec.objective.mode == "max"
    assert set(spec.parameters) == {"h0", "h1"}


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"parameters": {"h0": {"type": "float", "low": 1.0, "high": 0.5}}}, "parameters.h0", "must be < high"),
        ({"parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0, "scale": "log"}}}, "parameters.h0",
         "log scale needs low > 0"),
        ({"parameters": {"h0": {"type": "int", "low": 1.5, "high": 4}}}, "parameters.h0.low", "integer"),
        ({"parameters": {"h0": {"type": "categorical", "values": []}}}, "parameters.h0.values", "at least 1"),
        ({"parameters": {"h0": {"type": "discrete", "values": [1, 3, 2]}}}, "parameters.h0", "strictly increasing"),
        ({"parameters": {"h0": {"type": "banana"}}}, "parameters.h0", "unknown type"),
        ({"parameters": {"h0": {"type": "float", "low": 0, "high": 1, "sclae": "log"}}}, "parameters.h0.sclae",
         "Extra inputs"),
        ({"algorithm": {"name": "annealing"}}, "algorithm.name", "unknown algorithm"),
        ({"algorithm": {"options": {"population_size": 1}}}, "algorithm.options.population_size", "greater than"),
        ({"algorithm": {"options": {"perturb_factors": [1.2, 0.8]}}}, "algorithm.options", "perturb_factors"),
        ({"trainer": {"path": "no_such_module_xyz:Trainer"}}, "trainer.path", "cannot import"),
        ({"trainer": {"path": "pbt.trainers.toy:Nope"}}, "trainer.path", "no attribute"),
        ({"trainer": {"path": "pbt.trainers.toy"}}, "trainer.path", "package.module:ClassName"),
        ({"name": "../escape"}, "name", "invalid study name"),
        ({"budget": {"total_steps": -5}}, "budget.total_steps", "greater than 0"),
        ({"objective": {"metric": "q", "mode": "maximise"}}, "objective.mode", "'min' or 'max'"),
        ({"execution": {"parallelism": 0}}, "execution.parallelism", "greater than or equal to 1"),
        ({"storage": "ftp://host/x"}, "storage", "unsupported scheme"),
        ({"colour": "blue"}, "colour", "Extra inputs"),
    ],
)
def test_invalid_field_is_named_with_its_reason(change, field, reason):
    data = toy_data(**{k: v for k, v in change.items() if k != "parameters"})
    data["parameters"].update(change.get("parameters", {}))  # replace a parameter whole, not merged
    if "storage" in change:  # storage is validated when opened; parse + open like `pbt run` does
        from pbt.storage import normalize_uri

        with pytest.raises(SpecError, match=reason):
            normalize_uri(parse_spec(data).storage)
        return
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    message = str(info.value)
    assert field in message, message
    assert reason in message, message


def test_missing_budget_and_mode_are_reported_together():
    data = toy_data()
    del data["budget"]
    del data["objective"]["mode"]
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    assert "budget: Field required" in str(info.value)
    assert "objective.mode: Field required" in str(info.value)


def test_budget_too_small_for_random_search_fails_early():
    data = toy_data(budget={"total_steps": 10})
    data["algorithm"] = {"name": "random", "options": {"num_trials": 50}}
    with pytest.raises(SpecError, match="smaller than the number of trials"):
        parse_spec(data)


def test_yaml_errors_and_missing_files(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(scalar)


def test_command_line_overrides_win_over_the_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(TOY))
    spec = load_spec(path, {"storage": str(tmp_path / "elsewhere"), "seed": 7, "broker": None})
    assert spec.seed == 7
    assert spec.storage == str(tmp_path / "elsewhere")


def test_broker_password_is_redacted_in_public_dict():
    spec = parse_spec(toy_data(broker="redis://:s3cret@redis.example:6379/0"))
    assert "s3cret" not in str(spec.public_dict())
    assert redact_url("rediss://user:pw@h:6380/1") == "rediss://user:***@h:6380/1"
    assert redact_url("redis://localhost:6379/0") == "redis://localhost:6379/0"


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=5))
_paths = st.sampled_from([
    ("name",), ("objective", "metric"), ("objective", "mode"), ("parameters", "h0", "low"),
    ("parameters", "h0", "high"),
    ("parameters", "h0", "type"), ("parameters", "h0", "scale"), ("algorithm", "name"),
    ("algorithm", "options", "population_size"), ("algorithm", "options", "steps_per_trial"), ("budget", "total_steps"),
    ("trainer", "path"), ("execution", "parallelism"), ("seed",), ("parameters",), ("budget",),
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=_paths, value=_scalars)
def test_any_corruption_is_either_valid_or_a_spec_error_naming_its_field(path, value):
    data = toy_data()
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    try:
        parse_spec(data)
    except SpecError as exc:
        assert path[0] in str(exc) or "invalid" in str(exc)
    # Anything else (TypeError, AttributeError, a pydantic error leaking out) fails the test.
