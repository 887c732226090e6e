"""Inputs a stranger or an attacker would try, each refused with one line naming the field and the
reason, the documented exit status, and nothing written (README, "Exit status")."""

from __future__ import annotations

import pytest
from helpers import toy_data

from pbt.errors import SpecError
from pbt.study_file import parse_spec
from pbt.testing import pbt, write_study
from pbt.urls import redact_url


@pytest.mark.parametrize("url", ["http://:s3cret@host:6379/0", "redis://:s3cret@host:abc/0",
                                 "redis://:s3cret@host:99999/0"])
def test_a_broker_that_is_not_a_redis_url_is_a_spec_error_naming_the_field(url):
    with pytest.raises(SpecError) as info:
        parse_spec(toy_data(broker=url))
    assert "broker:" in str(info.value) and "s3cret" not in str(info.value)


def test_a_broker_flag_that_is_not_a_redis_url_is_exit_2_without_traceback(tmp_path):
    study = write_study(tmp_path / "s.yaml", toy_data())
    proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "--broker", "http://:s3cret@x:1/0", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "broker:" in proc.stderr and "Traceback" not in proc.stderr and "s3cret" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_redact_url_masks_a_url_it_cannot_parse():
    assert "pw" not in redact_url("redis://:pw@host:abc/0")


def test_perturb_factors_can_be_written_in_a_study_file_and_read_back_from_the_stored_spec():
    spec = parse_spec(toy_data(algorithm={"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4,
                                                                      "perturb_factors": [0.7, 1.3]}}))
    assert spec.algorithm.options["perturb_factors"] in ([0.7, 1.3], (0.7, 1.3))
    again = parse_spec(spec.model_dump(mode="json"))  # what resume and status validate
    assert list(again.algorithm.options["perturb_factors"]) == [0.7, 1.3]


