"""The speech corpus: eSpeak builder (deterministic, split by sentence) and the WAV-folder loader."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")
pytest.importorskip("scipy")

from pbt.errors import FatalError
from pbt.wavenet import corpus as speech_corpus
from pbt.wavenet.corpus import CorpusError, build_speech_corpus, load_speech_corpus
from pbt.wavenet.sentences import make_sentences
from pbt.wavenet.wav import write_wav

SMALL = {"sentences": 6, "voices": ["en-us", "en-us+f2"], "takes": 2, "validation_fraction": 0.34}


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("speech") / "corpus"
    build_speech_corpus(out, seed=7, **SMALL)
    return out


@pytest.fixture(scope="module")
def clips(corpus: Path) -> list[np.ndarray]:
    """Real speech at 16 kHz, reused to fake other corpus layouts."""
    return load_speech_corpus(corpus).train


def test_build_is_deterministic_for_a_seed(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    again = tmp_path / "again"
    build_speech_corpus(again, seed=7, **SMALL)
    assert _tree_bytes(again) == _tree_bytes(corpus)
    # Several synthesis processes, finishing in any order, write the same bytes as one.
    monkeypatch.setattr(speech_corpus, "CHUNK", 5)
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    build_speech_corpus(serial, seed=7, workers=1, **SMALL)
    build_speech_corpus(parallel, seed=7, workers=3, **SMALL)
    assert _tree_bytes(serial) == _tree_bytes(parallel)
    other = tmp_path / "other"
    build_speech_corpus(other, seed=8, **SMALL)
    assert _tree_bytes(other)["manifest.json"] != _tree_bytes(corpus)["manifest.json"]


def test_split_is_by_sentence(corpus: Path) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text())
    by_split: dict[str, set[str]] = {"train": set(), "validation": set()}
    for entry in manifest["files"]:
        by_split[entry["split"]].add(entry["sentence"])
    assert by_split["train"] and by_split["validation"]
    assert not by_split["train"] & by_split["validation"]
    # Two takes per sentence, by different voices.
    voices: dict[str, set[str]] = {}
    for entry in manifest["files"]:
        voices.setdefault(entry["sentence"], set()).add(entry["voice"])
    assert all(len(v) == 2 for v in voices.values()) and len(voices) == SMALL["sentences"]


def test_manifest_matches_files(corpus: Path) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["sample_rate"] == 16000 and manifest["seed"] == 7
    files = manifest["files"]
    assert len(files) == SMALL["sentences"] * SMALL["takes"]
    assert sorted(p.name for p in (corpus / "wavs").iterdir()) == sorted(Path(f["path"]).name for f in files)
    for entry in files:
        with wave.open(str(corpus / entry["path"]), "rb") as w:
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (16000, 1, 2)
            assert w.getnframes() == entry["samples"] > 16000 // 2  # real speech, not silence
        assert entry["rate"] in manifest["rates"] and entry["voice"] in SMALL["voices"]
    counts = manifest["counts"]
    assert counts["train"]["utterances"] + counts["validation"]["utterances"] == len(files)
    total = sum(f["samples"] for f in files) / 16000
    assert manifest["total_seconds"] == pytest.approx(total, abs=0.01)


def test_loader_reads_the_builders_output(corpus: Path) -> None:
    manifest = json.loads((corpus / "manifest.json").read_text())
    data = load_speech_corpus(corpus)
    assert data.layout == "manifest" and data.sample_rate == 16000
    assert len(data.train) == manifest["counts"]["train"]["utterances"]
    assert len(data.validation) == manifest["counts"]["validation"]["utterances"]
    assert all(a.dtype == np.int16 and np.abs(a).max() > 1000 for a in data.train + data.validation)


def test_builder_refuses_to_clobber_a_foreign_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CorpusError, match="not empty"):
        build_speech_corpus(tmp_path, sentences=2, voices=["en-us"])
    with pytest.raises(CorpusError, match="no voice"):
        build_speech_corpus(tmp_path / "new", sentences=2, voices=["xx-nonexistent"])


def test_sentences_are_distinct_and_seeded() -> None:
    a = make_sentences(300, seed=1)
    assert len(set(a)) == 300 and a == make_sentences(300, seed=1) and a != make_sentences(300, seed=2)


def test_ljspeech_layout(tmp_path: Path, clips: list[np.ndarray]) -> None:
    root = tmp_path / "LJSpeech-1.1"
    lines = []
    for i, clip in enumerate(clips):
        write_wav(root / "wavs" / f"LJ001-{i:04d}.wav", clip, 22050)
        lines.append(f"LJ001-{i:04d}|Text {i}.|Text {i}.")
    write_wav(root / "wavs" / "not-in-metadata.wav", clips[0], 22050)  # LJSpeech reads only what metadata lists
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    native = load_speech_corpus(root, sample_rate=None)
    assert native.layout == "ljspeech" and native.sample_rate == 22050
    assert len(native.train) + len(native.validation) == len(clips)
    resampled = load_speech_corpus(root, sample_rate=16000, resample=True)
    n_native = sum(a.size for a in native.train + native.validation)
    n_resampled = sum(a.size for a in resampled.train + resampled.validation)
    assert n_resampled == pytest.approx(n_native * 16000 / 22050, rel=0.01)
    with pytest.raises(CorpusError, match=r"LJ001-0000\.wav: sample rate is 22050 Hz, expected 16000"):
        load_speech_corpus(root, sample_rate=16000)


def test_vctk_layout_splits_by_sentence_number(tmp_path: Path, clips: list[np.ndarray]) -> None:
    root = tmp_path / "VCTK-Corpus"
    for speaker in ("p225", "p226", "p227"):
        for n in range(1, 6):
            write_wav(root / "wav48" / speaker / f"{speaker}_{n:03d}.wav", clips[n % len(clips)], 48000)
    data = load_speech_corpus(root, sample_rate=16000, resample=True, validation_fraction=0.4, seed=3)
    assert data.layout == "vctk" and len(data.train) + len(data.validation) == 15
    numbers = {
        split: {p.stem.split("_")[1] for p in getattr(data, f"{split}_files")} for split in ("train", "validation")
    }
    assert numbers["train"] and numbers["validation"] and not numbers["train"] & numbers["validation"]
    again = load_speech_corpus(root, sample_rate=16000, resample=True, validation_fraction=0.4, seed=3)
    assert again.validation_files == data.validation_files  # the split is a function of the seed


def test_any_nested_folder_of_wavs(tmp_path: Path, clips: list[np.ndarray]) -> None:
    for i, clip in enumerate(clips[:4]):
        write_wav(tmp_path / f"session{i % 2}" / "take" / f"clip{i}.WAV", clip, 16000)
    data = load_speech_corpus(tmp_path)
    assert data.layout == "folder" and len(data.train) == 3 and len(data.validation) == 1


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        load_speech_corpus(tmp_path / "nowhere")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CorpusError, match=r"empty: no \.wav files"):
        load_speech_corpus(tmp_path / "empty")
    assert issubclass(CorpusError, FatalError)


def test_unreadable_and_truncated_wavs(tmp_path: Path, clips: list[np.ndarray]) -> None:
    write_wav(tmp_path / "good.wav", clips[0], 16000)
    (tmp_path / "noise.wav").write_bytes(b"this is not a RIFF file at all" * 10)
    with pytest.raises(CorpusError, match=r"noise\.wav: unreadable WAV"):
        load_speech_corpus(tmp_path)
    (tmp_path / "noise.wav").unlink()
    good = (tmp_path / "good.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(good[: len(good) // 2])  # header promises more than the file holds
    with pytest.raises(CorpusError, match=r"cut\.wav: truncated"):
        load_speech_corpus(tmp_path)


def test_mixed_sample_rates_are_an_error(tmp_path: Path, clips: list[np.ndarray]) -> None:
    write_wav(tmp_path / "a.wav", clips[0], 16000)
    write_wav(tmp_path / "b.wav", clips[1], 8000)
    with pytest.raises(CorpusError, match=r"b\.wav: sample rate is 8000 Hz, expected 16000"):
        load_speech_corpus(tmp_path, sample_rate=None)


def test_broken_manifest(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(CorpusError, match=r"manifest\.json: not a valid corpus manifest"):
        load_speech_corpus(tmp_path)
    manifest = json.loads((corpus / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))  # lists files this folder lacks
    with pytest.raises(CorpusError, match="missing"):
        load_speech_corpus(tmp_path)
