"""The WaveNet case study's trainer: the paper's speech task behind the trainer protocol.

Config (``trainer.config`` in the study file; unknown keys are errors, to catch typos):
  ``data`` (corpus folder, required), ``sample_rate`` (16000), ``resample`` (false),
  ``validation_fraction`` / ``split_seed`` (only for folders whose layout has no split),
  model size: ``stacks``, ``layers_per_stack``, ``residual_channels``, ``dilation_channels``,
  ``skip_channels``, ``kernel_size``, ``quantization``; vocoder mode: ``mel_bins`` (0 = off),
  ``mel_hop``; ``batch_size``, ``crop`` (samples per training crop), ``val_crops``,
  ``val_crop`` (fixed validation crops), ``train_eval_crops``; ``device`` (auto), ``threads``.

Hyperparameters: ``lr`` (required), ``beta1``, ``beta2``, ``weight_decay``, ``grad_clip``,
``batch_size``; naming any other is an error rather than a silently ignored search axis.

Each training crop holds ``crop + 1`` samples (inputs and the next-sample targets), cut at a
random offset of the training set concatenated into one stream (utterances are joined at
their trimmed silences, so a crop that spans two costs nothing). Only predictions whose
whole receptive field lies inside the crop are scored, in training and in evaluation, so
the loss never rewards guessing from zero padding. ``evaluate`` reports negative
log-likelihood in bits per sample on fixed crops spaced evenly over the validation stream
(``val_bps``) and, for comparison, over the training stream (``train_bps``).

All randomness after initialisation comes from the trainer's own ``torch.Generator`` (crop
offsets); numpy and ``random`` are not used, so that generator's state, the weights, the
optimiser state and the step counter are all a checkpoint needs to continue bit-exactly.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pbt.errors import CorruptCheckpointError, SpecError
from pbt.trainers.base import HParams
from pbt.wavenet.corpus import load_speech_corpus
from pbt.wavenet.model import WaveNet, WaveNetConfig, log_mel_spectrogram, mu_law_decode, mu_law_encode
from pbt.wavenet.wav import write_wav

CHECKPOINT = "wavenet.pt"
FORMAT = "pbt-wavenet/1"
#: Architecture hyperparameters a study may tune (integers). Declare them ``mutable: false``:
#: a child loads its parent's weights, which only fit the parent's architecture.
ARCHITECTURE = ("stacks", "layers_per_stack", "residual_channels", "dilation_channels", "skip_channels")
HPARAMS = ("lr", "beta1", "beta2", "weight_decay", "grad_clip", "batch_size", *ARCHITECTURE)
_MODEL_KEYS = tuple(f.name for f in fields(WaveNetConfig) if f.name != "cond_channels")
_DEFAULTS: dict[str, Any] = {
    "data": None,
    "sample_rate": 16000,
    "resample": False,
    "validation_fraction": 0.1,
    "split_seed": 0,
    "stacks": 2,
    "layers_per_stack": 10,
    "residual_channels": 32,
    "dilation_channels": 32,
    "skip_channels": 64,
    "kernel_size": 2,
    "quantization": 256,
    "mel_bins": 0,
    "mel_hop": 256,
    "batch_size": 8,
    "crop": 4096,
    "val_crops": 16,
    "val_crop": None,  # None: same as crop
    "train_eval_crops": None,  # None: same as val_crops
    "device": "auto",
    "threads": None,
}


@dataclass
class _Streams:
    sample_rate: int
    train: torch.Tensor  # int16, every training utterance end to end
    validation: torch.Tensor


_CORPUS_CACHE: dict[Any, _Streams] = {}


def corpus_streams(cfg: Mapping[str, Any], device: torch.device | None = None) -> _Streams:
    """The corpus as two int16 streams, loaded once per process and device: a worker runs many trials.

    On a GPU the whole corpus lives in device memory (int16: 115 MB per hour at 16 kHz), so
    cutting a batch of crops is one gather on the device instead of a host copy per step.
    """
    device = device or torch.device("cpu")
    key = (
        str(Path(cfg["data"]).resolve()),
        cfg["sample_rate"],
        bool(cfg["resample"]),
        cfg["validation_fraction"],
        cfg["split_seed"],
    )
    if (key, device) in _CORPUS_CACHE:
        return _CORPUS_CACHE[key, device]
    if key not in _CORPUS_CACHE:
        corpus = load_speech_corpus(
            cfg["data"],
            sample_rate=cfg["sample_rate"],
            resample=bool(cfg["resample"]),
            validation_fraction=cfg["validation_fraction"],
            seed=cfg["split_seed"],
        )
        _CORPUS_CACHE[key] = _Streams(
            corpus.sample_rate,
            torch.from_numpy(_concat(corpus.train)),
            torch.from_numpy(_concat(corpus.validation)),
        )
    host = _CORPUS_CACHE[key]
    if device.type != "cpu":
        streams = _Streams(host.sample_rate, host.train.to(device), host.validation.to(device))
        _CORPUS_CACHE[key, device] = streams
        return streams
    return host


def _concat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(arrays).astype(np.int16, copy=False)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class WaveNetTrainer:
    """Implements :class:`pbt.trainers.Trainer` for a WaveNet on a speech corpus."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        unknown = sorted(set(config) - set(_DEFAULTS))
        if unknown:
            raise SpecError(f"trainer.config: unknown key(s) {unknown} for WaveNetTrainer (known: {sorted(_DEFAULTS)})")
        self.cfg = {**_DEFAULTS, **config}
        if not self.cfg["data"]:
            raise SpecError("trainer.config.data: the corpus folder is required (build one with `pbt data speech`)")
        self.cfg["val_crop"] = self.cfg["val_crop"] or self.cfg["crop"]
        self.cfg["train_eval_crops"] = self.cfg["train_eval_crops"] or self.cfg["val_crops"]
        self.base_config = WaveNetConfig(
            **{k: int(self.cfg[k]) for k in _MODEL_KEYS}, cond_channels=int(self.cfg["mel_bins"])
        )
        self.model_config = self.base_config  # setup() applies tuned architecture hyperparameters
        if self.cfg["threads"]:
            torch.set_num_threads(int(self.cfg["threads"]))
        self.device = pick_device(str(self.cfg["device"]))
        self.step = 0
        self.model: WaveNet | None = None

    # ------------------------------------------------------------------ protocol

    def setup(self, hparams: HParams, *, seed: int = 0) -> None:
        unknown = sorted(set(hparams) - set(HPARAMS))
        if unknown:
            raise SpecError(f"parameters: WaveNetTrainer does not use {unknown} (it tunes {list(HPARAMS)})")
        if "lr" not in hparams:
            raise SpecError("parameters: WaveNetTrainer needs 'lr' (the learning rate it tunes)")
        self.hparams = dict(hparams)
        tuned = {k: int(hparams[k]) for k in ARCHITECTURE if k in hparams}
        self.model_config = replace(self.base_config, **tuned)
        rf = self.model_config.receptive_field
        for key in ("crop", "val_crop"):
            if int(self.cfg[key]) < rf and not tuned:  # the study file alone: the same for every trial
                raise SpecError(
                    f"trainer.config.{key}: {self.cfg[key]} samples is shorter than the model's "
                    f"receptive field ({rf}); no prediction would see its whole context"
                )
            if int(self.cfg[key]) < rf:
                raise ValueError(f"the architecture {tuned} has a receptive field of {rf} samples, longer than "
                                 f"trainer.config.{key} ({self.cfg[key]})")
        self.batch_size = int(hparams.get("batch_size", self.cfg["batch_size"]))
        self.grad_clip = float(hparams["grad_clip"]) if hparams.get("grad_clip") else None
        with torch.random.fork_rng(devices=[]):  # same weights for the same seed, whatever ran before
            torch.manual_seed(seed)
            self.model = WaveNet(self.model_config)
        self.model.to(self.device)
        self.data = corpus_streams(self.cfg, self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=float(hparams["lr"]))
        self._apply_hparams()
        self.crop_rng = torch.Generator().manual_seed(seed + 0x5EED)
        self.step = 0
        self.amp_dtype: torch.dtype | None = None
        self.scaler: torch.amp.GradScaler | None = None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype is torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")
        self.val_starts = _even_starts(self.data.validation, int(self.cfg["val_crop"]), int(self.cfg["val_crops"]))
        self.train_eval_starts = _even_starts(
            self.data.train, int(self.cfg["val_crop"]), int(self.cfg["train_eval_crops"])
        )
        _even_starts(self.data.train, int(self.cfg["crop"]), 1)  # fail now if the audio is too short

    def _apply_hparams(self) -> None:
        h = self.hparams
        for group in self.optimizer.param_groups:
            group["lr"] = float(h["lr"])
            group["betas"] = (float(h.get("beta1", 0.9)), float(h.get("beta2", 0.999)))
            group["weight_decay"] = float(h.get("weight_decay", 0.0))

    def train(self, steps: int) -> dict[str, float]:
        model = self._model()
        model.train()
        crop, stream = int(self.cfg["crop"]), self.data.train
        total = torch.zeros((), device=self.device)
        for _ in range(steps):
            starts = torch.randint(0, stream.numel() - crop, (self.batch_size,), generator=self.crop_rng)
            loss = self._loss(stream, starts, crop)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.unscale_(self.optimizer)
            else:
                loss.backward()
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            total += loss.detach()
            self.step += 1
        return {"train_loss_bps": float(total) / max(steps, 1) / math.log(2), "step": float(self.step)}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        model = self._model()
        model.eval()
        crop = int(self.cfg["val_crop"])
        out = {
            "val_bps": self._mean_nll(self.data.validation, self.val_starts, crop) / math.log(2),
            "train_bps": self._mean_nll(self.data.train, self.train_eval_starts, crop) / math.log(2),
            "params": float(model.num_parameters()),  # model size: a second objective to trade against
        }
        model.train()
        return out

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "format": FORMAT,
            "model": self._model().state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "crop_rng": self.crop_rng.get_state(),
            "step": self.step,
            "hparams": {k: float(v) for k, v in self.hparams.items()},
            "model_config": self.model_config.to_dict(),
            "sample_rate": self.data.sample_rate,
            "mel_hop": int(self.cfg["mel_hop"]),
            "data": str(self.cfg["data"]),
        }
        tmp = directory / f".{CHECKPOINT}.tmp-{os.getpid()}"
        torch.save(state, tmp)
        os.replace(tmp, directory / CHECKPOINT)

    def load(self, directory: Path) -> None:
        """Restore the parent's (or our own) state, then re-apply this trial's hyperparameters."""
        state = read_checkpoint(Path(directory))
        if state["model_config"] != self.model_config.to_dict():
            raise SpecError(
                f"{directory}: checkpoint is a different model ({state['model_config']}) from this trial's "
                f"({self.model_config.to_dict()}); declare tuned architecture parameters `mutable: false` so "
                "a child keeps its parent's architecture"
            )
        model = self._model()
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._apply_hparams()
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.crop_rng.set_state(state["crop_rng"])
        self.step = int(state["step"])

    # ------------------------------------------------------------------ internals

    def _model(self) -> WaveNet:
        if self.model is None:
            raise RuntimeError("WaveNetTrainer.setup() must run before train/evaluate/save/load")
        return self.model

    def _loss(self, stream: torch.Tensor, starts: torch.Tensor, crop: int) -> torch.Tensor:
        """Mean NLL in nats over the predictions whose receptive field lies inside each crop."""
        offsets = starts.to(stream.device)[:, None] + torch.arange(crop + 1, device=stream.device)
        audio = stream[offsets].float() / 32768.0
        q = mu_law_encode(audio, self.model_config.quantization)
        targets = q[:, 1:].clone()
        targets[:, : self.model_config.receptive_field - 1] = -1
        cond = None
        if self.model_config.cond_channels:
            hop = int(self.cfg["mel_hop"])
            cond = log_mel_spectrogram(
                audio[:, 1:], self.data.sample_rate, self.model_config.cond_channels, hop, 4 * hop
            )
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            _, loss = self._model()(q[:, :-1], cond, targets)
        assert loss is not None
        return loss

    def _mean_nll(self, stream: torch.Tensor, starts: torch.Tensor, crop: int) -> float:
        # Every crop scores the same number of predictions, so the mean of batch means is exact
        # when batches are weighted by their size.
        # The config's batch size, not a tuned one, so a metric never depends on a hyperparameter's
        # effect on summation order.
        total, size = 0.0, int(self.cfg["batch_size"])
        for i in range(0, starts.numel(), size):
            batch = starts[i : i + size]
            total += float(self._loss(stream, batch, crop)) * batch.numel()
        return total / starts.numel()


