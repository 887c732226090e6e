"""The speech corpus: build one with eSpeak NG, load any (built, LJSpeech, VCTK, a WAV folder).

The builder speaks deterministically generated English sentences (:mod:`pbt.wavenet.sentences`)
with eSpeak NG (:mod:`pbt.wavenet.espeak`), so the case study needs no download. The loader
reads the builder's output and real corpora through one path, so pointing a study at real
speech is a one-line change.

A build is byte-identical for a seed however many CPUs run it: utterances are synthesised in
fixed chunks of :data:`CHUNK`, each in a fresh process, and written in manifest order.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pbt.wavenet.errors import CorpusError
from pbt.wavenet.espeak import ESPEAK_RATE, ESpeak, synthesize_in_fresh_process
from pbt.wavenet.sentences import make_sentences
from pbt.wavenet.wav import read_wav, resample_int16, write_wav

__all__ = [
    "CHUNK",
    "DEFAULT_RATES",
    "DEFAULT_VOICES",
    "MANIFEST",
    "CorpusError",
    "SpeechCorpus",
    "Utterance",
    "build_speech_corpus",
    "discover",
    "load_speech_corpus",
    "split_groups",
]

MANIFEST = "manifest.json"
FORMAT = "pbt-speech/1"
DEFAULT_VOICES = ("en-us", "en-us+f2", "en", "en+f4", "en-gb-scotland")
DEFAULT_RATES = (140, 170, 200)  # words per minute; eSpeak's default is 175
CHUNK = 25  # utterances per synthesis process; part of the output's definition, keep fixed


# ---------------------------------------------------------------------------- builder


def build_speech_corpus(
    out: Path | str,
    *,
    seed: int = 0,
    sentences: int = 200,
    voices: Sequence[str] = DEFAULT_VOICES,
    rates: Sequence[int] = DEFAULT_RATES,
    takes: int = 1,
    sample_rate: int = 16000,
    validation_fraction: float = 0.1,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``wavs/*.wav`` and ``manifest.json`` under ``out``; return the manifest.

    Each sentence is spoken ``takes`` times by different voices, each at a rate drawn from
    ``rates``; the train/validation split is by sentence, so validation measures
    generalisation to unseen text rather than to another reading of a training sentence.

    ``out`` receives ``wavs/NNNNN.wav`` (mono int16 at ``sample_rate`` Hz) and
    ``manifest.json`` (format ``pbt-speech/1``: the build's arguments, per-split counts and
    seconds, and one entry per file with its split, sentence, voice and rate). With the
    same eSpeak NG and SciPy, the bytes written are a function of the other arguments:
    ``workers`` and ``progress`` change how fast a corpus is built, never what it holds.
    ``workers`` (default: one per CPU) is the number of synthesis processes run at once;
    ``progress(done, total)`` is called after each chunk of utterances. The corpus is built
    in a temporary sibling folder and renamed into place, so ``out`` never holds half a corpus.

    Raises :class:`CorpusError` for invalid arguments, an unknown voice, missing eSpeak NG,
    or an ``out`` that is neither empty nor (with ``overwrite``) a corpus built here.
    """
    out = Path(out)
    voices, rates = list(voices), [int(r) for r in rates]
    if sentences < 2:
        raise CorpusError(f"{out}: need at least 2 sentences to split train/validation, got {sentences}")
    if not voices or not rates or not 1 <= takes <= len(voices):
        raise CorpusError(f"{out}: need >= 1 voice and rate and 1 <= takes <= len(voices) (got {takes})")
    if not 0 < validation_fraction < 1:
        raise CorpusError(f"{out}: validation_fraction must be in (0, 1), got {validation_fraction}")
    engine = ESpeak.instance()
    bad = [v for v in voices if not engine.has_voice(v)]
    if bad:
        raise CorpusError(f"eSpeak NG has no voice(s) {bad} (try en-us, en, en-us+f2, en-gb-scotland)")
    replaceable = overwrite and (out / MANIFEST).is_file()
    if out.exists() and any(out.iterdir()) and not replaceable:
        raise CorpusError(f"{out}: folder exists and is not empty (--overwrite replaces only a corpus built here)")

    rng = random.Random(seed)
    texts = make_sentences(sentences, seed)
    n_val = max(1, round(validation_fraction * sentences))
    val_ids = set(rng.sample(range(sentences), n_val))
    entries: list[dict[str, Any]] = []
    for sid, text in enumerate(texts):
        for voice in rng.sample(voices, takes):
            entries.append(
                {
                    "path": f"wavs/{len(entries):05d}.wav",
                    "split": "validation" if sid in val_ids else "train",
                    "sentence_id": sid,
                    "sentence": text,
                    "voice": voice,
                    "rate": rng.choice(rates),
                }
            )

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "wavs").mkdir(parents=True)
    jobs = []
    for k in range(0, len(entries), CHUNK):
        items = [(i, e["sentence"], e["voice"], e["rate"]) for i, e in enumerate(entries[k : k + CHUNK], start=k)]
        jobs.append({"seed": seed, "items": items})
    try:
        done = 0
        n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
        with ThreadPoolExecutor(n_workers) as pool:
            for job, clips in zip(jobs, pool.map(synthesize_in_fresh_process, jobs)):
                for (index, *_), clip in zip(job["items"], clips):
                    audio = resample_int16(clip, ESPEAK_RATE, sample_rate)
                    write_wav(tmp / entries[index]["path"], audio, sample_rate)
                    entries[index]["samples"] = int(audio.size)
                    entries[index]["seconds"] = round(audio.size / sample_rate, 4)
                done += len(clips)
                if progress:
                    progress(done, len(entries))
        manifest = _manifest(entries, seed=seed, sample_rate=sample_rate, voices=voices, rates=rates)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _manifest(entries: list[dict[str, Any]], **info: Any) -> dict[str, Any]:
    def count(split: str) -> dict[str, Any]:
        rows = [e for e in entries if e["split"] == split]
        return {
            "utterances": len(rows),
            "sentences": len({e["sentence_id"] for e in rows}),
            "seconds": round(sum(e["samples"] for e in rows) / info["sample_rate"], 3),
        }

    counts = {"train": count("train"), "validation": count("validation")}
    total = round(counts["train"]["seconds"] + counts["validation"]["seconds"], 3)
    return {"format": FORMAT, **info, "counts": counts, "total_seconds": total, "files": entries}


