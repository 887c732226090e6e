"""The WaveNet trainer behind the trainer protocol: exact resume, warm start, evaluation, checkpoints."""

from __future__ import annotations

import wave
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("espeakng_loader")

from pbt.errors import CorruptCheckpointError, SpecError  # noqa: E402
from pbt.trainers import Trainer, load_trainer_class  # noqa: E402
from pbt.wavenet.corpus import build_speech_corpus  # noqa: E402
from pbt.wavenet.trainer import CHECKPOINT, WaveNetTrainer, sample_audio  # noqa: E402

TINY = {
    "stacks": 1,
    "layers_per_stack": 4,
    "residual_channels": 8,
    "dilation_channels": 8,
    "skip_channels": 16,
    "batch_size": 4,
    "crop": 256,
    "val_crops": 4,
    "threads": 1,
    "device": "cpu",
}


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("wavenet") / "speech"
    build_speech_corpus(out, seed=0, sentences=8, voices=["en-us", "en"], validation_fraction=0.25)
    return {"data": str(out), **TINY}


def _trainer(config: dict[str, Any], seed: int = 0, **hparams: float) -> WaveNetTrainer:
    trainer = WaveNetTrainer(config)
    trainer.setup({"lr": 3e-3, **hparams}, seed=seed)
    return trainer


def _state(trainer: WaveNetTrainer) -> list[torch.Tensor]:
    opt = trainer.optimizer.state_dict()["state"]
    return [*trainer.model.state_dict().values(), *(t for s in opt.values() for t in s.values())]


def test_is_a_trainer_loadable_from_a_study_path() -> None:
    cls = load_trainer_class("pbt.wavenet.trainer:WaveNetTrainer")
    assert cls is WaveNetTrainer and issubclass(cls, Trainer)


def test_save_load_continues_bit_exactly(config: dict[str, Any], tmp_path: Path) -> None:
    straight = _trainer(config, seed=3)
    straight.train(6)
    first = _trainer(config, seed=3)
    first.train(3)
    first.save(tmp_path)
    resumed = _trainer(config, seed=3)
    resumed.load(tmp_path)
    assert resumed.step == 3
    resumed.train(3)
    assert resumed.step == straight.step == 6
    for a, b in zip(_state(straight), _state(resumed), strict=True):
        assert torch.equal(a, b)
    assert resumed.evaluate() == straight.evaluate()


