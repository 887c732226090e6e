"""The operator's switches for a running study, read from its ``control`` document.

``pbt stop`` writes ``{"paused": true}`` next to the study's records and ``pbt resume`` clears
it; the controller reads the document every couple of seconds. While paused, results are still
recorded but nothing is applied or suggested, so a resumed study takes exactly the decisions it
would have taken without the pause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pbt.storage.study_store import StudyStore

log = logging.getLogger("pbt.controller")


class Control:
    def __init__(self, store: StudyStore, clock: Callable[[], float], interval: float = 2.0) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval
        self.paused = False
        self.last = float("-inf")

    def refresh(self) -> None:
        """Re-read the control document, at most every ``interval`` seconds."""
        now = self.clock()
        if now - self.last < self.interval:
            return
        self.last = now
        try:
            control = self.store.read_doc("control") or {}
        except Exception as exc:  # storage hiccup: keep the last known state
            log.warning("could not read the study's control document: %s", exc)
            return
        if bool(control.get("paused")) != self.paused:
            self.paused = bool(control.get("paused"))
            state = "paused: finishing in-flight trials" if self.paused else "resumed"
            log.warning("study %s %s", self.store.study, state)
