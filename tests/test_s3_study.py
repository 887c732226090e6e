"""Whole studies on S3 (moto over HTTP) through a proxy that throttles and drops requests.

Every pbt process — the controller and the workers — talks to the bucket through
:class:`pbt.testing.FaultyS3Proxy`, so checkpoints and study records go through real 503s,
real dropped connections and real botocore retries. The study must still finish with every
trial recorded once and the checkpoints it promises to keep intact.
"""

from __future__ import annotations

import os
import uuid

import pytest
import storage_backends as sb
from helpers import toy_data

from pbt.controller.policies import make_policy
from pbt.lineage import ancestry, best_trial, lineage
from pbt.storage.checkpoints import CheckpointStore
from pbt.storage.s3 import S3ObjectStore
from pbt.study_file import parse_spec
from pbt.testing import FaultyS3Proxy, Workers, kill_group, pbt, pbt_background, wait_for, write_study
from pbt.testing.executors import assert_complete_and_once
from pbt.trial import Trial

pytestmark = pytest.mark.slow

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": sb.SECRET,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture
def bucket(monkeypatch):
    sb.fake_aws_env(monkeypatch)
    name = f"pbt-study-{uuid.uuid4().hex[:10]}"
    S3ObjectStore(f"s3://{name}", sb.s3_settings()).client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def proxy():
    p = FaultyS3Proxy(sb.moto_endpoint(), fail_every=6, reset_every=23)
    yield p
    p.close()


def env_for(proxy: FaultyS3Proxy) -> dict[str, str]:
    return {**AWS_ENV, "PBT_S3_ENDPOINT_URL": proxy.url, "PBT_S3_MAX_ATTEMPTS": "8"}


def check_checkpoints(bucket: str, storage: str, data: dict) -> None:
    """What GC promised: the policy's parent candidates and the best trial, with their ancestry."""
    objects = S3ObjectStore(storage, sb.s3_settings())
    store = CheckpointStore(objects)
    spec = parse_spec(data["study"], check_trainer=False)
    trials = [Trial.model_validate(t) for t in data["trials"]]
    best = best_trial(trials, spec.objective)
    keep = ancestry(make_policy(spec).parent_candidates(trials) | {best.id}, {t.id: t for t in trials}.get)
    assert {t.id for t in lineage(trials, best)} <= keep
    remaining = {name.split("/")[2] for name in store.list(f"{spec.name}/checkpoints/")}
    assert remaining == keep, (sorted(remaining - keep), sorted(keep - remaining))
    for trial_id in keep:
        trial = next(t for t in trials if t.id == trial_id)
        assert not trial.checkpoint_deleted
        store.manifest(trial.checkpoint)  # committed and readable
    deleted = [t for t in trials if t.checkpoint_deleted]
    assert deleted and all(t.id not in remaining for t in deleted)


def test_embedded_study_on_s3_through_throttling_and_resets(tmp_path, bucket, proxy):
    storage = f"s3://{bucket}/studies"
    study = write_study(tmp_path / "s.yaml", toy_data(budget={"total_steps": 160}, storage=storage))
    proc = pbt("run", str(study), "-q", "--workers", "2", env=env_for(proxy), timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert sb.SECRET not in proc.stdout + proc.stderr
    assert proxy.faults > 10  # the study really went through a brown-out
    data = _status(storage, proxy)
    assert_complete_and_once(data)
    assert sum(t["steps_done"] for t in data["trials"]) == 160
    check_checkpoints(bucket, storage, data)


def _status(storage: str, proxy: FaultyS3Proxy) -> dict:
    import json

    proc = pbt("status", "toy", "--storage", storage, "--json", env=env_for(proxy))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_distributed_study_on_s3_with_a_worker_killed(tmp_path, bucket, proxy, redis_url):
    storage = f"s3://{bucket}/dist"
    pool = Workers(redis_url, tmp_path, {**env_for(proxy), "PBT_VISIBILITY_TIMEOUT": "30"}, storage=storage)
    try:
        first, _ = pool.start(2)
        data = toy_data(budget={"total_steps": 160}, storage=storage, broker=redis_url,
                        trainer={"config": {"lr": 0.01, "sleep_per_step": 0.05}},
                        execution={"queue": pool.queue, "checkpoint_every": 2, "heartbeat_seconds": 0.5,
                                   "lease_seconds": 4})
        study = write_study(tmp_path / "s.yaml", data)
        controller = pbt_background("run", str(study), "-q", env=env_for(proxy), log=tmp_path / "controller.log")
        try:
            wait_for(lambda: "succeeded" in pool.log(first), 60, what="the first worker to finish a trial")
            pool.kill(first)
            pool.start(1)
            assert controller.wait(timeout=240) == 0, (tmp_path / "controller.log").read_text()[-3000:]
        finally:
            kill_group(controller)
        result = _status(storage, proxy)
        assert_complete_and_once(result)
        assert all(t["status"] == "completed" for t in result["trials"])
        check_checkpoints(bucket, storage, result)
        for name in list(pool.procs):
            assert sb.SECRET not in pool.log(name)
    finally:
        pool.stop_all()
