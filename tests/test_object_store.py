"""The ObjectStore contract (``pbt/storage/base.py``), checked against every back end.

One suite, parameterised over ``file://`` and ``s3://`` (moto over real HTTP), so whatever
checkpoints and study records rely on holds on local disk and on S3 alike. S3-only behaviour
(URI checks, the client cache, error classes) is at the end.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import storage_backends as sb
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pbt.errors import FatalError, InvalidNameError, NotFoundError, SpecError, StorageError
from pbt.storage import open_object_store
from pbt.storage.base import ObjectStore
from pbt.storage.keys import validate_key
from pbt.storage.local import LocalObjectStore
from pbt.storage.s3 import S3ConfigError, S3ObjectStore, S3Settings, reset_clients


@pytest.fixture(params=sb.KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sb.Backend:
    return sb.open_backend(request.param, tmp_path, monkeypatch)


@pytest.fixture
def inject() -> Iterator[Callable[..., sb.FaultInjector]]:
    with sb.injectors() as make:
        yield make


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sb.Backend:
    return sb.open_backend("s3", tmp_path, monkeypatch)


def keys_of(store: ObjectStore, prefix: str = "", start_after: str | None = None) -> list[str]:
    return [o.key for o in store.list(prefix, start_after)]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".pbt-"))


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 40], ids=["empty", "1B", "10KiB"])
def test_bytes_round_trip(backend: sb.Backend, data: bytes) -> None:
    store = backend.store
    store.put_bytes("study/trials/t1/record.json", data)
    assert store.get_bytes("study/trials/t1/record.json") == data
    assert store.exists("study/trials/t1/record.json")
    assert store.size("study/trials/t1/record.json") == len(data)
    # A second instance on the same root (another worker) sees the same object.
    assert backend.open().get_bytes("study/trials/t1/record.json") == data


@pytest.mark.parametrize("size", [0, 1, 70_000])
def test_small_file_round_trip_leaves_no_temp_files(backend: sb.Backend, tmp_path: Path, size: int) -> None:
    src = sb.write_random_file(tmp_path / "src.bin", size, seed=size)
    backend.store.put_file("files/a.bin", src)
    out = tmp_path / "out"
    out.mkdir()
    backend.store.get_file("files/a.bin", out / "a.bin")
    assert (out / "a.bin").read_bytes() == src.read_bytes()
    assert leftovers(out) == []


def test_multipart_sized_file_round_trip(backend: sb.Backend, tmp_path: Path, inject: Callable) -> None:
    """A file over the multipart threshold goes up in parts and comes down in ranged reads."""
    size = 2 * sb.PART + 12_345
    src = sb.write_random_file(tmp_path / "big.bin", size, seed=7)
    counter = inject(backend.store) if backend.kind == "s3" else None  # counts requests only
    backend.store.put_file("ckpt/big.bin", src)
    backend.store.get_file("ckpt/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert backend.store.size("ckpt/big.bin") == size
    if counter is not None:
        # An S3 ETag of a multipart upload is "<md5 of part md5s>-<number of parts>".
        assert isinstance(backend.store, S3ObjectStore)
        head = backend.store.client.head_object(Bucket=backend.bucket, Key="studies/root/ckpt/big.bin")
        assert head["ETag"].strip('"').endswith("-3")
        assert counter.sent["UploadPart"] == 3 and counter.sent["CompleteMultipartUpload"] == 1
        assert counter.ranged_gets == 3


def test_overwrite_replaces_the_whole_object(backend: sb.Backend, tmp_path: Path) -> None:
    store = backend.store
    store.put_bytes("k", b"a much longer first version")
    store.put_bytes("k", b"short")
    assert store.get_bytes("k") == b"short" and store.size("k") == 5
    store.put_file("k", sb.write_random_file(tmp_path / "f", 3000, seed=1))
    assert store.get_bytes("k") == (tmp_path / "f").read_bytes()
    (tmp_path / "dest").write_bytes(b"old content at the destination")
    store.get_file("k", tmp_path / "dest")
    assert (tmp_path / "dest").read_bytes() == (tmp_path / "f").read_bytes()


def test_missing_objects_raise_not_found(backend: sb.Backend, tmp_path: Path) -> None:
    store = backend.store
    store.put_bytes("present/x", b"1")
    for call in (
        lambda: store.get_bytes("absent"),
        lambda: store.size("absent"),
        lambda: store.get_file("absent", tmp_path / "dest"),
        lambda: store.get_bytes("present"),  # a "directory" is not an object
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        assert isinstance(info.value, FatalError) and isinstance(info.value, KeyError)
        assert "does not exist" in str(info.value)
    assert not store.exists("absent") and not store.exists("present")
    assert not (tmp_path / "dest").exists() and leftovers(tmp_path) == []


# --- listing -------------------------------------------------------------------------------------

# "a-b" < "a.c" < "a/b" < "a0" in code-point (and S3's UTF-8 byte) order: a per-directory walk
# would list "a/..." before "a-b"; the contract says plain string order.
LIST_KEYS = ["a/b", "a-b", "a0", "a/a/z", "ab", "a.c", "b", "B", "a/b-c", "a/b0", "é"]


def test_list_is_in_string_order_with_prefix_and_start_after(backend: sb.Backend) -> None:
    store = backend.store
    for i, key in enumerate(LIST_KEYS):
        store.put_bytes(key, b"x" * i)
    ordered = sorted(LIST_KEYS)
    assert ordered[:6] == ["B", "a-b", "a.c", "a/a/z", "a/b", "a/b-c"]
    assert keys_of(store) == ordered
    assert {o.key: o.size for o in store.list()} == {k: i for i, k in enumerate(LIST_KEYS)}
    assert keys_of(store, "a/") == ["a/a/z", "a/b", "a/b-c", "a/b0"]
    assert keys_of(store, "a") == [k for k in ordered if k.startswith("a")]
    assert keys_of(store, "a/b") == ["a/b", "a/b-c", "a/b0"]
    assert keys_of(store, "a/a/") == ["a/a/z"]
    assert keys_of(store, start_after="a-b") == [k for k in ordered if k > "a-b"]
    assert keys_of(store, start_after="a/b") == [k for k in ordered if k > "a/b"]
    assert keys_of(store, "a/", start_after="a/b") == ["a/b-c", "a/b0"]
    assert keys_of(store, start_after="a/c-not-a-key") == [k for k in ordered if k > "a/c-not-a-key"]
    assert keys_of(store, "nothing/") == [] and keys_of(store, "zz") == []
    # Resuming a listing from its last key reproduces the rest of it.
    first_three = [o.key for _, o in zip(range(3), store.list())]
    assert first_three + keys_of(store, start_after=first_three[-1]) == ordered


def test_list_prefix_cannot_escape_the_root(backend: sb.Backend) -> None:
    with pytest.raises(InvalidNameError):
        list(backend.store.list("../"))
    with pytest.raises(InvalidNameError):
        list(backend.store.list("a/../../"))


def test_neighbouring_roots_are_invisible(backend: sb.Backend) -> None:
    """``.../root`` must not list ``.../root-2`` (a plain string prefix would), nor vice versa."""
    main, neighbour = backend.store, backend.open("-2")
    neighbour.put_bytes("k", b"neighbour")
    main.put_bytes("k", b"main")
    assert keys_of(main) == ["k"] and keys_of(neighbour) == ["k"]
    assert main.get_bytes("k") == b"main" and neighbour.get_bytes("k") == b"neighbour"
    main.delete(["k"])
    assert neighbour.get_bytes("k") == b"neighbour"


# --- deletes -------------------------------------------------------------------------------------


def test_delete_is_idempotent(backend: sb.Backend) -> None:
    store = backend.store
    store.put_bytes("x/1", b"1")
    store.put_bytes("x/2", b"2")
    store.delete(k for k in ["x/1", "never-existed", "x/1"])
    assert keys_of(store) == ["x/2"]
    store.delete(["x/1", "x/2"])
    store.delete(["x/1", "x/2"])
    store.delete([])
    assert keys_of(store) == []


def test_delete_many_keys_in_batches(backend: sb.Backend, inject: Callable) -> None:
    """More keys than one DeleteObjects call takes (1000) are all deleted, present or not."""
    store = backend.store
    keys = [f"many/{i:05d}" for i in range(1003)]
    present = keys[:2] + keys[998:1001] + keys[-1:]  # on both sides of the batch boundary
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b""), present))
    store.put_bytes("kept", b"")
    counter = inject(store) if backend.kind == "s3" else None
    store.delete(iter(keys))
    assert keys_of(store) == ["kept"]
    if counter is not None:
        assert counter.sent["DeleteObjects"] == 2


# --- keys that must be refused -----------------------------------------------------------------

BAD_KEYS = ["", "..", "../x", "a/../../b", "a/..", "/abs", "/", "a//b", "a/", "./a", "a/./b", "a\\b",
            "..\\x", "a\x00b", "a\nb", "C:\\x"]


def assert_refused_everywhere(store: ObjectStore, key: str, scratch: Path) -> None:
    calls = {
        "put_bytes": lambda: store.put_bytes(key, b"x"),
        "get_bytes": lambda: store.get_bytes(key),
        "put_file": lambda: store.put_file(key, scratch),
        "get_file": lambda: store.get_file(key, scratch.parent / "out"),
        "exists": lambda: store.exists(key),
        "size": lambda: store.size(key),
        "delete": lambda: store.delete([key]),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidNameError):
            call()
            pytest.fail(f"{name}({key!r}) was accepted")


@pytest.mark.parametrize("key", BAD_KEYS)
def test_traversal_keys_are_refused(backend: sb.Backend, tmp_path: Path, key: str) -> None:
    scratch = sb.write_random_file(tmp_path / "scratch", 10)
    backend.store.put_bytes("fine", b"kept")
    assert_refused_everywhere(backend.store, key, scratch)
    assert keys_of(backend.store) == ["fine"]
    assert backend.store.get_bytes("fine") == b"kept"


SEGMENTS = st.sampled_from(["a", "b.c", "..", ".", "", "x\\y", "ok-1", "é", " ", "\t", "...", "..a", "A_B"])
KEYS = st.one_of(
    st.builds(lambda lead, segs: lead + "/".join(segs), st.sampled_from(["", "/", "./", "../"]),
              st.lists(SEGMENTS, min_size=1, max_size=4)),
    st.text(max_size=12),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=KEYS)
def test_any_key_is_refused_or_stays_inside_the_root(backend: sb.Backend, tmp_path: Path, key: str) -> None:
    """Property: a key is refused before any I/O, or it lands under the store's root."""
    store = backend.fresh()
    try:
        validate_key(key)
    except InvalidNameError:
        assert_refused_everywhere(store, key, sb.write_random_file(tmp_path / "scratch", 1))
        assert keys_of(store) == []
        return
    store.put_bytes(key, b"payload")
    assert keys_of(store) == [key] and store.get_bytes(key) == b"payload"
    if isinstance(store, LocalObjectStore):
        (path,) = [p for p in store.root.rglob("*") if p.is_file()]
        assert path.resolve().is_relative_to(store.root)
    else:
        assert isinstance(store, S3ObjectStore)
        raw = store.client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix + "/")
        assert [o["Key"] for o in raw["Contents"]] == [f"{store.prefix}/{key}"]
    store.delete([key])


