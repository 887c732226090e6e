"""The ObjectStore contract (``pbt/storage/base.py``), checked against every back end.

The suite itself is :class:`pbt.testing.ObjectStoreContract`; here it runs over ``file://`` and
``s3://`` (moto over real HTTP), so whatever checkpoints and study records rely on holds on
local disk and on S3 alike. Each back end's class adds what only it can check (S3 request
counts); S3-only behaviour (URI checks, the client cache, error classes) is at the end.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import storage_backends as sb

from pbt.errors import FatalError, InvalidNameError, SpecError, StorageError
from pbt.storage import open_object_store
from pbt.storage.base import ObjectStore
from pbt.storage.local import LocalObjectStore
from pbt.storage.s3 import S3ConfigError, S3ObjectStore, S3Settings, reset_clients
from pbt.testing import ObjectStoreContract
from pbt.testing.storage import OpenStore, keys_of


@pytest.fixture
def inject() -> Iterator[Callable[..., sb.FaultInjector]]:
    with sb.injectors() as make:
        yield make


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sb.Backend:
    return sb.open_backend("s3", tmp_path, monkeypatch)


def local_raw_keys(store: ObjectStore) -> list[str]:
    """The files under a local store's root, each checked to resolve inside it."""
    assert isinstance(store, LocalObjectStore)
    paths = [p for p in store.root.rglob("*") if p.is_file()]
    for path in paths:
        assert path.resolve().is_relative_to(store.root), path
    return [p.relative_to(store.root).as_posix() for p in paths]


def s3_raw_keys(store: ObjectStore) -> list[str]:
    """The bucket's own listing under the store's prefix (no pbt code in between)."""
    assert isinstance(store, S3ObjectStore)
    raw = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "/")
    return [o["Key"].removeprefix(store.prefix + "/") for o in raw.get("Contents", [])]


class TestLocalObjectStore(ObjectStoreContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OpenStore:
        return sb.open_backend("file", tmp_path, monkeypatch).open

    def raw_keys(self, store: ObjectStore) -> list[str]:
        return local_raw_keys(store)


class TestS3ObjectStore(sb.S3Backed, ObjectStoreContract):

    def raw_keys(self, store: ObjectStore) -> list[str]:
        return s3_raw_keys(store)

    def connection(self, store: ObjectStore) -> object:
        assert isinstance(store, S3ObjectStore)
        return store.client

    def test_multipart_sized_file_round_trip(
        self, store: ObjectStore, tmp_path: Path, backend: sb.Backend, inject: Callable
    ) -> None:
        """... in parts and back in ranged reads, as S3's request log shows."""
        counter = inject(store)  # counts requests only
        super().test_multipart_sized_file_round_trip(store, tmp_path)
        # An S3 ETag of a multipart upload is "<md5 of part md5s>-<number of parts>".
        assert isinstance(store, S3ObjectStore)
        head = store.client.head_object(Bucket=backend.bucket, Key="studies/root/ckpt/big.bin")
        assert head["ETag"].strip('"').endswith("-3")
        assert counter.sent["UploadPart"] == 3 and counter.sent["CompleteMultipartUpload"] == 1
        assert counter.ranged_gets == 3

    def test_delete_many_keys_in_batches(self, store: ObjectStore, inject: Callable) -> None:
        """... in two DeleteObjects calls."""
        counter = inject(store)
        super().test_delete_many_keys_in_batches(store)
        assert counter.sent["DeleteObjects"] == 2


# --- S3 only: URIs, settings, the client cache, error classes ---------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        "s3://",
        "s3://AKIAXXXX:secret@bucket/prefix",
        "s3://bucket:9000/prefix",
        "s3://bucket/../escape",
        "s3://bucket/a//b",
        "s3://bucket/a/./b",
        "s3://bucket/prefix?x-amz-security-token=abc",
        "s3://b/x",  # bucket names are at least 2 characters here (3 on AWS)
        "s3://bad bucket/x",
    ],
)
def test_s3_uri_is_checked(uri: str) -> None:
    with pytest.raises((SpecError, InvalidNameError)) as info:
        S3ObjectStore(uri, S3Settings())
    assert "secret" not in str(info.value)


def test_s3_settings_from_environment() -> None:
    env = {
        "PBT_S3_MAX_ATTEMPTS": "7",
        "PBT_S3_RETRY_MODE": "adaptive",
        "PBT_S3_MULTIPART_THRESHOLD": "8MiB",
        "PBT_S3_MULTIPART_CHUNKSIZE": "16777216",
        "AWS_ENDPOINT_URL_S3": "http://minio:9000",
    }
    settings = S3Settings.from_env(env)
    assert (settings.max_attempts, settings.retry_mode) == (7, "adaptive")
    assert (settings.multipart_threshold, settings.multipart_chunksize) == (8 << 20, 16 << 20)
    assert settings.endpoint_url is None  # boto3 resolves AWS_ENDPOINT_URL_S3 itself
    assert settings.addressing_style == "path"  # custom endpoints rarely resolve bucket.host names
    defaults = S3Settings.from_env({"AWS_MAX_ATTEMPTS": "4"})
    assert (defaults.max_attempts, defaults.retry_mode, defaults.addressing_style) == (4, "standard", None)
    assert defaults.multipart_chunksize == 64 << 20
    for bad in (
        {"PBT_S3_MAX_ATTEMPTS": "many"},
        {"PBT_S3_MAX_ATTEMPTS": "0"},
        {"PBT_S3_RETRY_MODE": "forever"},
        {"PBT_S3_MULTIPART_CHUNKSIZE": "64 parsecs"},
        {"PBT_S3_ENDPOINT_URL": "http://user:pass@minio:9000"},
        {"PBT_S3_ENDPOINT_URL": "minio:9000"},
    ):
        with pytest.raises(SpecError) as info:
            S3Settings.from_env(bad)
        assert "pass@" not in str(info.value)


