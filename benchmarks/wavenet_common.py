"""What the WaveNet benchmarks share: model sizes, the corpus, a bare PyTorch loop, trial records.

Sizes come from the example study files (``examples/wavenet-cpu.yaml``, ``wavenet-gpu.yaml``),
so the benchmarks measure the studies a user runs, not a private configuration; ``tiny`` is the
CPU study shrunk for ``--quick`` runs. The bare loop is the yardstick for overhead: the same
model, batch, crop and device as the trainer, trained by a plain loop with no pbt in it.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {"cpu": ROOT / "examples" / "wavenet-cpu.yaml", "gpu": ROOT / "examples" / "wavenet-gpu.yaml"}
# --quick: the CPU study's model at about a third of its step time (measured 20 ms vs 60 ms per step
# on one core), still deep enough (receptive field 31 samples) for the learning rate to matter.
TINY = {"stacks": 2, "layers_per_stack": 4, "residual_channels": 16, "dilation_channels": 16,
        "skip_channels": 32, "crop": 512}


def example(size: str) -> dict[str, Any]:
    """The example study file behind ``size`` (tiny: the CPU one)."""
    return yaml.safe_load(EXAMPLES["gpu" if size == "gpu" else "cpu"].read_text())


def trainer_config(size: str, data: Path | str) -> dict[str, Any]:
    config = dict(example(size)["trainer"]["config"])
    if size == "tiny":
        config.update(TINY)
    config["data"] = str(data)
    return config


def search_space(size: str) -> dict[str, Any]:
    return example(size)["parameters"]


def ensure_corpus(path: Path | str) -> Path:
    """The corpus the example studies expect; built (seconds) when missing, like ``pbt data speech``."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        from pbt.wavenet.corpus import build_speech_corpus

        print(f"building the speech corpus in {path} ...", file=sys.stderr)
        build_speech_corpus(path, seed=0)
    return path


def load_trials(storage: Path | str, study: str) -> list[Any]:
    from pbt.storage import open_object_store
    from pbt.storage.study_store import StudyStore

    return StudyStore(open_object_store(str(storage)), study).load_trials()


# The bare loop --------------------------------------------------------------------------------


def bare_loop(config: dict[str, Any], steps: int, warmup: int = 20, lr: float = 3e-3, seed: int = 0) -> dict[str, Any]:
    """Seconds per training step of a plain PyTorch loop, in a fresh process (as a worker is).

    It repeats what :meth:`WaveNetTrainer.train` does per step — random crops of the training
    stream, mu-law targets with the receptive field masked, Adam — without any pbt code. The
    trainer's setup (model, optimiser, corpus on the device) is timed too, because pbt pays it
    once per trial and the overhead breakdown needs it.
    """
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_bare_main, args=(child, config, steps, warmup, lr, seed))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        raise RuntimeError(f"the bare-loop process died (exit code {proc.exitcode})") from None
    finally:
        proc.join()
    if isinstance(result, BaseException):
        raise result
    return result


def _bare_main(conn: Any, config: dict[str, Any], steps: int, warmup: int, lr: float, seed: int) -> None:
    try:
        conn.send(_bare(config, steps, warmup, lr, seed))
    except Exception as exc:  # sent back, re-raised in the parent
        conn.send(exc)


def _bare(config: dict[str, Any], steps: int, warmup: int, lr: float, seed: int) -> dict[str, Any]:
    import torch

    from pbt.wavenet.model import WaveNet, WaveNetConfig, mu_law_encode
    from pbt.wavenet.trainer import WaveNetTrainer, corpus_streams

    trainer = WaveNetTrainer(config)  # only to resolve defaults, the device and threads as a worker would
    cfg, device = trainer.cfg, trainer.device
    streams = corpus_streams(cfg, device)
    t0 = time.perf_counter()
    WaveNetTrainer(config).setup({"lr": lr}, seed=seed)  # corpus already cached: what a warm worker pays
    setup_s = time.perf_counter() - t0

    torch.manual_seed(seed)
    model_cfg = WaveNetConfig(**{k: int(cfg[k]) for k in ("stacks", "layers_per_stack", "residual_channels",
                                                           "dilation_channels", "skip_channels", "kernel_size",
                                                           "quantization")})
    model = WaveNet(model_cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    amp = None
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp is torch.float16 else None
    generator = torch.Generator().manual_seed(seed)
    crop, batch, stream = int(cfg["crop"]), int(cfg["batch_size"]), streams.train
    rf = model_cfg.receptive_field
    ramp = torch.arange(crop + 1, device=device)

    def step() -> torch.Tensor:
        starts = torch.randint(0, stream.numel() - crop, (batch,), generator=generator).to(device)
        q = mu_law_encode(stream[starts[:, None] + ramp].float() / 32768.0, model_cfg.quantization)
        targets = q[:, 1:].clone()
        targets[:, : rf - 1] = -1
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            _, loss = model(q[:, :-1], None, targets)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        return loss.detach()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    last = torch.zeros(())
    for _ in range(steps):
        last = step()
    float(last)  # waits for the device
    seconds = time.perf_counter() - t0
    return {
        "s_per_step": seconds / steps,
        "steps": steps,
        "trainer_setup_s": setup_s,
        "final_loss_bps": float(last) / math.log(2),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }


# Trial records -> the paper's time breakdown ----------------------------------------------------

PHASES = ("queue_wait", "checkpoint_load", "train", "evaluate", "checkpoint_save")


def phase_totals(trials: list[Any]) -> dict[str, float]:
    """Seconds per phase summed over ``trials`` (each record carries its attempt's timings)."""
    return {phase: sum(getattr(t.timings, phase) for t in trials) for phase in PHASES}