SAFE_SEGMENT = st.text(alphabet="aAb-._/0é~", min_size=1, max_size=6).filter(
    lambda s: "/" not in s and s not in (".", "..")
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    keys=st.sets(st.lists(SAFE_SEGMENT, min_size=1, max_size=3).map("/".join), min_size=1, max_size=8),
    data=st.data(),
)
def test_list_agrees_with_a_sorted_model(backend: sb.Backend, keys: set[str], data: st.DataObject) -> None:
    """Property: list(prefix, start_after) is the sorted keys filtered by prefix and start_after."""
    # A file system cannot hold "a" and "a/b" at once; S3 can, but pbt never writes both.
    assume(not any(other.startswith(k + "/") for k in keys for other in keys))
    store = backend.fresh()
    for key in keys:
        store.put_bytes(key, key.encode())
    model = sorted(keys)
    some_key = data.draw(st.sampled_from(model))
    prefix = some_key[: data.draw(st.integers(0, len(some_key)))]
    start_after = data.draw(st.one_of(st.none(), st.sampled_from(model), st.text("a-./0", max_size=3)))
    expected = [k for k in model if k.startswith(prefix) and (start_after is None or k > start_after)]
    assert keys_of(store, prefix, start_after) == expected


# --- concurrency and processes -------------------------------------------------------------------


