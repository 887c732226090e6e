"""Function trainers: a training loop written as one function, driven like any trainer.

Code that is a loop, not a class, is written as one function ``train(hparams, ctx)``::

    def train(hparams, ctx):
        model = build(hparams, seed=ctx.seed)
        if ctx.checkpoint is not None:          # a warm start (copied member) or a resumed trial
            restore(model, ctx.checkpoint)      # then keep *this* trial's hyperparameters
        for step in ctx.steps(evaluate=lambda: {"val_loss": validate(model)},
                              save=lambda directory: store(model, directory)):
            train_one_step(model)

The controller still decides everything. :class:`FunctionTrainer` implements the five-method
trainer protocol (:mod:`pbt.trainers.base`) around the function, so the workers' chunked loop
(:class:`~pbt.trainers.driver.TrainerDriver`), in-trial checkpoints, stop and preemption at chunk
boundaries, and training replay work exactly as for a class trainer.

How: the function runs in a thread of its own, in lockstep with the caller — only one of them
runs at any moment, so a seeded function gives the same numbers as the same code in a class.
``ctx.steps()`` yields one step at a time for as many steps as the driver's ``train(n)`` asked,
then hands control back and waits at that *step boundary*. There the driver may ask for an
evaluation or a checkpoint: ``ctx.steps()`` calls the ``evaluate`` or ``save`` callback the
function gave it, in the function's own thread, and waits again. When pbt has nothing more for
this run of the function (its steps are done, it was stopped or handed back), ``close()`` ends
the iteration: the loop finishes and the function should return soon after.

What goes wrong, and what the trial then says (the study ends at once for an error that would
be the same for every trial, see :mod:`pbt.tasks.attempt`):

* the function raises (before or during the loop, or in a callback): the trial fails with the
  function's own traceback;
* it returns without ever iterating ``ctx.steps()`` (it ignored the context), or calls it without
  ``evaluate`` and ``save``: :class:`~pbt.errors.TrainerContractError`, the study ends;
* it returns before the steps it was asked for are trained (a ``break``, a ``zip`` with a
  shorter iterable): :class:`~pbt.errors.FatalError`, the trial fails without a retry;
* it never reaches the next step boundary (a hang): only ``execution.trial_timeout`` ends it.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pbt.errors import FatalError, TrainerContractError

log = logging.getLogger("pbt.trainers")

Evaluate = Callable[[], Mapping[str, float]]
Save = Callable[[Path], None]

#: Seconds ``close()`` waits for the function to return after its loop ended.
CLOSE_TIMEOUT = 60.0


class Context:
    """What a function trainer receives besides its hyperparameters.

    ``config``: the study's ``trainer.config`` (a dict, ``{}`` by default).
    ``seed``: this trial's seed (an int derived from the study seed and the trial number), to
    seed the model's initialisation as a class trainer's ``setup`` would.
    ``checkpoint``: a directory to restore from — the state ``save`` wrote for the parent trial
    (a warm start) or for this trial before a crash or preemption (a resume) — or None for a
    fresh start. Read it before the first step: pbt may delete it afterwards. After restoring,
    keep *this* trial's hyperparameters (for instance set the optimiser's learning rate again).
    """

    def __init__(self, run: _Run, config: Mapping[str, Any], seed: int, checkpoint: Path | None) -> None:
        self._run = run
        self.config = dict(config)
        self.seed = seed
        self.checkpoint = checkpoint

    def steps(self, *, evaluate: Evaluate | None = None, save: Save | None = None) -> Iterator[int]:
        """Iterate once per training step, for as many steps as the controller asks.

        Yields the number of steps this call of the function has trained so far (0, 1, 2, ...).
        ``evaluate()`` returns the metrics as ``{name: number}``, the objective's metric among
        them; ``save(directory)`` writes everything needed to continue exactly (weights,
        optimiser and RNG state, the function's own step counter) as plain files into
        ``directory`` (a ``pathlib.Path`` that exists and is empty). Both are called between two
        steps, in the function's thread, whenever pbt needs them (at in-trial checkpoints and at
        the end). Raises :class:`~pbt.errors.TrainerContractError` if either is missing.
        """
        if not callable(evaluate) or not callable(save):
            raise TrainerContractError(
                "a function trainer must call ctx.steps(evaluate=..., save=...) with two functions: "
                "evaluate() -> {metric: value} and save(directory)"
            )
        return self._run.steps(evaluate, save)


class _Run:
    """One call of the user's function, in its own thread, in lockstep with the driver.

    ``turn`` says who may run: ``"function"`` (the user's code, including callbacks) or
    ``"driver"`` (pbt). Each side hands the turn over under ``cond`` and waits for it back.
    """

    def __init__(self, function: Callable[..., Any], hparams: Mapping[str, Any], ctx_args: dict[str, Any]) -> None:
        self.cond = threading.Condition()
        self.turn = "function"
        self.command: tuple[Any, ...] = ()
        self.reply: Any = None
        self.reply_error: BaseException | None = None
        self.error: BaseException | None = None  # what the function raised
        self.finished = False  # the function returned (or raised)
        self.entered = False  # the function called ctx.steps()
        self.closing = False
        self.granted = 0  # steps the function may still take before handing back
        self.taken = 0  # steps taken in this call
        self.ctx = Context(self, **ctx_args)
        self.thread = threading.Thread(
            target=self._main, args=(function, dict(hparams)), name="pbt-function-trainer", daemon=True
        )

    # --- the function's thread ------------------------------------------------------------------

    def _main(self, function: Callable[..., Any], hparams: dict[str, Any]) -> None:
        try:
            function(hparams, self.ctx)
        except BaseException as exc:  # handed to the driver, which raises it in its own thread
            self.error = exc
        finally:
            with self.cond:
                self.finished = True
                self.turn = "driver"
                self.cond.notify_all()

    def steps(self, evaluate: Evaluate, save: Save) -> Iterator[int]:
        self.entered = True
        while not self.closing:  # closed mid-chunk (the driver was interrupted): no further step
            if self.granted > 0:
                self.granted -= 1
                yield self.taken
                self.taken += 1
                continue
            if not self._boundary(evaluate, save):
                return

    def _boundary(self, evaluate: Evaluate, save: Save) -> bool:
        """Hand the turn to the driver and serve its requests; False when the run is closed."""
        while True:
            if self.closing:
                return False
            command = self._hand_over()
            kind = command[0]
            if kind == "train":
                self.granted = command[1]
                return True
            if kind == "close":
                return False
            self.reply, self.reply_error = None, None
            try:
                self.reply = evaluate() if kind == "evaluate" else save(command[1])
            except BaseException as exc:  # the driver raises it; the function stays at this boundary
                self.reply_error = exc

    def _hand_over(self) -> tuple[Any, ...]:
        with self.cond:
            self.turn = "driver"
            self.cond.notify_all()
            while self.turn != "function":
                self.cond.wait()
            return self.command

    # --- the driver's side ----------------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()
        self._wait()

    def ask(self, *command: Any) -> Any:
        """Send ``command`` to the function waiting at a step boundary; return its reply."""
        if self.finished:
            return None
        with self.cond:
            self.command = command
            self.turn = "function"
            self.cond.notify_all()
        self._wait()
        if self.reply_error is not None and not self.finished:
            error, self.reply_error = self.reply_error, None
            raise error
        return self.reply

    def _wait(self) -> None:
        with self.cond:
            while self.turn != "driver":
                self.cond.wait(0.5)  # a timeout keeps the wait interruptible (signals, time limits)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End the loop (the function's code after it runs) and wait up to ``timeout`` for it to return."""
        if not self.thread.is_alive() and not self.finished:
            return  # never started
        with self.cond:
            if not self.finished:
                if self.turn == "driver":  # waiting at a boundary
                    self.command = ("close",)
                    self.turn = "function"
                    self.cond.notify_all()
                else:  # still in the middle of a step (the driver was interrupted): stop at the next boundary
                    self.closing = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            log.warning("the function trainer did not return within %gs of its last step; leaving it behind", timeout)
        elif self.error is not None:
            log.warning("the function trainer raised after its last step: %s: %s", type(self.error).__name__,
                        self.error)


class FunctionTrainer:
    """The trainer protocol around a function ``function(hparams, ctx)``; see the module docstring.

    :func:`pbt.trainers.base.load_trainer_class` makes a subclass with ``function`` set for a
    trainer path that names a function, so workers and replay build it as ``cls(config)``.
    """

    function: Callable[..., Any]

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.hparams: dict[str, Any] = {}
        self.seed = 0
        self.checkpoint: Path | None = None
        self.run: _Run | None = None

    def setup(self, hparams: Mapping[str, Any], *, seed: int) -> None:
        self.close()
        self.hparams = dict(hparams)
        self.seed = seed
        self.checkpoint = None

    def load(self, directory: Path) -> None:
        # The function reads the checkpoint before its first step, so it starts now, while the
        # directory exists (a replay deletes it as soon as this returns).
        self.close()
        self.checkpoint = Path(directory)
        self._started()

    def train(self, steps: int) -> None:
        run = self._started()
        before = run.taken
        run.ask("train", steps)
        if run.finished:
            self._raise_finished(run, f"after {run.taken - before} of the {steps} steps it was asked for")

    def evaluate(self) -> Mapping[str, float]:
        run = self._started()
        values = run.ask("evaluate")
        if run.finished:
            self._raise_finished(run, "when pbt asked for an evaluation")
        return values

    def save(self, directory: Path) -> None:
        run = self._started()
        run.ask("save", Path(directory))
        if run.finished:
            self._raise_finished(run, "when pbt asked for a checkpoint")

    def close(self) -> None:
        """Let the function finish: its ``ctx.steps()`` loop ends. Optional in the protocol."""
        if self.run is not None:
            run, self.run = self.run, None
            run.close()

    def _started(self) -> _Run:
        if self.run is None:
            args = {"config": self.config, "seed": self.seed, "checkpoint": self.checkpoint}
            self.run = _Run(type(self).function, self.hparams, args)
            self.run.start()
            if self.run.finished:
                self._raise_finished(self.run, "before its first step")
        return self.run

    def _raise_finished(self, run: _Run, when: str) -> None:
        name = getattr(type(self).function, "__qualname__", "the function")
        if run.error is not None:
            error, run.error = run.error, None
            raise error
        if not run.entered:
            raise TrainerContractError(
                f"the function trainer {name} returned without iterating ctx.steps(): pbt decides how many "
                "steps each trial trains, so the training loop must be `for step in ctx.steps(evaluate=..., "
                "save=...)`"
            )
        raise FatalError(
            f"the function trainer {name} returned {when}: keep iterating ctx.steps() until it ends "
            f"({run.taken} steps trained in this run)"
        )


def check_function(function: Callable[..., Any], path: str) -> None:
    """Raise ValueError unless ``function`` can be called as ``function(hparams, ctx)`` and is a plain function."""
    if inspect.isgeneratorfunction(function) or inspect.iscoroutinefunction(function) \
            or inspect.isasyncgenfunction(function):
        raise ValueError(f"{path!r} is a generator or async function; a function trainer is a plain function "
                         "`def train(hparams, ctx)` that iterates ctx.steps()")
    try:
        inspect.signature(function).bind(None, None)
    except TypeError:
        raise ValueError(f"{path!r} must take two arguments, (hparams, ctx)") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): let the call tell


def function_trainer_class(function: Callable[..., Any], path: str) -> type[FunctionTrainer]:
    """A :class:`FunctionTrainer` subclass that runs ``function``; raises ValueError if it cannot."""
    check_function(function, path)
    return type(f"FunctionTrainer[{path}]", (FunctionTrainer,), {"function": staticmethod(function)})
