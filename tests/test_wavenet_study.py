"""A short WaveNet PBT study end to end: corpus, trainer, controller and embedded workers together.

The unit tests cover each piece; this one checks they compose into the case study the README
promises — real speech, real worker processes, real checkpoints handed from parent to child.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("espeakng_loader")

from pbt.launch import run_study
from pbt.storage import open_object_store
from pbt.storage.study_store import StudyStore
from pbt.study_file import parse_spec
from pbt.testing import pbt
from pbt.trial import TrialStatus
from pbt.wavenet.corpus import build_speech_corpus

pytestmark = pytest.mark.slow

POPULATION, STEPS, GENERATIONS = 4, 25, 3


def wavenet_study(data: Path, storage: Path) -> dict[str, Any]:
    return {
        "name": "wavenet-e2e",
        "objective": {"metric": "val_bps", "mode": "min"},
        "parameters": {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "scale": "log"}},
        "algorithm": {"name": "pbt", "options": {"population_size": POPULATION, "steps_per_trial": STEPS}},
        "budget": {"total_steps": POPULATION * STEPS * GENERATIONS},
        "trainer": {
            "path": "pbt.wavenet.trainer:WaveNetTrainer",
            "config": {"data": str(data), "stacks": 1, "layers_per_stack": 4, "residual_channels": 8,
                       "dilation_channels": 8, "skip_channels": 16, "batch_size": 4, "crop": 256,
                       "val_crops": 4, "threads": 1, "device": "cpu"},
        },
        "execution": {"parallelism": 2, "checkpoint_every": 10},
        "storage": str(storage),
        "seed": 0,
    }


def test_a_tiny_wavenet_pbt_study_runs_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "speech"
    build_speech_corpus(data, seed=0, sentences=6, voices=["en-us", "en"], validation_fraction=0.34)
    spec = parse_spec(wavenet_study(data, tmp_path / "runs"))
    snapshot = run_study(spec, workers=2)
    assert snapshot.finished

    trials = StudyStore(open_object_store(str(tmp_path / "runs")), spec.name).load_trials()
    assert [t.number for t in trials] == list(range(len(trials)))
    assert len({t.id for t in trials}) == len(trials) == POPULATION * GENERATIONS  # each recorded once
    assert all(t.status is TrialStatus.COMPLETED and t.attempts == 1 for t in trials)
    assert sum(t.steps_done for t in trials) == spec.budget.total_steps

    assert all(t.objective is not None and math.isfinite(t.objective) for t in trials)
    first = min(t.objective for t in trials if t.generation == 0)
    best = min(trials, key=lambda t: t.objective)
    assert best.generation > 0 and best.objective < first, (first, best.objective)
    assert best.objective < 8.0  # below the 8 bits a uniform guess over 256 levels costs

    children = [t for t in trials if t.parent is not None]
    assert children, "no trial warm-started"
    by_id = {t.id: t for t in trials}
    for child in children:
        parent = by_id[child.parent]
        assert child.warm_start == parent.checkpoint == child.parent_checkpoint  # the load really happened
        assert child.start_lineage_steps == parent.lineage_steps
        assert child.metrics[-1].lineage_step == parent.lineage_steps + STEPS
    assert any(t.metadata.get("exploit") for t in children), "no member copied another's weights"

    # Listen to it: `pbt sample STUDY` plays the best trial's model, read from the study's storage.
    storage = str(tmp_path / "runs")
    proc = pbt("sample", spec.name, "--storage", storage, "--out", str(tmp_path / "best.wav"), "--seconds", "0.05",
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert f"best trial {best.id}" in proc.stdout
    with wave.open(str(tmp_path / "best.wav"), "rb") as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (16000, 800, 2)
    kept = [t for t in load_trials(tmp_path) if t.checkpoint and not t.checkpoint_deleted]
    other = next(t for t in kept if t.id != best.id)
    proc = pbt("sample", spec.name, "--trial", other.id, "--storage", storage, "--out", str(tmp_path / "o.wav"),
               "--seconds", "0.02", "--device", "cpu")
    assert proc.returncode == 0 and f"{spec.name} {other.id}" in proc.stdout, proc.stderr
    gone = [t for t in load_trials(tmp_path) if t.checkpoint_deleted]
    if gone:  # garbage-collected: said so, with the way to get it back
        proc = pbt("sample", spec.name, "--trial", gone[0].id, "--storage", storage, "--out", str(tmp_path / "g.wav"))
        assert proc.returncode == 1 and "garbage-collected" in proc.stderr and "pbt replay" in proc.stderr
    proc = pbt("sample", spec.name, "--trial", "t999999", "--storage", storage, "--out", str(tmp_path / "n.wav"))
    assert proc.returncode == 1 and "has no trial 't999999'" in proc.stderr


def load_trials(tmp_path: Path):
    return StudyStore(open_object_store(str(tmp_path / "runs")), "wavenet-e2e").load_trials()


def test_the_two_objective_example_trades_bits_per_sample_against_size_and_reports_its_front(tmp_path: Path) -> None:
    # examples/wavenet-pareto.yaml, shrunk: validation bits/sample against model size, with the
    # architecture a per-member choice that explore never changes (`mutable: false`).
    import yaml

    data = tmp_path / "speech"
    build_speech_corpus(data, seed=0, sentences=6, voices=["en-us", "en"], validation_fraction=0.34)
    study = yaml.safe_load(Path(__file__).resolve().parents[1].joinpath("examples/wavenet-pareto.yaml").read_text())
    study["parameters"]["residual_channels"]["values"] = [4, 8, 16]
    study["parameters"]["layers_per_stack"] = {"type": "int", "low": 2, "high": 4, "mutable": False}
    study["algorithm"]["options"] = {"population_size": 4, "steps_per_trial": 10}
    study["budget"] = {"total_steps": 120}
    study["trainer"]["config"].update(data=str(data), stacks=1, dilation_channels=8, skip_channels=16, crop=256,
                                      val_crops=4, device="cpu")
    study["execution"] = {"parallelism": 2, "checkpoint_every": 10}
    study["storage"] = str(tmp_path / "runs")
    spec = parse_spec(study)
    assert run_study(spec, workers=2).finished
    trials = StudyStore(open_object_store(str(tmp_path / "runs")), spec.name).load_trials()
    by_id = {t.id: t for t in trials}
    for t in trials:
        if t.parent:  # the architecture never changes along a lineage: the child loaded its parent's weights
            parent = by_id[t.parent]
            assert {k: t.params[k] for k in ("residual_channels", "layers_per_stack")} == \
                {k: parent.params[k] for k in ("residual_channels", "layers_per_stack")}
            assert t.warm_start == parent.checkpoint
    assert all(t.status is TrialStatus.COMPLETED for t in trials)
    assert len({t.metrics[-1].values["params"] for t in trials}) > 1  # members of different sizes
    storage = str(tmp_path / "runs")
    status = pbt("status", spec.name, "--storage", storage)
    assert "Pareto front:" in status.stdout, status.stdout
    report = pbt("report", spec.name, "--storage", storage, "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "front.png").exists()
    assert "Pareto front" in (tmp_path / "report" / "index.html").read_text()
