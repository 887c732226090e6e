"""TensorBoard events and CSV tables of a study, written live by ``pbt run --tensorboard`` and on
demand by ``pbt export``, read back and compared with the records ``pbt status --json`` shows.

Event files are read with TensorBoard's own ``EventAccumulator``, the loader behind its pages.
"""

from __future__ import annotations

import csv
import io
import os
import signal
from pathlib import Path

import pytest
from helpers import toy_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from pbt.testing import pbt, pbt_background, status, wait_for, write_study

pytestmark = pytest.mark.slow


def accumulate(path: Path) -> EventAccumulator:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def hparams_data(acc: EventAccumulator, tag: str) -> plugin_data_pb2.HParamsPluginData:
    content = acc.PluginTagToContent("hparams")[tag]
    return plugin_data_pb2.HParamsPluginData.FromString(content)


def assert_events_match_records(study_dir: Path, data: dict) -> None:
    """Every trial is a run holding exactly its recorded evaluations (once each) at lineage steps,
    starting from its parent's last point, with its hyperparameters as a schedule and a session."""
    trials = data["trials"]
    by_id = {t["id"]: t for t in trials}
    experiment = hparams_data(accumulate(study_dir), "_hparams_/experiment").experiment
    assert [h.name for h in experiment.hparam_infos] == ["h0", "h1"]
    assert experiment.hparam_infos[0].domain_interval.max_value == 1.0
    assert [m.name.tag for m in experiment.metric_infos] == ["q"]
    continued = 0
    for t in trials:
        run = study_dir / f"member-{t['member']:03d}" / t["id"]
        acc = accumulate(run)
        expected = [(m["lineage_step"], m["values"]["q"]) for m in t["metrics"]]
        parent = by_id.get(t["parent"])
        if parent is not None and parent["metrics"]:
            expected.insert(0, (t["start_lineage_steps"], parent["metrics"][-1]["values"]["q"]))
            continued += 1
        got = [(e.step, e.value) for e in acc.Scalars("q")]
        assert [s for s, _ in got] == [s for s, _ in expected], t["id"]
        assert [v for _, v in got] == pytest.approx([v for _, v in expected], rel=1e-6), t["id"]  # float32
        for name in ("h0", "h1"):
            schedule = acc.Scalars(f"hparams/{name}")
            assert [e.step for e in schedule] == [s for s, _ in expected]
            assert all(e.value == pytest.approx(t["params"][name], rel=1e-6) for e in schedule)
        start = hparams_data(acc, "_hparams_/session_start_info").session_start_info
        assert {k: v.number_value for k, v in start.hparams.items()} == t["params"]
        end = hparams_data(acc, "_hparams_/session_end_info").session_end_info
        assert end.status == (1 if t["status"] in ("completed", "stopped") else 2)  # STATUS_SUCCESS / FAILURE
    assert continued == sum(1 for t in trials if t["parent"])  # every child's curve starts at its parent's end


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A finished toy PBT study run with ``--tensorboard``; two evaluations per trial."""
    root = tmp_path_factory.mktemp("export")
    spec = write_study(root / "s.yaml", toy_data(execution={"parallelism": 4, "checkpoint_every": 2}))
    storage, board = root / "runs", root / "tb"
    proc = pbt("run", str(spec), "--storage", str(storage), "--tensorboard", str(board), "--workers", "2", "-q")
    assert proc.returncode == 0, proc.stderr
    return root, spec, storage, board, status("toy", str(storage))


def test_run_writes_tensorboard_events_live_and_export_writes_the_same(study):
    root, spec, storage, board, data = study
    assert len(data["trials"]) == 40 and all(len(t["metrics"]) == 2 for t in data["trials"])
    assert_events_match_records(board / "toy", data)

    exported = pbt("export", "tensorboard", "toy", "--storage", str(storage), "--out", str(root / "tbx"))
    assert exported.returncode == 0, exported.stderr
    assert exported.stdout.strip() == str(root / "tbx" / "toy")
    assert_events_match_records(root / "tbx" / "toy", data)
    again = pbt("export", "tensorboard", "toy", "--storage", str(storage), "--out", str(root / "tbx"))
    assert again.returncode == 0, again.stderr
    assert_events_match_records(root / "tbx" / "toy", data)  # replaced, not written twice

    # A study that ran without a log gets one whole when run again with --tensorboard.
    late = pbt("run", str(spec), "--storage", str(storage), "--tensorboard", str(root / "late"), "-q")
    assert late.returncode == 0, late.stderr
    assert_events_match_records(root / "late" / "toy", data)


def test_csv_export_has_the_keys_of_status_json(study):
    root, _, storage, _, data = study
    per_trial = pbt("export", "csv", "toy", "--storage", str(storage))
    assert per_trial.returncode == 0, per_trial.stderr
    rows = list(csv.DictReader(io.StringIO(per_trial.stdout)))
    assert [r["id"] for r in rows] == [t["id"] for t in data["trials"]]
    for row, t in zip(rows, data["trials"]):
        assert float(row["params.h0"]) == t["params"]["h0"] and float(row["objective"]) == t["objective"]
        assert int(row["lineage_steps"]) == t["lineage_steps"] and row["parent"] == (t["parent"] or "")
        assert float(row["timings.train"]) == t["timings"]["train"]
        assert "metrics" not in row

    out = root / "evals.csv"
    proc = pbt("export", "csv", "toy", "--storage", str(storage), "--per", "evaluation", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "80 rows" in proc.stderr
    evals = list(csv.DictReader(out.open()))
    expected = [(t["id"], m["step"], m["lineage_step"], m["values"]["q"]) for t in data["trials"] for m in t["metrics"]]
    assert [(r["id"], int(r["step"]), int(r["lineage_step"]), float(r["values.q"])) for r in evals] == expected

    bad = pbt("export", "csv", "toy", "--storage", str(storage), "--per", "member")
    assert bad.returncode == 2
    missing = pbt("export", "tensorboard", "nope", "--storage", str(storage), "--out", str(root / "x"))
    assert missing.returncode == 1 and "no study 'nope'" in missing.stderr


def test_an_interrupted_study_continues_its_tensorboard_log_without_duplicates(tmp_path):
    data = toy_data(budget={"total_steps": 192}, trainer={"config": {"lr": 0.01, "sleep_per_step": 0.03}},
                    execution={"parallelism": 4, "checkpoint_every": 2})
    spec = write_study(tmp_path / "s.yaml", data)
    storage, board = tmp_path / "runs", tmp_path / "tb"
    args = ("run", str(spec), "--storage", str(storage), "--tensorboard", str(board), "--workers", "2", "-q")
    proc = pbt_background(*args)
    try:
        wait_for(lambda: len(list(board.glob("toy/member-*/t*"))) >= 12, 60, what="a dozen trials logged")
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the controller exits, the log is flushed
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    before = status("toy", str(storage))
    assert sum(t["steps_done"] for t in before["trials"]) < 192
    again = pbt(*args)
    assert again.returncode == 0, again.stderr
    assert_events_match_records(board / "toy", status("toy", str(storage)))


def test_a_log_that_cannot_be_written_does_not_stop_the_study(tmp_path):
    spec = write_study(tmp_path / "s.yaml", toy_data(budget={"total_steps": 48}))
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    proc = pbt("run", str(spec), "--storage", str(tmp_path / "runs"), "--tensorboard", str(blocker), "-q")
    assert proc.returncode == 0, proc.stderr
    assert "TensorBoard log in" in proc.stderr and "stopped" in proc.stderr
    assert status("toy", str(tmp_path / "runs"))["state"]["finished"] is True


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted(tmp_path):
    from types import SimpleNamespace

    from pbt.analysis.export import write_csv
    from pbt.trial import Trial

    trial = Trial(id="t000000", number=0, study="toy", member=0, generation=0, params={"opt": "-adam", "h0": -0.5},
                  steps=4, status="failed", error='=HYPERLINK("http://x","click")')
    out = tmp_path / "t.csv"
    assert write_csv(SimpleNamespace(trials=[trial]), out) == 1
    row = next(csv.DictReader(out.open()))
    assert row["error"] == "'=HYPERLINK(\"http://x\",\"click\")" and row["params.opt"] == "'-adam"
    assert float(row["params.h0"]) == -0.5  # numbers stay numbers
