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
* ``execution.max_failed_trials`` trials failed in all (default: no limit).

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
from pbt.trial import FailureScope, Trial, TrialStatus


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

    def restore(self) -> None:
        """Count the failures of a resumed study's records."""
        self.errors = sum(1 for t in self.ledger if t.status is TrialStatus.FAILED and not t.diverged)

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
