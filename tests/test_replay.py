"""``pbt replay``: the best trial's schedule, re-run from scratch on one trainer, is the record's.

An instrumented toy trainer logs every protocol call, so the tests check the schedule as it was
*applied* — hyperparameters, seeds, warm starts, chunks, evaluation points — against the trial
records, and that the toy trainer then reproduces the original objective exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import toy_spec

from pbt.analysis.replay import choose_trial, replay
from pbt.analysis.study import open_study
from pbt.errors import FatalError, NotFoundError
from pbt.launch import run_study
from pbt.lineage import best_trial, lineage
from pbt.testing import pbt
from pbt.trainers.toy import ToyTrainer
from pbt.trial import TrialStatus, trial_seed


class RecordingToy(ToyTrainer):
    """The toy trainer, logging each call the replay makes."""

    def __init__(self, config=None) -> None:
        super().__init__(config)
        self.calls: list[tuple] = []

    def setup(self, hparams, *, seed=0):
        self.calls.append(("setup", dict(hparams), seed))
        super().setup(hparams, seed=seed)

    def load(self, directory):
        super().load(directory)
        self.calls.append(("load", self.step))

    def train(self, steps):
        self.calls.append(("train", steps, tuple(self.h)))
        return super().train(steps)

    def evaluate(self):
        values = super().evaluate()
        self.calls.append(("evaluate", self.step, values["q"]))
        return values


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[str, object, list]:
    storage = str(tmp_path_factory.mktemp("replay") / "runs")
    spec = toy_spec(storage=storage, seed=7, execution={"parallelism": 4, "checkpoint_every": 3})
    assert run_study(spec, workers=2).finished
    stored = open_study(storage, "toy")
    spec, trials = stored.spec, stored.trials
    return storage, spec, trials


def test_replay_applies_the_recorded_schedule_step_by_step_and_reproduces_the_objective(study):
    _, spec, trials = study
    best = best_trial(trials, spec.objective)
    chain = lineage(trials, best)
    assert len(chain) > 3 and any(t.metadata.get("exploit") for t in chain[1:]), "a lineage with exploits"
    trainer = RecordingToy(spec.trainer.config)
    result = replay(spec, trials, trainer=trainer)

    assert result.trial == best.id
    assert result.objective == best.objective  # bit for bit: same ops, same order
    assert result.to_json()["exact"] is True
    assert result.steps == result.original_steps == best.lineage_steps

    calls = iter(trainer.calls)
    for i, t in enumerate(chain):
        assert next(calls) == ("setup", t.params, trial_seed(7, t.number))
        if i:
            assert next(calls) == ("load", t.start_lineage_steps)  # warm start from the previous segment
        trained, evaluated = [], []
        for call in calls:
            if call[0] == "train":
                assert call[2] == (t.params["h0"], t.params["h1"])
                trained.append(call[1])
            elif call[0] == "evaluate":
                evaluated.append((call[1], call[2]))
            if sum(trained) == t.steps_done and len(evaluated) == len(t.metrics):
                break
        assert trained == [3, 1]  # the original's chunks: checkpoint_every=3, then the rest of 4 steps
        assert evaluated == [(m.lineage_step, m.values["q"]) for m in t.metrics]  # same points, same values
    assert next(calls, None) is None

    for seg, t in zip(result.segments, chain):
        assert (seg.trial, seg.params, seg.exploit) == (t.id, t.params, bool(t.metadata.get("exploit")))
        assert (seg.start, seg.end) == (seg.original_start, seg.original_end) == (t.start_lineage_steps,
                                                                                 t.lineage_steps)
        assert seg.objective == seg.original_objective == t.objective


def test_replay_longer_keeps_the_schedule_shape(study):
    _, spec, trials = study
    best = best_trial(trials, spec.objective)
    chain = lineage(trials, best)
    longer = replay(spec, trials, steps_scale=2.5)
    assert [s.end - s.start for s in longer.segments] == [10] * len(chain)  # round(4 × 2.5)
    assert longer.steps == 10 * len(chain) and not longer.faithful
    assert longer.objective > best.objective  # the toy objective only improves with training

    extra = replay(spec, trials, best.id, extra_steps=25)
    assert [s.trial for s in extra.segments] == [*(t.id for t in chain), None]
    assert extra.segments[-1].params == chain[-1].params and extra.steps == best.lineage_steps + 25
    assert extra.segments[-2].objective == best.objective  # the schedule itself still reproduces


def test_replay_refuses_what_it_cannot_replay(study):
    _, spec, trials = study
    with pytest.raises(NotFoundError, match="no trial 't999999'"):
        choose_trial(spec, trials, "t999999")
    bad = trials[0].model_copy(update={"status": TrialStatus.FAILED, "objective": None})
    with pytest.raises(FatalError, match="failed"):
        choose_trial(spec, [bad, *trials[1:]], bad.id)
    other = next(t for t in trials if t.usable and t.id != best_trial(trials, spec.objective).id)
    assert replay(spec, trials, other.id).objective == other.objective


def test_cli_replay_prints_the_comparison_and_saves_record_and_checkpoint(study, tmp_path):
    storage, spec, trials = study
    best = best_trial(trials, spec.objective)
    proc = pbt("replay", "toy", "--storage", storage)
    assert proc.returncode == 0, proc.stderr
    assert "identical" in proc.stdout and best.id in proc.stdout
    saved = list(Path(storage, "toy", "replays").glob(f"{best.id}-*/replay.json"))
    assert len(saved) == 1 and json.loads(saved[0].read_text())["exact"] is True

    out = tmp_path / "replay"
    proc = pbt("replay", "toy", "--storage", storage, "--trial", best.id, "--extra-steps", "10",
               "--out", str(out), "--save-checkpoint", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record == json.loads((out / "replay.json").read_text())
    assert record["trial"] == best.id and record["steps"] == best.lineage_steps + 10 and record["exact"] is False
    model = ToyTrainer(spec.trainer.config)  # the checkpoint is the replayed model
    model.load(out / "checkpoint")
    assert model.evaluate()["q"] == record["objective"]

    proc = pbt("replay", "toy", "--storage", storage, "--steps-scale", "2", "--extra-steps", "5")
    assert proc.returncode == 2 and "not both" in proc.stderr
