"""Names users and messages supply (study, queue, trial ids): checked before they become keys or paths.

One rule, used by the study file, the storage and the workers alike: a name is a single safe
path segment, so nothing built from it can escape its prefix.
"""

from __future__ import annotations

import re

from pbt.errors import InvalidNameError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_name(name: str, what: str = "name") -> str:
    """Return ``name`` if it is safe as a single path segment, else raise InvalidNameError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in {".", ".."} or ".." in name:
        shown = repr(name) if len(repr(name)) <= 80 else f"{repr(name)[:60]}... ({len(name)} characters)"
        raise InvalidNameError(
            f"invalid {what} {shown}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, and no '..'"
        )
    return name


_TRIAL_ID = re.compile(r"^t[0-9]{6,12}$")


def validate_trial_id(trial_id: str) -> str:
    """Return ``trial_id`` if it looks like ``t000042`` (what the controller creates), else raise."""
    if not isinstance(trial_id, str) or not _TRIAL_ID.fullmatch(trial_id):
        shown = repr(trial_id) if len(repr(trial_id)) <= 80 else f"{repr(trial_id)[:60]}..."
        raise InvalidNameError(f"invalid trial id {shown}: trial ids look like t000042")
    return trial_id
