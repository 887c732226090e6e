"""Speech for the WaveNet case study: an offline corpus builder and a loader for WAV folders.

The builder speaks deterministically generated English sentences with eSpeak NG (shipped,
library and voices, by the ``espeakng-loader`` wheel), so the case study needs no download.
The loader reads the builder's output and real corpora (LJSpeech, VCTK, or any folder of
WAV files) through one path, so pointing a study at real speech is a one-line change.

eSpeak carries synthesis state (pitch flutter, phase) from one utterance to the next, even
across ``espeak_Terminate``; its output is a pure function of the text only for a process's
sequence of utterances. The builder therefore synthesises fixed chunks of utterances, each
in a fresh process, which makes a build byte-identical for a seed however many CPUs run it.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pbt.errors import FatalError

MANIFEST = "manifest.json"
FORMAT = "pbt-speech/1"
DEFAULT_VOICES = ("en-us", "en-us+f2", "en", "en+f4", "en-gb-scotland")
DEFAULT_RATES = (140, 170, 200)  # words per minute; eSpeak's default is 175
ESPEAK_RATE = 22050
CHUNK = 25  # utterances per synthesis process; part of the output's definition, keep fixed


class CorpusError(FatalError):
    """A corpus folder or file is missing, empty, unreadable, or at the wrong sample rate."""


# ---------------------------------------------------------------------------- sentences

# fmt: off
_SUBJECTS = (
    "the old man", "a young girl", "my sister", "the teacher", "our neighbour", "the farmer", "a tired pilot",
    "the small boy", "her brother", "the doctor", "a quiet student", "the captain", "my uncle", "the baker",
    "a friendly dog", "the new manager", "his mother", "the singer",
)
_VERBS = (
    "painted", "carried", "found", "cleaned", "opened", "borrowed", "repaired", "described", "watched",
    "sold", "forgot", "noticed", "packed", "wrapped", "moved", "counted",
)
_OBJECTS = (
    "the blue door", "a heavy box", "three green apples", "the broken clock", "an old map",
    "the kitchen table", "a wooden boat", "the letters", "a bright lamp", "the garden gate",
    "two silver coins", "the winter coat", "a long ladder", "the red bicycle", "a basket of bread",
)
_PLACES = (
    "in the morning", "near the river", "after dinner", "before the storm", "at the station", "on the hill",
    "by the window", "during the holiday", "behind the school", "at the market", "under the bridge",
    "in the quiet village",
)
_ADVERBS = ("slowly", "carefully", "quickly", "quietly", "happily", "again", "twice", "at last")
_TEMPLATES = (
    "{S} {V} {O} {P}.",
    "{P}, {s} {V} {O}.",
    "{S} {A} {V} {O}.",
    "Did {s} really say that {s2} {V} {O}?",
    "{S} {V} {O}, and {s2} {V2} {O2}.",
    "Why has {s} {V} {O} {P}?",
    "{S} said that {s2} {V} {O} {A}.",
    "There were {n} people {P}, and {s} {V} {O}.",
)
_NUMBERS = ("two", "three", "five", "seven", "ten", "twelve", "twenty", "forty")
# fmt: on


def make_sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct English sentences, the same for the same seed on every machine."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        s, s2 = rng.sample(_SUBJECTS, 2)
        v, v2 = rng.sample(_VERBS, 2)
        o, o2 = rng.sample(_OBJECTS, 2)
        text = rng.choice(_TEMPLATES).format(
            S=s[0].upper() + s[1:],
            s=s,
            s2=s2,
            V=v,
            V2=v2,
            O=o,
            O2=o2,
            P=rng.choice(_PLACES),
            A=rng.choice(_ADVERBS),
            n=rng.choice(_NUMBERS),
        )
        seen[text[0].upper() + text[1:]] = None
    return list(seen)


# ---------------------------------------------------------------------------- eSpeak NG


class ESpeak:
    """libespeak-ng through ctypes, initialised once per process (the library is a singleton)."""

    _instance: ClassVar[ESpeak | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    _AUDIO_OUTPUT_SYNCHRONOUS = 2
    _INITIALIZE_DONT_EXIT = 0x8000  # report a bad data path instead of calling exit()
    _POS_CHARACTER = 1
    _CHARS_UTF8 = 1
    _PARAM_RATE = 1
    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise CorpusError("the speech corpus needs eSpeak NG: pip install 'pbt[wavenet]'") from exc
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(self._AUDIO_OUTPUT_SYNCHRONOUS, 0, data, self._INITIALIZE_DONT_EXIT)
        if rate != ESPEAK_RATE:
            raise CorpusError(f"eSpeak NG failed to initialise from {data.decode()} (returned {rate})")
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # keep a reference: C holds only a pointer
        lib.espeak_SetSynthCallback(self._callback)

    @classmethod
    def instance(cls) -> ESpeak:
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav: Any, n: int, _events: Any) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep going

    def has_voice(self, voice: str) -> bool:
        with self._lock:
            return self._lib.espeak_SetVoiceByName(voice.encode()) == 0

    def synthesize(self, text: str, voice: str, rate: int, seed: int = 0) -> np.ndarray:
        """int16 samples at 22,050 Hz."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise CorpusError(f"eSpeak NG has no voice {voice!r} (try en-us, en, en-us+f2, en-gb-scotland)")
            self._lib.espeak_SetParameter(self._PARAM_RATE, int(rate), 0)
            self._lib.espeak_ng_SetRandSeed(seed)
            self._chunks = []
            raw = text.encode("utf-8")
            err = self._lib.espeak_Synth(raw, len(raw) + 1, 0, self._POS_CHARACTER, 0, self._CHARS_UTF8, None, None)
            if err != 0:
                raise CorpusError(f"eSpeak NG failed on {text!r} with voice {voice!r} (error {err})")
            return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def _trim_silence(audio: np.ndarray, sample_rate: int, threshold: int = 300, margin_s: float = 0.05) -> np.ndarray:
    """Cut eSpeak's long leading and trailing silence, keeping a short natural margin."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > threshold)
    if loud.size == 0:
        return audio
    margin = int(margin_s * sample_rate)
    return audio[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def resample_int16(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling (anti-aliased, exact rational ratio), back to int16."""
    if source_rate == target_rate:
        return audio.astype(np.int16, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(source_rate, target_rate)
    out = resample_poly(audio.astype(np.float64), target_rate // g, source_rate // g)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _chunk_worker_main() -> None:
    """Entry point of a synthesis subprocess: a JSON job on stdin, length-prefixed int16 on stdout.

    The child only synthesises and trims (numpy + ctypes); the parent resamples, so no
    child pays for importing scipy.
    """
    job = json.load(sys.stdin)
    engine = ESpeak.instance()
    for index, text, voice, rate in job["items"]:
        audio = _trim_silence(engine.synthesize(text, voice, rate, seed=job["seed"] + index), ESPEAK_RATE)
        sys.stdout.buffer.write(struct.pack("<q", audio.size) + audio.astype("<i2").tobytes())
    sys.stdout.buffer.flush()


def _synthesize_in_fresh_process(job: dict[str, Any]) -> list[np.ndarray]:
    """int16 audio at eSpeak's rate for each item of ``job``, from a brand-new interpreter."""
    # A plain interpreter, not multiprocessing: spawn would re-import the caller's __main__,
    # which breaks any script without an ``if __name__ == "__main__"`` guard.
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", "from pbt.wavenet.speech import _chunk_worker_main; _chunk_worker_main()"],
        input=json.dumps(job).encode(),
        capture_output=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise CorpusError(f"speech synthesis subprocess failed (exit {proc.returncode}): {tail[0]}")
    out, pos = [], 0
    for _ in job["items"]:
        (n,) = struct.unpack_from("<q", proc.stdout, pos)
        out.append(np.frombuffer(proc.stdout, "<i2", count=n, offset=pos + 8).astype(np.int16))
        pos += 8 + 2 * n
    return out


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
            for job, clips in zip(jobs, pool.map(_synthesize_in_fresh_process, jobs)):
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


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(audio, dtype="<i2").tobytes())


# ---------------------------------------------------------------------------- loader


@dataclass
class Utterance:
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
        return sum(a.size for a in getattr(self, split)) / self.sample_rate


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the file's rate; a clear :class:`CorpusError` for anything else."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError, OSError) as exc:
        raise CorpusError(f"{path}: unreadable WAV file ({exc}); only PCM WAV is supported") from exc
    if len(raw) != frames * channels * width or frames == 0:
        raise CorpusError(f"{path}: truncated or empty WAV file ({len(raw)} bytes, header says {frames} frames)")
    if width == 1:
        audio = (np.frombuffer(raw, np.uint8).astype(np.int32) - 128) << 8
    elif width == 2:
        audio = np.frombuffer(raw, "<i2").astype(np.int32)
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        audio = ((b[:, 0] << 8) | (b[:, 1] << 16) | (b[:, 2] << 24)) >> 16
    else:
        audio = np.frombuffer(raw, "<i4") >> 16
    audio = audio.reshape(-1, channels).mean(axis=1) if channels > 1 else audio
    return np.clip(np.rint(audio), -32768, 32767).astype(np.int16), rate


def discover(root: Path) -> tuple[str, list[Utterance]]:
    """Find the utterances of a corpus folder and the layout that names them."""
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
    """Give every utterance a split, by group, unless its layout already said."""
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

    A file at another rate is an error unless ``resample`` is set: silently resampling a
    corpus would hide a mistake (e.g. a 48 kHz corpus paired with a 16 kHz model).
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
