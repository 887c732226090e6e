"""eSpeak NG, the corpus builder's voice: a ctypes binding and reproducible chunk synthesis.

The library and its voices come from the ``espeakng-loader`` wheel (the ``wavenet`` extra),
so synthesis needs no system package and no download.

eSpeak carries synthesis state (pitch flutter, phase) from one utterance to the next, even
across ``espeak_Terminate``; its output is a pure function of the text only for a process's
sequence of utterances. :func:`synthesize_in_fresh_process` therefore speaks each chunk of
utterances in a brand-new interpreter, which makes a chunk's audio a function of the chunk
alone, whichever process or thread asks for it.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from pbt.wavenet.errors import CorpusError

ESPEAK_RATE = 22050  # Hz; what espeak_Initialize reports for synchronous output


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
        """The process's engine, initialised on first use; raises :class:`CorpusError` if it cannot be."""
        with cls._lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def _collect(self, wav: Any, n: int, _events: Any) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = keep going

    def has_voice(self, voice: str) -> bool:
        """Whether eSpeak NG knows ``voice`` (e.g. ``en-us``, ``en-us+f2``); selects it as a side effect."""
        with self._lock:
            return self._lib.espeak_SetVoiceByName(voice.encode()) == 0

    def synthesize(self, text: str, voice: str, rate: int, seed: int = 0) -> np.ndarray:
        """``text`` spoken by ``voice`` at ``rate`` words per minute: 1-D int16 samples at 22,050 Hz.

        ``seed`` seeds eSpeak's pitch flutter. The output also depends on what this process
        synthesised before (see the module docstring). Raises :class:`CorpusError` for an
        unknown voice or a failed synthesis.
        """
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


def synthesize_in_fresh_process(job: dict[str, Any]) -> list[np.ndarray]:
    """int16 audio at :data:`ESPEAK_RATE` for each item of ``job``, from a brand-new interpreter.

    ``job`` is ``{"seed": int, "items": [(index, text, voice, words_per_minute), ...]}``
    (JSON-serialisable); item ``index`` is spoken with eSpeak's random seed ``seed + index``
    and its leading and trailing silence trimmed. The result is a function of ``job`` alone
    (see the module docstring). Blocks until the child exits; safe to call from several
    threads at once. Raises :class:`CorpusError` if the child fails (its last stderr line
    is quoted).
    """
    # A plain interpreter, not multiprocessing: spawn would re-import the caller's __main__,
    # which breaks any script without an ``if __name__ == "__main__"`` guard.
    env = dict(os.environ)
    package_parent = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", "from pbt.wavenet.espeak import _chunk_worker_main; _chunk_worker_main()"],
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
