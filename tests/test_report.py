"""``pbt report``: the page and the data behind every figure match the study's records.

Checks the prepared data (``report.json``), not pixels: every trial is plotted with exactly its
recorded metrics, the lineage tree's edges are the records' parent links, the top-trials table
is the ranking of the records — for a finished study, and for one still running.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from helpers import Simulator, toy_data, toy_spec

from pbt.analysis.report import FIGURES, report_study, write_report
from pbt.analysis.study import open_study
from pbt.controller.policies import make_policy
from pbt.launch import run_study
from pbt.lineage import best_trial, lineage, schedule
from pbt.storage import open_object_store
from pbt.storage.study_store import StudyStore
from pbt.study_file import parse_spec
from pbt.testing import kill_group, pbt, pbt_background, wait_for, write_study
from pbt.trial import MetricReport, TrialStatus

PNG = b"\x89PNG\r\n\x1a\n"


def html_text(out: Path) -> str:
    import html

    return html.unescape((out / "index.html").read_text())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished toy PBT study (40 trials, 4 members) with in-trial evaluations."""
    storage = tmp_path_factory.mktemp("report") / "runs"
    spec = toy_spec(storage=str(storage), execution={"parallelism": 4, "checkpoint_every": 2})
    assert run_study(spec, workers=2).finished
    return storage