def test_pb2_over_a_space_without_mutable_numbers_is_refused():
    data = toy_data()
    data["parameters"] = {"h0": {"type": "categorical", "values": ["a", "b"]},
                          "h1": {"type": "float", "low": 0.0, "high": 1.0, "mutable": False}}
    data["algorithm"] = {"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4, "explore": "pb2"}}
    with pytest.raises(SpecError, match=r"algorithm\.options.*pb2.*no mutable"):
        parse_spec(data)


@pytest.mark.parametrize(("grid", "says"), [({"h0": [], "h1": [0.5]}, "grid.h0: give at least one value"),
                                            ({"zz": [1.0]}, "grid.zz: not a parameter")])
def test_an_explicit_grid_with_an_empty_or_unknown_axis_is_refused(grid, says):
    data = toy_data(budget={"total_steps": 64})
    data["algorithm"] = {"name": "grid", "options": {"grid": grid}}
    with pytest.raises(SpecError, match=says):
        parse_spec(data)


@pytest.mark.parametrize("value", ["9" * 5000, "2024-13-45"])
def test_a_scalar_yaml_cannot_build_is_a_spec_error_not_a_traceback(tmp_path, value):
    from pbt.study_file import load_spec

    path = tmp_path / "s.yaml"
    path.write_text(f"name: x\nseed: {value}\n")
    with pytest.raises(SpecError, match="a value cannot be read"):
        load_spec(path)


@pytest.mark.parametrize(("options", "execution", "says"), [
    ({"num_trials": 4, "median_stopping": True}, {}, "median_stopping judges intermediate evaluations"),
    ({"num_trials": 4, "median_stopping": True, "min_completed_for_stopping": 4}, {"checkpoint_every": 2},
     "can never stop"),
])
def test_median_stopping_that_could_never_stop_anything_is_refused(options, execution, says):
    data = toy_data(budget={"total_steps": 64}, execution=execution)
    data["algorithm"] = {"name": "random", "options": options}
    with pytest.raises(SpecError, match=says):
        parse_spec(data)


def test_a_broker_database_out_of_range_is_not_blamed_on_the_password(tmp_path):
    from pbt.launch import check_broker
    from pbt.testing import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        with pytest.raises(Exception, match="check the database number") as info:
            check_broker(server.url.rsplit("/", 1)[0] + "/99")
        assert info.value.exit_code == 5
    finally:
        server.stop()


# --- custom policies that misbehave: refused with the policy's name, not a traceback or bad trials --

from pbt.controller.policy import FromScratch, Options  # noqa: E402
from pbt.space import sample_params  # noqa: E402
from pbt.trial import Suggestion  # noqa: E402


class _Scratch(FromScratch):
    class Options(Options):
        pass


class NoSuggest(_Scratch):  # suggest() left out: an abstract class
    pass


class OutOfBoundsLater(_Scratch):
    def suggest(self, trials, k):
        if len(trials) >= 4:
            return []
        params = sample_params(self.space, self.rng(trials))
        return [Suggestion(params={**params, "h0": 5.0} if trials else params, steps=4)]


def test_a_custom_policy_that_cannot_be_built_is_a_spec_error_naming_it():
    data = toy_data()
    data["algorithm"] = {"name": "test_attack:NoSuggest", "options": {}}
    with pytest.raises(SpecError, match=r"algorithm\.name: policy 'test_attack:NoSuggest' cannot be built"):
        parse_spec(data)


def test_a_custom_policy_suggesting_a_value_outside_the_space_ends_the_study_naming_it(tmp_path):
    import os
    from pathlib import Path

    data = toy_data(budget={"total_steps": 64}, execution={"parallelism": 1})
    data["algorithm"] = {"name": "test_attack:OutOfBoundsLater", "options": {}}
    study = write_study(tmp_path / "s.yaml", data)
    here = str(Path(__file__).parent)
    proc = pbt("run", str(study), "--storage", str(tmp_path / "runs"), "--workers", "1", "-q", timeout=120,
               env={"PYTHONPATH": f"{here}:{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode == 1, proc.stderr
    assert "policy test_attack:OutOfBoundsLater returned h0=5.0: outside [0, 1]" in proc.stderr, proc.stderr


def test_a_very_long_invalid_name_is_shown_shortened_on_one_line():
    from pbt.names import validate_name, validate_trial_id

    for check in (validate_name, validate_trial_id):
        with pytest.raises(ValueError) as info:
            check("a" * 5000)
        assert len(str(info.value)) < 300 and "\n" not in str(info.value)


def test_load_study_with_a_storage_or_name_of_the_wrong_type_names_the_argument(tmp_path, monkeypatch):
    import pbt as api

    for kwargs, says in (({"name": "x", "storage": 42}, "storage: expected a path"),
                         ({"name": 7, "storage": str(tmp_path)}, "name: expected the study's name")):
        with pytest.raises(SpecError, match=says):
            api.load_study(**kwargs)
    monkeypatch.setenv("PBT_STORAGE", str(tmp_path))
    with pytest.raises(api.StudyNotFoundError, match=str(tmp_path)):
        api.load_study("x", storage=None)  # the default storage, which holds no study x


def test_another_spec_under_an_existing_name_is_refused_before_the_study_is_shown_as_started(tmp_path):
    data = toy_data(budget={"total_steps": 32})
    first = write_study(tmp_path / "a.yaml", data)
    assert pbt("run", str(first), "--storage", str(tmp_path / "runs"), "--workers", "1", "-q").returncode == 0
    data["parameters"]["h0"]["high"] = 0.5
    second = write_study(tmp_path / "b.yaml", data)
    proc = pbt("run", str(second), "--storage", str(tmp_path / "runs"), "--workers", "1", "-q")
    assert proc.returncode == 2, proc.stderr
    assert "already exists" in proc.stderr and "with different parameters" in proc.stderr
    assert "study toy:" not in proc.stderr, proc.stderr  # not announced as started


@pytest.mark.parametrize(("args", "env", "says"), [
    ([], {"PBT_VISIBILITY_TIMEOUT": "abc"}, "PBT_VISIBILITY_TIMEOUT='abc': expected a positive number"),
    ([], {"PBT_UNACKED_RESTORE_INTERVAL": "-5"}, "PBT_UNACKED_RESTORE_INTERVAL='-5'"),
    (["--gpus", "abc"], {}, "--gpus: 'abc' is not a device index"),
    (["-Q", "../x"], {}, "invalid queue name (--queues) '../x'"),
])
def test_a_worker_refuses_settings_celery_would_take_as_they_are(tmp_path, args, env, says):
    from pbt.testing import free_port

    proc = pbt("worker", "--broker", f"redis://127.0.0.1:{free_port()}/0", "--storage", str(tmp_path), *args,
               env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr


def test_a_report_folder_that_cannot_be_written_is_one_line_not_a_traceback(tmp_path):
    study = write_study(tmp_path / "s.yaml", toy_data(budget={"total_steps": 32}))
    assert pbt("run", str(study), "--storage", str(tmp_path / "runs"), "--workers", "1", "-q").returncode == 0
    (tmp_path / "afile").write_text("x")
    proc = pbt("report", "toy", "--storage", str(tmp_path / "runs"), "--out", str(tmp_path / "afile" / "sub"))
    assert proc.returncode == 1 and "cannot write the report" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(("algorithm", "says"), [
    ({"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4, "truncation_fraction": 0.3}},
     "truncation_fraction applies to selection: truncation"),
    ({"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4, "selection": "truncation",
                                 "window_generations": 3}}, "window_generations applies to selection: tournament"),
    ({"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4, "pb2_window": 8}},
     "pb2_window applies to explore: pb2"),
    ({"name": "random", "options": {"num_trials": 4, "min_completed_for_stopping": 2}},
     "min_completed_for_stopping applies to median_stopping"),
])
def test_an_option_the_chosen_mode_would_silently_ignore_is_refused(algorithm, says):
    data = toy_data(budget={"total_steps": 64})
    data["algorithm"] = algorithm
    with pytest.raises(SpecError, match=says):
        parse_spec(data)


def test_a_stored_spec_an_older_version_accepted_is_still_read_back():
    data = toy_data(budget={"total_steps": 64})
    data["algorithm"] = {"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4,
                                                    "truncation_fraction": 0.3, "pb2_window": 8}}
    assert parse_spec(data, check_trainer=False).algorithm.options["truncation_fraction"] == 0.3  # pbt status
    assert parse_spec(data, stored=True).algorithm.options["pb2_window"] == 8  # pbt resume
    with pytest.raises(SpecError):
        parse_spec(data)  # a new study from that file


def test_an_empty_broker_still_means_embedded_workers():
    assert not parse_spec(toy_data(broker="")).broker


def test_logs_of_a_trial_the_study_does_not_have_say_so(tmp_path):
    study = write_study(tmp_path / "s.yaml", toy_data(budget={"total_steps": 32}))
    assert pbt("run", str(study), "--storage", str(tmp_path / "runs"), "--workers", "1", "-q").returncode == 0
    proc = pbt("logs", "toy", "t999999", "--storage", str(tmp_path / "runs"))
    assert proc.returncode == 1 and "has no trial 't999999'" in proc.stderr, proc.stderr
