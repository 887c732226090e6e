"""Mono int16 PCM: WAV files in and out, and conversion between sample rates.

Only the standard library's :mod:`wave` and numpy (SciPy for resampling, imported when
needed), so reading a corpus needs neither eSpeak NG nor PyTorch.
"""

from __future__ import annotations

import math
import wave
from pathlib import Path

import numpy as np

from pbt.wavenet.errors import CorpusError


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write ``audio`` (1-D, int16 range) as a mono 16-bit PCM WAV file at ``sample_rate`` Hz.

    Creates missing parent folders and replaces an existing file. Values are cast to
    little-endian int16 as they are, so clip float audio before calling.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.asarray(audio, dtype="<i2").tobytes())


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and the file's rate in Hz; a clear :class:`CorpusError` for anything else.

    Reads PCM WAV of 8, 16, 24 or 32 bits and any number of channels (averaged to mono).
    Raises :class:`CorpusError` for a file that is not PCM WAV, is truncated, or holds no frames.
    """
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


def resample_int16(audio: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """``audio`` (1-D) from ``source_rate`` to ``target_rate`` Hz, back to int16.

    Polyphase resampling (anti-aliased, exact rational ratio) with SciPy, rounded and
    clipped to the int16 range; the same rate returns the samples as int16 without a copy
    where possible. Needs the ``wavenet`` extra (SciPy) only when the rates differ.
    """
    if source_rate == target_rate:
        return audio.astype(np.int16, copy=False)
    from scipy.signal import resample_poly

    g = math.gcd(source_rate, target_rate)
    out = resample_poly(audio.astype(np.float64), target_rate // g, source_rate // g)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)
