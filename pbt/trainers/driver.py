"""The one chunked train/evaluate loop: how pbt drives a trainer, for a worker and for a replay.

A worker's attempt (:mod:`pbt.tasks.attempt`) and a training replay (:mod:`pbt.analysis.replay`)
must drive a trainer identically, or a replay would not reproduce what the workers did. Both
therefore run :class:`TrainerDriver`: it splits the steps into chunks that end on multiples of
``checkpoint_every``, evaluates at those boundaries when asked to, evaluates once more at the
end, records each evaluation as a :class:`~pbt.trial.MetricReport` and times the phases.

What differs stays with the caller, in one callback run between two chunks: the attempt saves
an in-trial checkpoint there, reports progress and honours a stop or a preemption; the replay
passes none.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from pbt.errors import TrainerContractError
from pbt.trainers.base import Trainer
from pbt.trial import MetricReport, Timings

#: What one evaluation may report: metrics travel in every progress message and are kept in the
#: study's records for ever, so a trainer that returns a per-example dict fails clearly instead.
MAX_METRICS = 256
MAX_METRIC_NAME = 200

BetweenChunks = Callable[[bool], bool]
"""Called after each chunk but the last, once any intermediate evaluation is recorded, with
whether the step is a checkpoint boundary; returning True stops training there."""


class TrainerDriver:
    """Trains ``trainer`` in chunks, evaluates it, and keeps the metric records and timings.

    ``metric``: the objective's name, which the final evaluation must report.
    ``checkpoint_every``: steps per chunk, counted from this run's step 0 (0: one chunk).
    ``evaluate_every_checkpoint``: also evaluate at each chunk boundary (needs ``checkpoint_every``).
    ``step``: steps already trained in this run (an attempt resuming from its own checkpoint).
    ``lineage_start``: steps along the lineage before this run's step 0, so that
    ``lineage_step = lineage_start + step``.
    ``metrics``: earlier records to append to (kept across attempts); default a new list.
    ``timings``: where the seconds of ``train`` and ``evaluate`` are added; default a new one.
    """

    def __init__(
        self,
        trainer: Trainer,
        *,
        metric: str,
        checkpoint_every: int = 0,
        evaluate_every_checkpoint: bool = False,
        step: int = 0,
        lineage_start: int = 0,
        metrics: list[MetricReport] | None = None,
        timings: Timings | None = None,
    ) -> None:
        self.trainer = trainer
        self.metric = metric
        self.checkpoint_every = checkpoint_every
        self.evaluate_every_checkpoint = evaluate_every_checkpoint
        self.step = step
        self.lineage_start = lineage_start
        self.metrics: list[MetricReport] = [] if metrics is None else metrics
        self.timings = Timings() if timings is None else timings

    @property
    def lineage_step(self) -> int:
        """Steps along the whole lineage, this run's included."""
        return self.lineage_start + self.step

    def run(self, until: int, between_chunks: BetweenChunks | None = None) -> float | None:
        """Train from ``step`` to step ``until``, then evaluate; return the objective.

        Chunks end on multiples of ``checkpoint_every`` (a resumed run first completes its
        chunk), or at ``until``. Returns None, without the final evaluation, if
        ``between_chunks`` stopped the run early. The objective may be NaN or infinite: what
        that means is the caller's decision. Raises :class:`~pbt.errors.TrainerContractError` if the
        final evaluation has no ``metric``; whatever the trainer or the callback raise
        propagates, with ``step`` and ``metrics`` as far as they got.
        """
        chunk = self.checkpoint_every or until
        while self.step < until:
            n = min(chunk - self.step % chunk, until - self.step)
            t0 = time.perf_counter()
            self.trainer.train(n)
            self.timings.train += time.perf_counter() - t0
            self.step += n
            if self.step >= until:
                break
            at_checkpoint = bool(self.checkpoint_every) and self.step % self.checkpoint_every == 0
            if at_checkpoint and self.evaluate_every_checkpoint:
                self.evaluate()
            if between_chunks is not None and between_chunks(at_checkpoint):
                return None
        values = self.evaluate()
        if self.metric not in values:
            raise TrainerContractError(
                f"the trainer's evaluate() returned no {self.metric!r} (got {sorted(values)}); "
                "check objective.metric in the study file"
            )
        return values[self.metric]

    def evaluate(self) -> dict[str, float]:
        """Evaluate now and record it at the current step; values as ``{str(name): float(value)}``.

        Raises whatever the trainer raises, the ``TypeError``/``ValueError`` of a value that is
        not a number, or :class:`~pbt.errors.TrainerContractError` for more than
        :data:`MAX_METRICS` metrics or a name longer than :data:`MAX_METRIC_NAME` characters.
        """
        t0 = time.perf_counter()
        raw = self.trainer.evaluate()
        self.timings.evaluate += time.perf_counter() - t0
        count = len(raw) if hasattr(raw, "__len__") else None
        if count is not None and count > MAX_METRICS:
            raise TrainerContractError(
                f"the trainer's evaluate() returned {count} metrics; at most {MAX_METRICS} are kept per "
                "evaluation: report summaries, not per-example values"
            )
        if not isinstance(raw, Mapping):
            raise TrainerContractError(
                f"the trainer's evaluate() returned {type(raw).__name__}, not a mapping of metric names to numbers"
            )
        values = {str(k): _number(str(k), v) for k, v in raw.items()}
        if len(values) > MAX_METRICS:
            raise TrainerContractError(
                f"the trainer's evaluate() returned {len(values)} metrics; at most {MAX_METRICS}"
            )
        long = next((k for k in values if len(k) > MAX_METRIC_NAME), None)
        if long is not None:
            raise TrainerContractError(
                f"the trainer's evaluate() returned a metric name of {len(long)} characters "
                f"({long[:40]!r}...); at most {MAX_METRIC_NAME}"
            )
        self.metrics.append(MetricReport(step=self.step, lineage_step=self.lineage_step, values=values))
        return values


def _number(name: str, value: Any) -> float:
    """A metric's value as a float (a number, a numpy or torch scalar, a numeric string);
    TrainerContractError naming the metric for anything else (a bool, a word, a container, None):
    the trainer's code, the same for every trial. An integer too large for a float is infinite,
    which the caller treats as any non-finite value."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        raise TrainerContractError(
            f"the trainer's evaluate() returned {type(value).__name__} {value!r:.60} for {name!r}, not a number"
        )
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        raise TrainerContractError(
            f"the trainer's evaluate() returned {type(value).__name__} {value!r:.60} for {name!r}, not a number"
        ) from None
