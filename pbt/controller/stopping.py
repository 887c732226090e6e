"""Early stopping: every intermediate evaluation of a running trial is judged once, in step order.

The policy judges a trial with :meth:`~pbt.controller.policy.Policy.should_stop` as each of its
intermediate evaluations arrives. Evaluations that arrive with the trial's result (a fast
trial, or a progress message that came in the same batch as its result) are judged before the
result is recorded, exactly as if they had come one by one. A trial the policy stops — while it
runs, or retroactively — ends ``STOPPED`` at the step of the evaluation that stopped it,
whatever its worker did after that step. With the built-in rules, which compare a trial only
with its :meth:`~pbt.controller.policy.Policy.peers`, the same seed therefore stops the same
trials at the same steps in every run, in every ordering's reproducible mode, embedded or
distributed.

A policy that overrides only :meth:`~pbt.controller.policy.Policy.early_stop` (the paper's
GetEarlyStoppingTrials, all running trials at once) is asked every tick instead, and its
decisions take effect when the workers see them.
"""

from __future__ import annotations

from pbt.controller.attempts import Attempts
from pbt.controller.ledger import Ledger
from pbt.controller.ordering import Ordering
from pbt.controller.policy import EarlyStopDecision, Policy, as_decisions
from pbt.trial import Trial, TrialResult, TrialStatus


class EarlyStopping:
    def __init__(self, policy: Policy, ordering: Ordering, ledger: Ledger, attempts: Attempts) -> None:
        self.policy = policy
        self.ordering = ordering
        self.ledger = ledger
        self.attempts = attempts
        overrides = type(policy).should_stop is not Policy.should_stop
        self.per_evaluation = overrides and policy.stops_early
        self.per_tick = not overrides and type(policy).early_stop is not Policy.early_stop and policy.stops_early
        self.judged: dict[str, int] = {}  # trial id -> how many of its metric reports were judged

    def on_progress(self, trial: Trial) -> None:
        """Judge the evaluations ``trial`` reported since the last call; stop it if the policy says so."""
        if self.per_evaluation and trial.metadata.get("stop_step") is None and not trial.status.terminal:
            decision = self._judge(trial, trial.metrics)
            if decision is not None:
                self.attempts.stop([decision])

    def on_result(self, trial: Trial, r: TrialResult) -> tuple[Trial, TrialResult]:
        """The trial and result to record: STOPPED at the deciding evaluation if the policy
        stopped the trial, or would have stopped it on an evaluation not judged yet."""
        if not self.per_evaluation or (r.status is TrialStatus.FAILED and r.retryable):
            return trial, r  # nothing to judge, or an attempt that will be retried
        if trial.metadata.get("stop_step") is None:
            decision = self._judge(trial, r.metrics or trial.metrics)
            self.judged.pop(trial.id, None)
            if decision is None:
                return trial, r
            trial = self.ledger.update(trial, metadata={
                **trial.metadata, "stop_step": decision.step, "stop_reason": decision.reason,
            })
        self.judged.pop(trial.id, None)
        return trial, r.model_copy(update={
            "status": TrialStatus.STOPPED, "objective": None, "retryable": False,
            "error": f"stopped early by the policy at step {trial.metadata['stop_step']}: "
                     f"{trial.metadata.get('stop_reason')}",
        })

    def tick(self) -> None:
        """Ask a policy that decides for all running trials at once (see the module docstring)."""
        if self.per_tick:
            self.attempts.stop(as_decisions(self.policy.early_stop(self.ordering.view)))

    def _judge(self, trial: Trial, metrics: list) -> EarlyStopDecision | None:
        """The first decision to stop among the intermediate evaluations not judged yet."""
        start = self.judged.get(trial.id, 0)
        view = self.ordering.view
        for i in range(start, len(metrics)):
            report = metrics[i]
            self.judged[trial.id] = i + 1
            if report.step >= trial.steps:
                continue  # the final evaluation: nothing left to save
            seen = trial.model_copy(update={
                "status": TrialStatus.RUNNING, "objective": None, "metrics": metrics[: i + 1],
                "steps_done": report.step,
            })
            reason = self.policy.should_stop(seen, view)
            if reason is not None:
                return EarlyStopDecision(trial.id, reason, report.step)
        return None