@pytest.mark.parametrize("size", [4096, 2 * sb.PART + 1], ids=["small", "multipart"])
def test_reader_sees_a_whole_old_or_new_object_during_overwrites(
    backend: sb.Backend, tmp_path: Path, size: int
) -> None:
    store = backend.store
    big = size > sb.PART
    store.put_bytes("hot", sb.versioned_payload(0, size))
    writes = 6 if big else 60
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for version in range(1, writes + 1):
                if big:
                    src = tmp_path / f"v{version}"
                    src.write_bytes(sb.versioned_payload(version, size))
                    store.put_file("hot", src)
                    src.unlink()
                else:
                    store.put_bytes("hot", sb.versioned_payload(version, size))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    seen: list[int] = []
    reader_store = backend.open()  # another instance, as another worker would have
    thread = threading.Thread(target=writer)
    thread.start()
    out = tmp_path / "read"
    out.mkdir()
    while not done.is_set() or len(seen) < 2:
        if big:
            reader_store.get_file("hot", out / "copy")
            seen.append(sb.payload_version((out / "copy").read_bytes(), size))
        else:
            seen.append(sb.payload_version(reader_store.get_bytes("hot"), size))
    thread.join()
    assert not errors, errors
    assert seen == sorted(seen), "a reader went back to an older version"
    assert len(set(seen)) >= 2, "the reader never overlapped the writer; the test proved nothing"
    assert sb.payload_version(store.get_bytes("hot"), size) == writes
    assert leftovers(out) == []


