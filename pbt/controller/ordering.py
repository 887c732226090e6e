"""When results become visible to the policy: ``execution.ordering``.

The ledger records a result as soon as it arrives; the ordering decides when the policy *sees*
it (the :class:`~pbt.controller.view.TrialView` it is handed) and at which points it is asked
for new trials.

* :class:`Deterministic` (the default) applies results in trial-number order, one at a time,
  and asks the policy after each application. A result that arrives early is hidden (its trial
  looks still running) until every older trial has ended. The policy therefore sees the same
  sequence of trial lists whatever the number of workers, their speed or their failures, so a
  study is reproducible from its seed, embedded or distributed. The price: a straggler holds
  back the decisions behind it.
* :class:`Arrival` applies results as they come and asks the policy whenever a trial ended:
  no worker waits on a straggler, at the price of reproducibility.

Each created trial records the position it was created at (``metadata.created_after``); a
resumed controller restarts the deterministic sequence from there.

What the policy sees of a trial is :func:`seen`: a trial not yet applied shows as running with
only its intermediate evaluations (never its final result), and a trial stopped early shows the
steps up to the evaluation that stopped it (``metadata.stop_step``), not the few more its worker
may have trained before it noticed — so what the policy sees never depends on timing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator

from pbt.controller.ledger import Ledger
from pbt.controller.view import TrialView
from pbt.trial import Trial, TrialStatus


class Ordering(ABC):
    """Keeps the policy's view in step with the ledger and says when to ask the policy."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.view = TrialView()
        ledger.listeners.append(self._changed)

    @abstractmethod
    def restore(self) -> None:
        """Rebuild the view from a resumed ledger."""

    @abstractmethod
    def decision_points(self) -> Iterator[None]:
        """Yields once for every point at which the policy should be asked (may create trials)."""

    @abstractmethod
    def free(self, parallelism: int, in_flight: int) -> int:
        """Slots the policy may fill now."""

    @abstractmethod
    def position(self) -> int:
        """How far the policy's view has advanced (recorded as ``created_after``)."""

    @abstractmethod
    def ask_again(self) -> None:
        """The policy could not answer at the latest decision point: ask again next time."""

    def unapplied(self) -> range:
        """Numbers of trials whose results the policy has not seen yet."""
        return range(0)

    @abstractmethod
    def _changed(self, old: Trial | None, new: Trial) -> None: ...


class Deterministic(Ordering):
    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.frontier = 0  # trials below this number are applied
        self.last_step = -1  # the frontier value at which the policy was last asked

    def restore(self) -> None:
        trials = self.ledger.trials
        self.frontier = max((t.metadata.get("created_after", 0) for t in trials), default=0)
        self.last_step = self.frontier if trials else -1
        for trial in trials:
            self.view.append(seen(trial) if trial.number < self.frontier else placeholder(trial))

    def decision_points(self) -> Iterator[None]:
        trials = self.ledger.trials
        while True:
            if self.frontier > self.last_step:
                self.last_step = self.frontier
                yield
            if self.frontier < len(trials) and trials[self.frontier].status.terminal:
                self.view.replace(seen(trials[self.frontier]))
                self.frontier += 1
                continue
            return

    def free(self, parallelism: int, in_flight: int) -> int:
        return max(0, parallelism - (len(self.ledger) - self.frontier))

    def position(self) -> int:
        return self.frontier

    def ask_again(self) -> None:
        self.last_step = self.frontier - 1

    def unapplied(self) -> range:
        return range(self.frontier, len(self.ledger))

    def _changed(self, old: Trial | None, new: Trial) -> None:
        if old is None:
            self.view.append(placeholder(new))
        elif new.number < self.frontier:
            self.view.replace(seen(new))
        elif len(new.metrics) != len(old.metrics) and _intermediate(new) != _intermediate(old):
            self.view.replace(placeholder(new))  # an intermediate evaluation arrived


class Arrival(Ordering):
    def __init__(self, ledger: Ledger) -> None:
        super().__init__(ledger)
        self.pending = True  # a trial ended since the policy was last asked

    def restore(self) -> None:
        for trial in self.ledger.trials:
            self.view.append(seen(trial))

    def decision_points(self) -> Iterator[None]:
        if self.pending:
            self.pending = False
            yield

    def free(self, parallelism: int, in_flight: int) -> int:
        return max(0, parallelism - in_flight)

    def ask_again(self) -> None:
        self.pending = True

    def position(self) -> int:
        return self.ledger.terminal

    def _changed(self, old: Trial | None, new: Trial) -> None:
        if old is None:
            self.view.append(seen(new))
            return
        self.view.replace(seen(new))
        if new.status.terminal and not old.status.terminal:
            self.pending = True


ORDERINGS: dict[str, type[Ordering]] = {"deterministic": Deterministic, "arrival": Arrival}


def make_ordering(name: str, ledger: Ledger) -> Ordering:
    return ORDERINGS[name](ledger)


def _intermediate(trial: Trial) -> int:
    """How many of the trial's evaluations a placeholder shows (the final one is hidden)."""
    return sum(1 for m in trial.metrics if m.step < trial.steps)


def placeholder(trial: Trial) -> Trial:
    """The policy's view of a trial whose result is not applied yet: still running, with the
    intermediate evaluations it reported so far and none of its final result."""
    intermediate = [m for m in trial.metrics if m.step < trial.steps]
    return trial.model_copy(update={
        "status": TrialStatus.RUNNING, "objective": None, "metrics": intermediate,
        "steps_done": intermediate[-1].step if intermediate else 0,
    })


def seen(trial: Trial) -> Trial:
    """The policy's view of an applied trial: as recorded, but a trial stopped early shows the
    steps up to the evaluation that stopped it."""
    stop_step = trial.metadata.get("stop_step")
    if trial.status is TrialStatus.STOPPED and stop_step is not None and stop_step != trial.steps_done:
        return trial.model_copy(update={"steps_done": int(stop_step)})
    return trial