def test_report_of_a_finished_study_shows_every_trial_and_the_recorded_lineage(finished, tmp_path):
    out = tmp_path / "report"
    proc = pbt("report", "toy", "--storage", str(finished), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == (out / "index.html").resolve()
    for name in ("index.html", "report.json", *FIGURES):
        assert (out / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG)

    stored = open_study(str(finished), "toy")
    spec, trials = stored.spec, stored.trials
    data = json.loads((out / "report.json").read_text())
    by_id = {t.id: t for t in trials}
    assert data["state"] == "finished" and data["counts"] == {"completed": len(trials)}

    # Every trial is drawn, with exactly its recorded objective values, from its parent's last point.
    assert [s["trial"] for s in data["series"]] == [t.id for t in trials]
    for s in data["series"]:
        t = by_id[s["trial"]]
        assert s["steps"] == [m.lineage_step for m in t.metrics]
        assert s["values"] == [m.values["q"] for m in t.metrics]
        assert len(s["steps"]) == 2  # an evaluation at the in-trial checkpoint and one at the end
        if t.parent:
            last = by_id[t.parent].metrics[-1]
            assert s["anchor"] == [last.lineage_step, last.values["q"]]
        else:
            assert s["anchor"] is None and data["roots"][t.id] == t.id

    # The lineage tree is the records' parent links, exploits flagged as the policy recorded them.
    assert {(e["parent"], e["child"]) for e in data["edges"]} == {(t.parent, t.id) for t in trials if t.parent}
    assert {e["child"] for e in data["edges"] if e["exploit"]} == {t.id for t in trials if t.metadata.get("exploit")}
    assert {e["trial"] for e in data["exploits"]} == {t.id for t in trials if t.metadata.get("exploit")}
    assert data["exploits"], "a 4-member toy PBT study always exploits"
    for n in data["nodes"]:
        t = by_id[n["trial"]]
        assert (n["row"], n["start"], n["end"]) == (t.member, t.start_lineage_steps, t.lineage_steps)

    # The best lineage and its schedule are the records'.
    best = best_trial(trials, spec.objective)
    chain = lineage(trials, best)
    assert data["best"] == best.id and data["best_lineage"] == [t.id for t in chain]
    for sched in data["schedules"]:
        assert [(s["trial"], s["start"], s["end"], s["value"]) for s in sched["best"]] == [
            (seg.trial, seg.start, seg.end, seg.params[sched["name"]]) for seg in schedule(chain)
        ]
        assert len(sched["population"]) == len(trials)

    # Top trials: the records ranked by objective; the time totals are the records' sums.
    ranked = sorted(trials, key=lambda t: (-t.objective, t.number))[:20]
    assert [r["trial"] for r in data["top"]] == [t.id for t in ranked]
    for phase, total in data["time_totals"].items():
        assert math.isclose(total, sum(getattr(t.timings, phase) for t in trials))
    # ... and what explains them: workers seen (two embedded processes), parallelism, wall time.
    use = data["time_use"]
    assert (use["workers"], use["parallelism"], use["trials"]) == (2, 4, len(trials))
    assert math.isclose(use["queue_seconds"], data["time_totals"]["queue_wait"])
    assert use["worker_seconds"] > 0 and 0 < use["wall_seconds"] <= max(t.finished_at for t in trials) - min(
        t.created_at for t in trials) + 1e-6
    assert "Queue wait is the time from a trial's publication to a worker starting it" in html_text(out)
    assert "4 trials are in flight (execution.parallelism) for 2 workers" in html_text(out)

    # Every lineage root is named with its fate: survivors first, each with how far it got.
    roots = {t.id for t in trials if t.parent is None}
    fates = data["root_fates"]
    assert {f["root"] for f in fates} == roots and sum(f["trials"] for f in fates) == len(trials)
    latest = {t.member: t for t in trials}  # the last trial of each member
    alive = {data["roots"][t.id] for t in latest.values()}
    assert {f["root"] for f in fates if f["survives"]} == alive
    assert [f["survives"] for f in fates] == sorted((f["survives"] for f in fates), reverse=True)
    for f in fates:
        assert f["last_step"] == max(t.lineage_steps for t in trials if data["roots"][t.id] == f["root"])

    html = (out / "index.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)  # self-contained
    for r in ranked:
        assert f'<td class="l">{r.id}</td>' in html
    assert f"{best.objective:.6g}" in html


def test_report_of_a_running_study_is_partial(tmp_path):
    data = toy_data(algorithm={"options": {"steps_per_trial": 20}}, budget={"total_steps": 8000},
                    trainer={"config": {"lr": 0.01, "sleep_per_step": 0.02}},
                    execution={"parallelism": 4, "checkpoint_every": 2})
    study = write_study(tmp_path / "s.yaml", data)
    storage = tmp_path / "runs"
    out = tmp_path / "report"
    proc = pbt_background("run", str(study), "--storage", str(storage), "-q")
    store = StudyStore(open_object_store(str(storage)), "toy")
    try:
        wait_for(lambda: store.exists() and sum(t.usable for t in store.load_trials()) >= 4, 60,
                 what="a few completed trials")

        def partial_report():
            # The study moves on between reads: retry until the report caught a trial mid-way.
            rep = report_study("toy", str(storage), out)
            return rep if any(s.steps and s.status == "running" for s in rep.data.series) else None

        rep = wait_for(partial_report, 30, interval=0.05, what="a report with a running trial's metrics")
    finally:
        kill_group(proc)
    report = json.loads((out / "report.json").read_text())
    later = {t.id: t for t in store.load_trials()}
    assert rep.data.state == report["state"] == "in progress"
    assert any("still pending or running" in n for n in report["notes"])
    for s in report["series"]:  # a prefix of what the records hold later: the same trials, the same points
        t = later[s["trial"]]
        assert s["steps"] == [m.lineage_step for m in t.metrics][: len(s["steps"])]
    running = [n for n in report["nodes"] if n["status"] == "running"]
    assert running and all(n["end"] < later[n["trial"]].start_lineage_steps + 20 for n in running)
    assert {(e["parent"], e["child"]) for e in report["edges"]} == {
        (later[s["trial"]].parent, s["trial"]) for s in report["series"] if later[s["trial"]].parent
    }
    assert report["top"] and all(later[r["trial"]].status is TrialStatus.COMPLETED for r in report["top"])
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG)


def test_report_escapes_study_values_and_handles_categorical_and_non_pbt_studies(tmp_path):
    """Values from a study file reach the page escaped; random search has no members: rows are trials."""
    evil = '<script>alert("x")</script>'
    space = {"parameters": {"h0": {"type": "float", "low": 0.0, "high": 1.0},
                            "h1": {"type": "float", "low": 0.0, "high": 1.0},
                            "act": {"type": "categorical", "values": [evil, "relu"]}}}
    for algorithm in ({"name": "pbt", "options": {"population_size": 4, "steps_per_trial": 4}},
                      {"name": "random", "options": {"num_trials": 12, "steps_per_trial": 4}}):
        raw = toy_data(budget={"total_steps": 80}, **space)
        raw["algorithm"] = algorithm
        spec = parse_spec(raw)
        trials = [  # the simulator records objectives only; give each trial its final evaluation
            t.model_copy(update={"metrics": [MetricReport(step=t.steps, lineage_step=t.lineage_steps,
                                                          values={"q": t.objective})]})
            for t in Simulator(make_policy(spec)).run(k=4)
        ]
        rep = write_report(spec, trials, tmp_path / algorithm["name"], {"finished": True})
        html = rep.html.read_text()
        assert "<script>" not in html and "&lt;script&gt;" in html
        act = next(s for s in rep.data.schedules if s.name == "act")
        assert act.categories == [evil, "relu"] and len(act.population) == len(trials)
        if algorithm["name"] == "random":
            assert rep.data.row_label == "trial" and not rep.data.edges
            assert [n.row for n in rep.data.nodes] == [t.number for t in trials]
        for name in FIGURES:
            assert (rep.directory / name).read_bytes().startswith(PNG)
