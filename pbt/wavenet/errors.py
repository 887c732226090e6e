"""The WaveNet case study's error: one class, below every module that raises it."""

from __future__ import annotations

from pbt.errors import FatalError


class CorpusError(FatalError):
    """A corpus folder or file is missing, empty, unreadable, or at the wrong sample rate.

    Also raised when eSpeak NG is missing, lacks a voice or fails, since then no corpus can
    be built. Fatal: the same input fails again until a person changes it.
    """