# ---------------------------------------------------------------------------- loader


@dataclass
class Utterance:
    """One audio file of a corpus, before it is read."""

    path: Path
    group: str  # utterances sharing a group (a sentence) always land in the same split
    split: str | None = None


@dataclass
class SpeechCorpus:
    """int16 mono audio per utterance, split into train and validation."""

    root: Path
    layout: str
    sample_rate: int
    train: list[np.ndarray] = field(default_factory=list)
    validation: list[np.ndarray] = field(default_factory=list)
    train_files: list[Path] = field(default_factory=list)
    validation_files: list[Path] = field(default_factory=list)

    def seconds(self, split: str) -> float:
        """Audio length of ``split`` (``"train"`` or ``"validation"``) in seconds."""
        return sum(a.size for a in getattr(self, split)) / self.sample_rate


def discover(root: Path) -> tuple[str, list[Utterance]]:
    """Find the utterances of a corpus folder and the layout that names them.

    Layouts, tried in order: ``manifest`` (built by :func:`build_speech_corpus`; carries its
    own split), ``ljspeech`` (``metadata.csv`` + ``wavs/``), ``vctk`` (``wav48*/<speaker>/``;
    grouped by sentence number), ``folder`` (every ``.wav`` below ``root``). Raises
    :class:`CorpusError` if ``root`` is not a folder, holds no WAV file, or lists files it lacks.
    """
    if not root.exists():
        raise CorpusError(f"{root}: corpus folder does not exist (build one with `pbt data speech --out {root}`)")
    if not root.is_dir():
        raise CorpusError(f"{root}: not a folder")
    if (root / MANIFEST).is_file():
        try:
            manifest = json.loads((root / MANIFEST).read_text())
            utts = [Utterance(root / e["path"], str(e["sentence_id"]), e["split"]) for e in manifest["files"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise CorpusError(f"{root / MANIFEST}: not a valid corpus manifest ({exc!r})") from exc
        return "manifest", _must_exist(utts, root)
    if (root / "metadata.csv").is_file() and (root / "wavs").is_dir():
        ids = [line.split("|", 1)[0] for line in (root / "metadata.csv").read_text("utf-8").splitlines() if line]
        return "ljspeech", _must_exist([Utterance(root / "wavs" / f"{i}.wav", i) for i in ids], root)
    vctk = sorted(p for p in root.glob("wav48*") if p.is_dir())
    if vctk:
        # VCTK names are <speaker>_<n>: the same n is the same text for many speakers.
        files = sorted(f for d in vctk for f in d.glob("*/*.wav"))
        return "vctk", _must_exist([Utterance(f, f.stem.split("_", 1)[-1]) for f in files], root)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    return "folder", _must_exist([Utterance(f, str(f.relative_to(root).with_suffix(""))) for f in files], root)


def _must_exist(utts: list[Utterance], root: Path) -> list[Utterance]:
    if not utts:
        raise CorpusError(f"{root}: no .wav files found (expected a built corpus, LJSpeech, VCTK or a folder of WAVs)")
    missing = [u.path for u in utts if not u.path.is_file()]
    if missing:
        raise CorpusError(f"{root}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
    return utts


def split_groups(utts: list[Utterance], validation_fraction: float, seed: int) -> list[Utterance]:
    """Give every utterance a split, by group, unless its layout already said.

    About ``validation_fraction`` of the groups (at least one, never all) go to validation,
    chosen by ``random.Random(seed)``, so the split is a function of the seed and the file
    names. Raises :class:`CorpusError` for fewer than two groups.
    """
    if all(u.split in ("train", "validation") for u in utts):
        return utts
    groups = sorted({u.group for u in utts})
    if len(groups) < 2:
        raise CorpusError(f"{utts[0].path.parent}: need at least 2 distinct utterances to split train/validation")
    random.Random(seed).shuffle(groups)
    n_val = min(len(groups) - 1, max(1, round(validation_fraction * len(groups))))
    val = set(groups[:n_val])
    return [Utterance(u.path, u.group, "validation" if u.group in val else "train") for u in utts]


def load_speech_corpus(
    root: Path | str,
    *,
    sample_rate: int | None = 16000,
    resample: bool = False,
    validation_fraction: float = 0.1,
    seed: int = 0,
) -> SpeechCorpus:
    """Load any supported corpus folder at ``sample_rate`` (None: the files' own, which must agree).

    See :func:`discover` for the layouts and :func:`split_groups` for how a layout without a
    split is split. Reads every file into memory (int16: 115 MB per hour at 16 kHz).

    A file at another rate is an error unless ``resample`` is set: silently resampling a
    corpus would hide a mistake (e.g. a 48 kHz corpus paired with a 16 kHz model).
    Raises :class:`CorpusError` for that, for anything :func:`discover` or :func:`read_wav`
    refuses, and for an empty split.
    """
    root = Path(root)
    layout, utts = discover(root)
    corpus = SpeechCorpus(root=root, layout=layout, sample_rate=sample_rate or 0)
    for u in split_groups(utts, validation_fraction, seed):
        audio, rate = read_wav(u.path)
        if corpus.sample_rate == 0:
            corpus.sample_rate = rate
        if rate != corpus.sample_rate:
            if not resample:
                raise CorpusError(
                    f"{u.path}: sample rate is {rate} Hz, expected {corpus.sample_rate} Hz "
                    "(set `resample: true` in the trainer config, or resample the corpus)"
                )
            audio = resample_int16(audio, rate, corpus.sample_rate)
        getattr(corpus, u.split).append(audio)
        getattr(corpus, f"{u.split}_files").append(u.path)
    for split in ("train", "validation"):
        if not getattr(corpus, split):
            raise CorpusError(f"{root}: the {split} split is empty")
    return corpus
