"""Errors split the way an operator acts on them: retry, or stop and fix something.

A :class:`RetryableError` may succeed if the same work runs again (a throttled S3 call,
a lost worker, a broker hiccup). A :class:`FatalError` will fail again until a person
changes the input (a bad study file, a corrupt checkpoint with no fallback).
"""

from __future__ import annotations

from typing import Any


class PbtError(Exception):
    """Base class of every error pbt raises on purpose."""


class RetryableError(PbtError):
    """The operation may succeed when tried again."""


class FatalError(PbtError):
    """Retrying will not help; the message says what to change."""


class SpecError(FatalError):
    """A study file (or a flag overriding it) is invalid; the message names the field."""


class InvalidNameError(FatalError, ValueError):
    """A user-supplied name would be unsafe as a storage key or path."""


class NotFoundError(FatalError, KeyError):
    """A study, trial or object does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class StudyNotFoundError(NotFoundError):
    """No study of that name in that storage (the message names both)."""


class CorruptRecordsError(FatalError):
    """A study's stored records (spec, state, journal, snapshot) cannot be decoded: edited or
    truncated by something other than pbt. The message names the object and the cause."""


class CorruptCheckpointError(FatalError):
    """A checkpoint's manifest or one of its parts fails verification."""


class ServiceError(FatalError):
    """A service pbt needs cannot be used from this machine: the broker is unreachable or refuses
    us (a wrong password), storage is unreachable or forbidden, a bucket is missing.

    Neither the study's fault nor a trial's: the machine's configuration is. The CLI prints it as
    one line naming the URL (password masked) and exits with its own status (README, "Exit status");
    a worker counts it against itself, not against the trial.
    """

    #: The exit status of a CLI command that hit one, and of a worker that retired because of them.
    exit_code = 5


class StorageUnavailableError(PbtError):
    """The storage cannot be used: unreachable after retries, or refusing us.

    Catch this one for "storage unreachable"; its two kinds say whether waiting may help:
    :class:`StorageError` (retryable: a network error, throttling, a server error) and
    :class:`StorageConfigError` (fatal: no bucket, no permission, no credentials).
    """


class StorageConfigError(ServiceError, StorageUnavailableError):
    """Storage refuses us for a reason retrying will not fix: no bucket, no permission, no credentials."""


class StorageError(RetryableError, StorageUnavailableError):
    """A storage back end failed in a way that may be transient (after its own retries)."""


class StudyLockedError(FatalError):
    """The study is already running: another controller holds its lease (the message says which)."""


class TrainerContractError(FatalError):
    """The trainer and the study disagree in a way that is the same for every trial.

    The objective metric is missing from ``evaluate()``, the trainer cannot be imported or
    constructed from ``trainer.config``, or a protocol method has the wrong signature. The
    controller ends the study at the first occurrence instead of spending its budget on it.
    """


class TemporaryPolicyError(RetryableError):
    """A policy cannot answer now; the controller asks it again at the next tick."""


class StudyFailedError(FatalError):
    """The study cannot go on: the controller ends it with this message and a non-zero exit.

    Raised by ``pbt.run`` (and ``StudyRun.wait``) when the study ended as failed; then ``ending``
    is the :class:`pbt.study_state.Ending` (outcome, reason, message, the failed trial's error)
    and ``study`` the :class:`pbt.api.Study` as its records stand. Both are None otherwise.
    """

    def __init__(self, message: str, *, ending: Any = None, study: Any = None) -> None:
        super().__init__(message)
        self.ending = ending
        self.study = study


class TrialFailedError(PbtError):
    """A trainer raised or produced a non-finite objective; carries whether a retry may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
