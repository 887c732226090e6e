"""The black box: what a user's training code implements so pbt can drive it.

Nothing of PBT leaks into the model: the worker constructs the trainer with the study's
static ``trainer.config``, hands it the trial's hyperparameters, optionally restores a
checkpoint (the parent's for a warm start, or the trial's own after a crash), trains for a
number of steps in chunks, evaluates, and saves. Any framework works as long as ``save``
writes plain files into a directory and ``load`` reads them back.

Call order in one trial attempt::

    trainer = TrainerClass(config)          # static config from the study file
    trainer.setup(hparams, seed=seed)       # build model/optimiser for these hparams
    trainer.load(directory)                 # only when warm-starting or resuming;
                                            # the hparams given to setup stay in force
    trainer.train(n)                        # repeatedly, n <= checkpoint interval
    trainer.evaluate() -> {"metric": value} # after the last chunk (and optionally between)
    trainer.save(directory)                 # in-trial checkpoints and the final one

``load`` must restore everything ``train`` needs to continue exactly (weights, optimiser
state, RNG state, the trainer's own step counter) and must then re-apply the hyperparameters
passed to ``setup`` (for example the learning rate of the optimiser's param groups): that is
how PBT's exploit (copy the parent's state) and explore (new hyperparameters) compose.

A trainer may also have a sixth method, ``close()``, called once pbt is done with it (after the
final ``save``, or after a failure, stop or preemption) by whoever built it: a worker's attempt
and a replay. A training loop written as one function instead of a class is a *function
trainer* (:mod:`pbt.trainers.function`): a trainer path may name such a function, and
:func:`load_trainer_class` wraps it in a class with these methods.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pbt.errors import SpecError
from pbt.importing import import_object

HParams = Mapping[str, Any]


@runtime_checkable
class Trainer(Protocol):
    def setup(self, hparams: HParams, *, seed: int) -> None: ...

    def train(self, steps: int) -> Mapping[str, float] | None: ...

    def evaluate(self) -> Mapping[str, float]: ...

    def save(self, directory: Path) -> None: ...

    def load(self, directory: Path) -> None: ...


def load_trainer_class(path: str) -> type:
    """Resolve ``"package.module:ClassName"`` (or ``:function``) to a class built as ``cls(config)``.

    A class must implement the protocol; a function ``f(hparams, ctx)`` is wrapped in a
    :class:`~pbt.trainers.function.FunctionTrainer` subclass. Raises SpecError naming
    ``trainer.path``, which half failed and why.
    """
    obj = import_object(path, "trainer.path", "package.module:ClassName")
    if not isinstance(obj, type) and inspect.isroutine(obj):
        from pbt.trainers.function import function_trainer_class

        try:
            return function_trainer_class(obj, path)
        except ValueError as exc:
            raise SpecError(f"trainer.path: {exc}") from None
    missing = [m for m in ("setup", "train", "evaluate", "save", "load") if not callable(getattr(obj, m, None))]
    if missing:
        raise SpecError(
            f"trainer.path: {path!r} is neither a trainer class (missing {missing}) "
            "nor a function trainer `def train(hparams, ctx)`"
        )
    return obj
