"""Trainers: the user's training code behind the :class:`Trainer` protocol, plus built-ins."""

from pbt.trainers.base import HParams, Trainer, load_trainer_class

__all__ = ["HParams", "Trainer", "load_trainer_class"]
