"""Shared fixtures. Sections are owned by the part of pbt they serve; keep them separate."""

from __future__ import annotations

import os
import shutil

import pytest

# --- the contract suites (pbt.testing) -------------------------------------------------------------
# Their assertions live in the package, not in test files: have pytest rewrite them too, so a
# failing property shows its values. (Must run before pbt.testing is imported.)
pytest.register_assert_rewrite("pbt.testing")

from pbt.testing import RedisServer, ping  # noqa: E402

# --- Redis (distributed tests) -----------------------------------------------------------------

_NO_REDIS = (
    "no Redis for the distributed tests: nothing answers at {url} and redis-server is not on PATH. "
    "Install Redis (apt-get install redis-server, brew install redis) or point PBT_TEST_REDIS_URL at one."
)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory):
    """PBT_TEST_REDIS_URL if set, else a private redis-server, else one at 127.0.0.1:6379.

    Private by default: the distributed tests use fixed study names, whose result queues, flags
    and controller leases would collide with any other run sharing a Redis.
    """
    url = os.environ.get("PBT_TEST_REDIS_URL")
    if url:
        if not ping(url):
            pytest.fail(f"PBT_TEST_REDIS_URL={url} does not answer", pytrace=False)
        yield url
        return
    if shutil.which("redis-server"):
        server = RedisServer(tmp_path_factory.mktemp("redis"))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()
        return
    url = "redis://127.0.0.1:6379/0"
    if not ping(url):
        pytest.fail(_NO_REDIS.format(url=url), pytrace=False)
    yield url
