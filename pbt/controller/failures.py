"""How a run ends: the rules that end a study that cannot succeed, and the ending it records.

Three levels, each with one owner. A *trial* failure is retried up to ``execution.max_attempts``
(:mod:`pbt.controller.attempts`) and its trial never becomes a parent. A *study* failure ends
the study at once, with the error and a non-zero exit:

* an error every trial would hit (``FailureScope.STUDY``: the objective metric missing from
  ``evaluate()``, a trainer that cannot be built from ``trainer.config``, a protocol method
  with the wrong signature), at its first occurrence;
* ``execution.max_initial_failures`` trials failed with an error before any trial completed
  (default ``max(5, 2 × parallelism)``: the first two waves all failed). Trials that *diverged*
  (a non-finite objective: bad hyperparameters, not a broken trainer) do not count here;
* ``execution.max_failed_trials`` trials failed in all (default: no limit);
* ``execution.max_worker_failures`` attempts in a row failed because of their *worker*
  (``FailureScope.WORKER``: memory, storage, credentials, GPU), with no attempt getting past its
  worker since (default ``max(10, 2 x parallelism)``): no worker can serve this study. Such
  failures do not cost the trial an attempt, and a worker retires itself after a few of them
  (``PBT_WORKER_MAX_ENV_FAILURES``), so the default lets a few sick workers among healthy ones
  take themselves out before the study would end. When the last workers failed that way and none
  has said anything since — every worker retired before the streak reached the limit — the
  study ends after a few leases of silence (:meth:`FailureRules.stalled`).

Together with the budget, which charges a failed trial the steps it was given, no trainer can
make the controller create trials without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

from pbt.controller.attempts import first_line
from pbt.controller.ledger import Ledger
from pbt.controller.view import TrialView
from pbt.spec import Budget, Execution
from pbt.study_state import EndReason, Outcome
from pbt.trial import FailureScope, Trial, TrialResult, TrialStatus


@dataclass(frozen=True)
class Abort:
    """Why the study ends now: the reason, one line for people, and the trial's whole error."""

    reason: EndReason
    message: str
    error: str | None = None


class FailureRules:
    def __init__(self, execution: Execution, ledger: Ledger) -> None:
        self.execution = execution
        self.ledger = ledger
        self.errors = 0  # trials failed with an error (not diverged)
        self.worker_streak = 0  # worker-scoped failures since an attempt last got past its worker

    def restore(self) -> None:
        """Count the failures of a resumed study's records."""
        self.errors = sum(1 for t in self.ledger if t.status is TrialStatus.FAILED and not t.diverged)

    def on_attempt(self, result: TrialResult, current: bool) -> Abort | None:
        """Every attempt's result, as it arrives: whether no worker seems able to serve the study."""
        if result.status is TrialStatus.FAILED and result.scope is FailureScope.WORKER:
            if not current:
                return None  # a superseded attempt: its trial has already moved on
            self.worker_streak += 1
        else:
            self.worker_streak = 0
            return None
        limit = self.execution.worker_failure_limit
        if self.worker_streak < limit:
            return None
        return Abort(EndReason.NO_WORKER,
                     f"{self.worker_streak} attempts in a row failed because of their workers' environment and none "
                     f"got past its worker since (execution.max_worker_failures = {limit}); the last: "
                     f"{first_line(result.error)}", result.error)

    def stalled(self, silent_seconds: float) -> Abort | None:
        """Workers failed for their environment and no worker has reported anything for
        ``silent_seconds``: they retired, and nobody is left to serve the study."""
        limit = max(60.0, 4 * self.execution.lease)
        if self.worker_streak == 0 or silent_seconds < limit:
            return None
        return Abort(EndReason.NO_WORKER,
                     f"the last {self.worker_streak} attempt(s) failed because of their workers' environment and "
                     f"no worker has reported since ({silent_seconds:.0f} s): the workers retired; start workers "
                     "that can serve this study, then `pbt resume` it")

    def check(self, trial: Trial, scope: FailureScope = FailureScope.TRIAL) -> Abort | None:
        """Whether the study must end now that ``trial`` has failed with this scope."""
        if trial.status is not TrialStatus.FAILED:
            return None
        error = first_line(trial.error)
        if scope is FailureScope.STUDY:
            return Abort(EndReason.FATAL_ERROR,
                         f"trial {trial.id} failed with an error every trial would hit: {error}", trial.error)
        failed = self.ledger.counts.get(TrialStatus.FAILED.value, 0)
        self.errors += not trial.diverged
        limit = self.execution.max_failed_trials
        if limit is not None and failed >= limit:
            return Abort(EndReason.MAX_FAILED_TRIALS,
                         f"{failed} trials failed (execution.max_failed_trials = {limit}); the last: {error}",
                         trial.error)
        initial = self.execution.initial_failure_limit
        if self.ledger.counts.get(TrialStatus.COMPLETED.value, 0) == 0 and self.errors >= initial:
            return Abort(EndReason.INITIAL_FAILURES,
                         f"{self.errors} trials failed with an error and none completed "
                         f"(execution.max_initial_failures = {initial}); the last: {error}", trial.error)
        return None


def ending(
    abort: Abort | None, paused: bool, ledger: Ledger, view: TrialView, budget: Budget
) -> tuple[Outcome, EndReason, str | None, str | None]:
    """Why a run ends: ``(outcome, reason, one line for people, the trial's whole error)``."""
    if abort is not None:
        return Outcome.FAILED, abort.reason, abort.message, abort.error
    if paused:
        return Outcome.PAUSED, EndReason.PAUSED, None, None
    if ledger.best is None:
        failed = next((t for t in ledger if t.status is TrialStatus.FAILED), None)
        why = f"; the first failure: {first_line(failed.error)}" if failed else ""
        return Outcome.FAILED, EndReason.NO_USABLE_TRIAL, f"no trial completed{why}", failed and failed.error
    if budget.max_trials is not None and len(ledger) >= budget.max_trials:
        return Outcome.SUCCEEDED, EndReason.MAX_TRIALS, None, None
    last = ledger[len(ledger) - 1].steps if len(ledger) else 1
    if budget.total_steps is not None and view.committed_steps + last > budget.total_steps:
        return Outcome.SUCCEEDED, EndReason.TOTAL_STEPS, None, None
    return Outcome.SUCCEEDED, EndReason.ALGORITHM, None, None