def test_s3_endpoint_from_standard_aws_variable(s3: sb.Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without PBT_S3_ENDPOINT_URL, boto3's own AWS_ENDPOINT_URL_S3 points pbt at MinIO/moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", sb.moto_endpoint())
    store = open_object_store(s3.uri)
    assert isinstance(store, S3ObjectStore) and store.settings.endpoint_url is None
    store.put_bytes("via-aws-env", b"1")
    assert s3.store.get_bytes("via-aws-env") == b"1"


def test_s3_client_is_built_once_per_process_and_settings(s3: sb.Backend) -> None:
    assert isinstance(s3.store, S3ObjectStore)
    same = s3.open()
    assert same.client is s3.store.client  # type: ignore[attr-defined]
    other = s3.open(max_attempts=5)
    assert other.client is not s3.store.client  # type: ignore[attr-defined]
    before = s3.store.client
    reset_clients()
    assert s3.store.client is not before


def test_s3_listing_follows_continuation_pages(s3: sb.Backend, inject: Callable) -> None:
    """Force two keys per page: the paginator, StartAfter and prefix stripping hold across pages."""
    store = s3.store
    keys = ["a-b", "a/b", "a/c", "b/1", "b/2", "b/3", "c"]
    for key in keys:
        store.put_bytes(key, key.encode())
    counter = inject(store)
    store.client.meta.events.register(  # type: ignore[attr-defined]
        "provide-client-params.s3.ListObjectsV2", lambda params, **_: params.update(MaxKeys=2)
    )
    assert keys_of(store) == sorted(keys)
    assert counter.sent["ListObjectsV2"] == 4
    assert keys_of(store, "b/", start_after="b/1") == ["b/2", "b/3"]
    assert keys_of(store, start_after="a/c") == ["b/1", "b/2", "b/3", "c"]


@pytest.mark.parametrize(("code", "error"), [("AccessDenied", S3ConfigError), ("InternalError", StorageError)])
def test_s3_per_key_delete_failures_are_not_ignored(
    s3: sb.Backend, inject: Callable, code: str, error: type[Exception]
) -> None:
    """DeleteObjects answers 200 even when some keys failed; those failures must surface."""
    store = s3.store
    assert isinstance(store, S3ObjectStore)
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult><Error><Key>{store.prefix}/x/2</Key>'
        f"<Code>{code}</Code><Message>injected</Message></Error></DeleteResult>"
    ).encode()
    inject(store, sb.canned(200, body), fail_run=None, operations=frozenset({"DeleteObjects"}))
    with pytest.raises(error) as info:
        store.delete(["x/1", "x/2"])
    assert store.url("x/2") in str(info.value) and "1 of 2 keys failed" in str(info.value)


def test_s3_missing_bucket_is_a_fatal_configuration_error(s3: sb.Backend, tmp_path: Path) -> None:
    store = S3ObjectStore("s3://pbt-no-such-bucket/p", s3.settings)
    for call in (
        lambda: store.get_bytes("k"),
        lambda: store.put_bytes("k", b"1"),
        lambda: store.exists("k"),
        lambda: store.get_file("k", tmp_path / "x"),
        lambda: list(store.list()),
    ):
        with pytest.raises(S3ConfigError, match=r"bucket 'pbt-no-such-bucket'.* does not exist"):
            call()


def test_s3_access_denied_is_fatal_and_not_retried(s3: sb.Backend, inject: Callable) -> None:
    store = s3.store
    assert isinstance(store, S3ObjectStore)
    faults = inject(store, sb.http_error(403, "AccessDenied"), fail_run=None)
    with pytest.raises(S3ConfigError) as info:
        store.put_bytes("denied", b"1")
    assert isinstance(info.value, FatalError) and not isinstance(info.value, StorageError)
    assert "s3:ListBucket" in str(info.value) and store.url("denied") in str(info.value)
    assert faults.sent["PutObject"] == 1, "a permanent error was retried"


def test_s3_errors_after_the_retry_budget_name_the_key_but_no_secret(
    s3: sb.Backend, monkeypatch: pytest.MonkeyPatch, inject: Callable
) -> None:
    sb.fast_backoff(monkeypatch)
    store = s3.store
    assert isinstance(store, S3ObjectStore)
    store.put_bytes("k", b"1")
    faults = inject(store, sb.FAULTS["503 SlowDown"], fail_run=None)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.get_bytes("k")
    assert faults.sent["GetObject"] == s3.settings.max_attempts  # type: ignore[union-attr]
    text = "".join(traceback.format_exception(info.value))
    assert store.url("k") in str(info.value) and "SlowDown" in str(info.value)
    assert sb.SECRET not in text and "Authorization" not in text
    assert time.monotonic() - t0 < 10