def _child_writes_and_reads(uri: str, settings: S3Settings | None, conn: object) -> None:
    """In another process: read what the parent wrote, write an answer."""
    try:
        store = S3ObjectStore(uri, settings) if settings else open_object_store(uri)
        question = store.get_bytes("from-parent")
        store.put_bytes("from-child", question[::-1] + f" pid={os.getpid()}".encode())
        conn.send("ok")  # type: ignore[attr-defined]
    except BaseException:
        conn.send(traceback.format_exc())  # type: ignore[attr-defined]


def test_another_process_shares_the_store(backend: sb.Backend) -> None:
    """A spawned process (a worker on another machine, as far as storage can tell) shares the root."""
    backend.store.put_bytes("from-parent", b"olleh")
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_child_writes_and_reads, args=(backend.uri, backend.settings, theirs))
    proc.start()
    assert ours.poll(60), "the child process did not answer"
    assert ours.recv() == "ok"
    proc.join(10)
    answer = backend.store.get_bytes("from-child")
    assert answer.startswith(b"hello pid=") and answer != f"hello pid={os.getpid()}".encode()


def _forked_child(store: ObjectStore, parent_client: object, conn: object) -> None:
    try:
        if isinstance(store, S3ObjectStore):
            assert store.client is not parent_client, "the child reused the parent's S3 client"
        assert store.get_bytes("before-fork") == b"parent"
        store.put_bytes("after-fork", b"child")
        conn.send("ok")  # type: ignore[attr-defined]
    except BaseException:
        conn.send(traceback.format_exc())  # type: ignore[attr-defined]


def test_store_built_before_fork_works_in_the_child(backend: sb.Backend) -> None:
    """Celery's prefork workers fork after import: a store (and S3 client) from the parent must
    not hand the child the parent's connection pool."""
    store = backend.store
    store.put_bytes("before-fork", b"parent")  # the parent's client now holds pooled connections
    parent_client = store.client if isinstance(store, S3ObjectStore) else None
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_forked_child, args=(store, parent_client, theirs))
    proc.start()
    assert ours.poll(60), "the forked child did not answer"
    assert ours.recv() == "ok"
    proc.join(10)
    assert store.get_bytes("after-fork") == b"child"
    if isinstance(store, S3ObjectStore):
        assert store.client is parent_client  # the parent keeps its own


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
