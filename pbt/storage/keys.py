"""Object keys: validated before a back end sees them, and the checkpoint layout.

Study names and trial ids end up inside ``s3://bucket/prefix/<study>/...`` and
``/some/dir/<study>/...``. Anything that could escape the prefix (``..``, absolute
paths, backslashes, control characters) is refused here, once, so back ends can trust keys.
Single names are checked by :func:`pbt.names.validate_name`.
"""

from __future__ import annotations

import re

from pbt.errors import InvalidNameError


def validate_key(key: str) -> str:
    """Return ``key`` if every '/'-separated segment is safe; keys are always relative."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "//" in key:
        raise InvalidNameError(f"invalid storage key {key!r}: keys are relative, '/'-separated paths")
    for segment in key.split("/"):
        if segment in {"", ".", ".."} or any(ord(c) < 32 for c in segment):
            raise InvalidNameError(f"invalid storage key {key!r}: segment {segment!r} is not allowed")
    return key


def join(*parts: str) -> str:
    """Join key parts with '/' and validate the result."""
    return validate_key("/".join(p.strip("/") for p in parts if p))


# The checkpoint layout: <study>/checkpoints/<trial>/step-<9 digits>, one home for workers and GC.


def trial_prefix(study: str, trial_id: str) -> str:
    return join(study, "checkpoints", trial_id)


def checkpoint_name(study: str, trial_id: str, step: int) -> str:
    return join(trial_prefix(study, trial_id), f"step-{step:09d}")


_STEP = re.compile(r"/step-(\d+)$")


def checkpoint_step(name: str) -> int:
    match = _STEP.search(name)
    if not match:
        raise ValueError(f"not a trial checkpoint name: {name}")
    return int(match.group(1))
