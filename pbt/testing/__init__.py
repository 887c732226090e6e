"""Test kit shipped with pbt: real-process helpers and the behavioural suites of its interfaces.

* :mod:`pbt.testing.processes` starts, watches and kills real processes (the ``pbt`` CLI,
  private ``redis-server`` instances, Celery workers, an S3 proxy that injects faults);
* the contract suites (object stores, policies, executors) are pytest classes a user can
  subclass to check their own implementation against the same properties pbt's are held to.

The process helpers are re-exported here, so ``from pbt.testing import RedisServer`` works.
"""

from __future__ import annotations

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

__all__ = [
    "FaultyS3Proxy",
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
