"""Test kit shipped with pbt: real-process helpers and the behavioural suites of its interfaces.

* :mod:`pbt.testing.processes` starts, watches and kills real processes (the ``pbt`` CLI,
  private ``redis-server`` instances, Celery workers, an S3 proxy that injects faults);
* the contract suites are pytest classes a user subclasses to hold their own implementation
  to the properties pbt's are held to, as Optuna ships ``optuna.testing.pytest_storages``:
  :class:`~pbt.testing.storage.ObjectStoreContract` and
  :class:`~pbt.testing.storage.CheckpointContract` (storage back ends),
  :class:`~pbt.testing.policies.PolicyContract` (policies) and
  :class:`~pbt.testing.executors.ExecutorContract` (ways of running a study's trials).
  Each class's docstring says which fixture to provide. Their assertions live in this
  package, so put ``pytest.register_assert_rewrite("pbt.testing")`` at the top of your
  ``conftest.py`` (before anything imports :mod:`pbt.testing`) to see the values of a failing one.

The process helpers are re-exported here, so ``from pbt.testing import RedisServer`` works. The
suites import pytest and hypothesis (``pip install 'pbt[test]'``), so they are loaded on first
use: importing :mod:`pbt.testing` for its process helpers needs neither.
"""

from __future__ import annotations

import importlib
from typing import Any

from pbt.testing.processes import (
    FaultyS3Proxy,
    RedisServer,
    Workers,
    children,
    cmdline,
    descendants,
    free_port,
    kill_group,
    pbt,
    pbt_background,
    ping,
    status,
    wait_for,
    write_study,
)

_SUITES = {
    "CheckpointContract": "pbt.testing.storage",
    "ObjectStoreContract": "pbt.testing.storage",
    "PolicyContract": "pbt.testing.policies",
    "ExecutorContract": "pbt.testing.executors",
}

__all__ = [
    "CheckpointContract",
    "ExecutorContract",
    "FaultyS3Proxy",
    "ObjectStoreContract",
    "PolicyContract",
    "RedisServer",
    "Workers",
    "children",
    "cmdline",
    "descendants",
    "free_port",
    "kill_group",
    "pbt",
    "pbt_background",
    "ping",
    "status",
    "wait_for",
    "write_study",
]


def __getattr__(name: str) -> Any:
    """Load a contract suite (and pytest with it) only when someone asks for one."""
    module = _SUITES.get(name)
    if module is None:
        raise AttributeError(f"module 'pbt.testing' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
