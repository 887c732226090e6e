"""Errors split the way an operator acts on them: retry, or stop and fix something.

A :class:`RetryableError` may succeed if the same work runs again (a throttled S3 call,
a lost worker, a broker hiccup). A :class:`FatalError` will fail again until a person
changes the input (a bad study file, a corrupt checkpoint with no fallback).
"""

from __future__ import annotations


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


class CorruptCheckpointError(FatalError):
    """A checkpoint's manifest or one of its parts fails verification."""


class StorageConfigError(FatalError):
    """Storage refuses us for a reason retrying will not fix: no bucket, no permission, no credentials."""


class StorageError(RetryableError):
    """A storage back end failed in a way that may be transient (after its own retries)."""


class StudyLockedError(FatalError):
    """Another controller holds this study's lease."""


class TrainerContractError(FatalError):
    """The trainer and the study disagree in a way that is the same for every trial.

    The objective metric is missing from ``evaluate()``, the trainer cannot be imported or
    constructed from ``trainer.config``, or a protocol method has the wrong signature. The
    controller ends the study at the first occurrence instead of spending its budget on it.
    """


class TemporaryPolicyError(RetryableError):
    """A policy cannot answer now; the controller asks it again at the next tick."""


class StudyFailedError(FatalError):
    """The study cannot go on: the controller ends it with this message and a non-zero exit."""


class TrialFailedError(PbtError):
    """A trainer raised or produced a non-finite objective; carries whether a retry may help."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable
