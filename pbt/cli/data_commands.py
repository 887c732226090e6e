"""``pbt data speech`` builds the WaveNet study's corpus; ``pbt sample`` lets a person listen to a model.

numpy, scipy and torch are imported inside the commands so that ``pbt --help`` stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pbt.cli.common import cli_errors, console, out
from pbt.cli.options import StudyStorage, workers_option
from pbt.errors import CorruptCheckpointError, SpecError


def _csv(value: str | None, kind: type = str) -> list | None:
    return [kind(v.strip()) for v in value.split(",") if v.strip()] if value else None


def speech(
    out_dir: Path = typer.Option(..., "--out", "-o", help="folder to create (e.g. data/speech)"),
    seed: int = typer.Option(0, "--seed", help="same seed, same bytes"),
    sentences: int = typer.Option(200, "--sentences", "-n", min=2, help="distinct sentences to speak"),
    voices: str | None = typer.Option(
        None, "--voices", help="comma-separated eSpeak NG voices (default: en-us,en-us+f2,en,en+f4,en-gb-scotland)"
    ),
    rates: str | None = typer.Option(None, "--rates", help="comma-separated words per minute (default: 140,170,200)"),
    takes: int = typer.Option(1, "--takes", min=1, help="readings of each sentence, by different voices"),
    sample_rate: int = typer.Option(16000, "--sample-rate", min=1000, help="Hz of the written WAV files"),
    validation_fraction: float = typer.Option(0.1, "--validation-fraction", help="share of sentences held out"),
    workers: Annotated[int | None, workers_option("synthesis processes (default: one per CPU)")] = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a corpus already built in --out"),
) -> None:
    """Synthesise an offline English speech corpus with eSpeak NG: WAV files plus manifest.json.

    Train and validation are split by sentence, so validation is speech of unseen text.
    """
    with cli_errors():
        from pbt.wavenet.corpus import DEFAULT_RATES, DEFAULT_VOICES, build_speech_corpus

        started = time.perf_counter()
        with Progress(
            TextColumn("synthesising"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("speech", total=None)
            manifest = build_speech_corpus(
                out_dir,
                seed=seed,
                sentences=sentences,
                voices=_csv(voices) or DEFAULT_VOICES,
                rates=_csv(rates, int) or DEFAULT_RATES,
                takes=takes,
                sample_rate=sample_rate,
                validation_fraction=validation_fraction,
                workers=workers,
                overwrite=overwrite,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        c = manifest["counts"]
        size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
        out.print(
            f"wrote {out_dir}: {c['train']['utterances']} train / {c['validation']['utterances']} validation "
            f"utterances ({c['train']['sentences']} / {c['validation']['sentences']} sentences), "
            f"{manifest['total_seconds'] / 60:.1f} min of audio at {manifest['sample_rate']} Hz, "
            f"{size / 1e6:.1f} MB, in {time.perf_counter() - started:.1f} s",
            highlight=False,
        )


def sample(
    study: str = typer.Argument(
        ..., help="study name (its best trial's model, or --trial's); a folder holding wavenet.pt also works"
    ),
    trial: str | None = typer.Option(None, "--trial", "-t", help="trial id (default: the best trial)"),
    storage: StudyStorage = "runs",
    out_wav: Path = typer.Option(..., "--out", "-o", help="WAV file to write"),
    seconds: float = typer.Option(2.0, "--seconds", min=0.001, help="length of audio to generate"),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="softmax temperature; 0 is greedy"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="cpu, cuda, cuda:1 ... (auto: cuda when present)"),
    data: Path | None = typer.Option(None, "--data", help="corpus for a vocoder checkpoint's conditioning"),
) -> None:
    """Generate audio from a WaveNet study's model, to listen to it: by default its best trial's.

    The trial's final checkpoint is read from the study's storage (a path, file:// or s3://).

    STUDY may instead be a local checkpoint folder (any path with a /), e.g. from pbt replay --save-checkpoint.
    """
    with cli_errors():
        import tempfile

        from pbt.wavenet.trainer import sample_audio

        started = time.perf_counter()
        config = {"device": device, **({"data": str(data)} if data else {})}
        with tempfile.TemporaryDirectory(prefix="pbt-sample-") as tmp:
            if "/" in study:
                if trial:
                    raise SpecError("--trial picks a trial of a study; it does not apply to a checkpoint folder")
                source, what = _local_checkpoint(study), study
            else:
                source, what = _study_checkpoint(study, trial, storage, Path(tmp) / "checkpoint")
            with console.status(f"generating {seconds:g} s of audio from {what}"):
                path = sample_audio(source, out_wav, seconds, config, temperature=temperature, seed=seed)
        out.print(f"wrote {path} ({seconds:g} s of {what}) in {time.perf_counter() - started:.1f} s",
                  highlight=False, soft_wrap=True)


def _study_checkpoint(study: str, trial_id: str | None, storage: str, directory: Path) -> tuple[Path, str]:
    """Download a trial's final checkpoint (default: the best trial's) into ``directory``."""
    from pbt.analysis.study import open_study

    stored = open_study(storage, study)
    if not stored.spec.trainer.path.endswith(":WaveNetTrainer"):
        raise SpecError(f"pbt sample plays WaveNet models; study {study} trains {stored.spec.trainer.path}")
    trial = stored.trial(trial_id)
    stored.fetch_checkpoint(trial, directory)
    metric = stored.spec.objective.metric
    score = f", {metric} {trial.objective:.4g}" if trial.objective is not None else ""
    return directory, f"{study} {'best trial ' if trial_id is None else ''}{trial.id}{score}"


def _local_checkpoint(checkpoint: str) -> Path:
    if checkpoint.startswith("file://"):
        checkpoint = checkpoint.removeprefix("file://")
    elif "://" in checkpoint:
        raise SpecError(f"{checkpoint}: pbt sample reads local checkpoint folders for now; download it first")
    path = Path(checkpoint)
    if path.is_file() or (path / "wavenet.pt").is_file():
        return path
    if not path.exists():
        raise CorruptCheckpointError(f"{path}: no such checkpoint folder")
    found = sorted(path.rglob("wavenet.pt"))
    if len(found) != 1:
        what = "no wavenet.pt" if not found else f"{len(found)} wavenet.pt files (pick one folder)"
        raise CorruptCheckpointError(f"{path}: {what} below this folder")
    return found[0].parent