def _even_starts(stream: torch.Tensor, crop: int, n: int) -> torch.Tensor:
    """``n`` crop offsets spread evenly over a stream: fixed, so evaluations compare."""
    room = stream.numel() - crop - 1
    if room < 0:
        raise SpecError(
            f"trainer.config: a crop of {crop + 1} samples is longer than the audio ({stream.numel()} samples)"
        )
    return torch.linspace(0, room, n).round().long()


def read_checkpoint(directory: Path) -> dict[str, Any]:
    """A checkpoint's plain dict; ``weights_only`` so a checkpoint cannot run code."""
    path = directory / CHECKPOINT if directory.is_dir() else directory
    if not path.is_file():
        raise CorruptCheckpointError(f"{directory}: no {CHECKPOINT} (not a WaveNet checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean the same thing here
        raise CorruptCheckpointError(f"{path}: cannot read WaveNet checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CorruptCheckpointError(f"{path}: not a {FORMAT} checkpoint")
    return state


def sample_audio(
    checkpoint_dir: Path | str,
    out_wav: Path | str,
    seconds: float = 2.0,
    config: Mapping[str, Any] | None = None,
    *,
    temperature: float = 1.0,
    seed: int = 0,
) -> Path:
    """Generate ``seconds`` of audio from a checkpoint so a person can listen to the model.

    The architecture comes from the checkpoint itself; ``config`` may set ``device``,
    ``threads`` and, for a vocoder checkpoint, ``data`` (whose first validation utterance's
    log-mel spectrogram conditions the generation: copy synthesis).
    """
    cfg = dict(config or {})
    state = read_checkpoint(Path(checkpoint_dir))
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    device = pick_device(str(cfg.get("device", "auto")))
    model = WaveNet(WaveNetConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    model.to(device)
    sample_rate = int(state["sample_rate"])
    n = max(1, int(seconds * sample_rate))
    cond = None
    if model.config.cond_channels:
        trainer_cfg = {**_DEFAULTS, "data": cfg.get("data", state["data"]), "sample_rate": sample_rate}
        trainer_cfg.update({k: cfg[k] for k in ("resample", "validation_fraction", "split_seed") if k in cfg})
        val = corpus_streams(trainer_cfg).validation[:n].float() / 32768.0
        n = val.numel()
        hop = int(state["mel_hop"])
        cond = log_mel_spectrogram(val[None].to(device), sample_rate, model.config.cond_channels, hop, 4 * hop)
    generator = torch.Generator(device=device).manual_seed(seed)
    classes = model.generate(n, cond=cond, temperature=temperature, generator=generator)
    audio = mu_law_decode(classes[0].cpu(), model.config.quantization)
    pcm = (audio * 32767.0).round().clamp(-32768, 32767).to(torch.int16).numpy()
    out = Path(out_wav)
    write_wav(out, pcm, sample_rate)
    return out