def test_warm_start_applies_the_new_hyperparameters(config: dict[str, Any], tmp_path: Path) -> None:
    parent = _trainer(config, lr=1e-3, beta1=0.8)
    parent.train(2)
    parent.save(tmp_path)
    child = _trainer(config, seed=1, lr=2e-2, beta1=0.5, weight_decay=1e-4)
    child.load(tmp_path)
    for group in child.optimizer.param_groups:
        assert group["lr"] == 2e-2 and group["betas"] == (0.5, 0.999) and group["weight_decay"] == 1e-4
    assert child.step == 2
    for a, b in zip(parent.model.state_dict().values(), child.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # exploit: the parent's weights; explore: the child's hparams


def test_evaluate_is_deterministic(config: dict[str, Any]) -> None:
    trainer = _trainer(config)
    trainer.train(2)
    first = trainer.evaluate()
    assert set(first) == {"val_bps", "train_bps", "params"}
    assert trainer.evaluate() == first
    twin = _trainer(config)
    twin.train(2)
    assert twin.evaluate() == first
    assert 5.0 < first["val_bps"] < 8.5  # nearly untrained: close to 8 bits per 8-bit sample


def test_learning_rate_matters(config: dict[str, Any]) -> None:
    good, frozen = _trainer(config, lr=1e-2), _trainer(config, lr=1e-7)
    before = good.evaluate()["val_bps"]
    good.train(25)
    frozen.train(25)
    assert good.evaluate()["val_bps"] < frozen.evaluate()["val_bps"] - 0.5
    assert frozen.evaluate()["val_bps"] == pytest.approx(before, abs=0.01)


def test_checkpoint_is_plain_data(config: dict[str, Any], tmp_path: Path) -> None:
    trainer = _trainer(config)
    trainer.train(1)
    trainer.save(tmp_path)
    state = torch.load(tmp_path / CHECKPOINT, weights_only=True)

    def walk(obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                assert isinstance(k, (str, int))
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)
        else:
            assert obj is None or isinstance(obj, (torch.Tensor, int, float, str, bool)), type(obj)

    walk(state)
    assert state["step"] == 1 and isinstance(state["crop_rng"], torch.Tensor)
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # no temporary files left behind


def test_bad_checkpoints_and_mismatched_models(config: dict[str, Any], tmp_path: Path) -> None:
    trainer = _trainer(config)
    with pytest.raises(CorruptCheckpointError, match=r"no wavenet\.pt"):
        trainer.load(tmp_path)
    (tmp_path / CHECKPOINT).write_bytes(b"garbage")
    with pytest.raises(CorruptCheckpointError, match="cannot read"):
        trainer.load(tmp_path)
    trainer.save(tmp_path)
    bigger = WaveNetTrainer({**config, "residual_channels": 16})
    bigger.setup({"lr": 1e-3}, seed=0)
    with pytest.raises(SpecError, match="different model"):
        bigger.load(tmp_path)


@pytest.mark.parametrize(
    ("change", "hparams", "message"),
    [
        ({"layers": 3}, {"lr": 1e-3}, "unknown key"),
        ({}, {"lr": 1e-3, "momentum": 0.9}, "does not use"),
        ({}, {"beta1": 0.9}, "needs 'lr'"),
        ({"crop": 8}, {"lr": 1e-3}, "receptive field"),
        ({"data": None}, {"lr": 1e-3}, "data"),
    ],
)
def test_config_errors_name_the_field(
    config: dict[str, Any], change: dict[str, Any], hparams: dict[str, float], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        WaveNetTrainer({**config, **change}).setup(hparams, seed=0)


def test_batch_size_can_be_tuned(config: dict[str, Any]) -> None:
    trainer = _trainer(config, batch_size=2)
    assert trainer.batch_size == 2
    trainer.train(1)


def test_sample_audio_writes_a_playable_wav(config: dict[str, Any], tmp_path: Path) -> None:
    trainer = _trainer(config)
    trainer.train(2)
    trainer.save(tmp_path / "ckpt")
    out = sample_audio(tmp_path / "ckpt", tmp_path / "out.wav", seconds=0.05)
    with wave.open(str(out), "rb") as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (16000, 800, 2)


def test_vocoder_mode_trains_and_samples(config: dict[str, Any], tmp_path: Path) -> None:
    cfg = {**config, "mel_bins": 16, "mel_hop": 64}
    trainer = WaveNetTrainer(cfg)
    trainer.setup({"lr": 3e-3}, seed=0)
    trainer.train(2)
    assert set(trainer.evaluate()) == {"val_bps", "train_bps", "params"}
    trainer.save(tmp_path)
    out = sample_audio(tmp_path, tmp_path / "copy.wav", seconds=0.02, config=cfg)
    with wave.open(str(out), "rb") as w:
        assert w.getnframes() == 320


def test_architecture_can_be_tuned_and_a_checkpoint_only_loads_into_its_own_shape(config, tmp_path) -> None:
    small, large = WaveNetTrainer(config), WaveNetTrainer(config)
    small.setup({"lr": 1e-3, "residual_channels": 4}, seed=0)
    large.setup({"lr": 1e-3, "residual_channels": 12}, seed=0)
    assert small.evaluate()["params"] < large.evaluate()["params"]  # model size: a second objective
    small.save(tmp_path)
    twin = WaveNetTrainer(config)
    twin.setup({"lr": 3e-3, "residual_channels": 4}, seed=1)
    twin.load(tmp_path)  # same architecture, other learning rate: a PBT child
    with pytest.raises(SpecError, match="mutable: false"):
        large.load(tmp_path)
