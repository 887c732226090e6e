"""Behavioural suites for object stores and the checkpoints written on top of them.

:class:`ObjectStoreContract` is the contract of :class:`pbt.storage.base.ObjectStore` (atomic
puts, streaming files, listing in key order, keys that cannot escape the root, several
instances and processes sharing one root); :class:`CheckpointContract` is what workers rely on
from :class:`pbt.storage.checkpoints.CheckpointStore` over that store (byte-exact round trips,
no mixed versions, damage reported as such, memory that does not grow with the checkpoint).
pbt runs both over ``file://`` and ``s3://`` (moto over HTTP); to hold your own back end to
the same properties, subclass them and provide one fixture, as with Optuna's
``optuna.testing.pytest_storages``::

    import pytest
    from pbt.testing import CheckpointContract, ObjectStoreContract

    class TestMyStore(ObjectStoreContract, CheckpointContract):
        @pytest.fixture
        def open_store(self, tmp_path):
            return lambda suffix="": MyStore(f"{tmp_path}/root{suffix}")

Back-end-specific checks (request counts, fault injection) belong in the subclass: override a
test, call ``super()``'s, and assert more.

This module imports pytest and hypothesis: it is part of the test kit (``pip install
'pbt[test]'``), never imported by pbt itself.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import threading
import traceback
import tracemalloc
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pbt.errors import CorruptCheckpointError, FatalError, InvalidNameError, NotFoundError, StorageError
from pbt.storage import open_object_store
from pbt.storage.base import ObjectInfo, ObjectStore
from pbt.storage.checkpoints import MANIFEST, CheckpointStore, Manifest, sha256_file
from pbt.storage.keys import validate_key

__all__ = [
    "CHECKPOINT_FILES",
    "CHECKPOINT_NAME",
    "PART",
    "CheckpointContract",
    "MiB",
    "ObjectStoreContract",
    "OpenStore",
    "RacingStore",
    "StoreFixtures",
    "keys_of",
    "leftovers",
    "loaded_version",
    "payload_version",
    "staging_leftovers",
    "tree",
    "versioned_payload",
    "write_checkpoint",
    "write_random_file",
]

MiB = 1 << 20
# S3's real minimum part size: the suites use it so multipart is exercised exactly as on AWS.
PART = 5 * MiB

#: ``open_store(suffix="")``: a new store instance whose root is the test's root followed by
#: ``suffix`` ("" the same root, "-2" a neighbouring one, "/sub" one nested under it).
OpenStore = Callable[..., ObjectStore]


# --- payloads that prove their own integrity ----------------------------------------------------


def versioned_payload(version: int, size: int) -> bytes:
    """``size`` bytes that encode ``version`` everywhere: any mix of two versions is detectable."""
    block = hashlib.sha256(f"v{version}".encode()).digest() * 2048  # 64 KiB, distinct per version
    body = (block * (size // len(block) + 1))[:size]
    header = f"{version:012d}".encode()
    return header + body[len(header) :] if size >= len(header) else body


def payload_version(data: bytes, size: int) -> int:
    """The version ``data`` encodes; AssertionError if it is torn, truncated or mixed."""
    assert len(data) == size, f"read {len(data)} bytes, expected {size}"
    version = int(data[:12])
    assert data == versioned_payload(version, size), f"bytes of version {version} are mixed or corrupt"
    return version


def write_random_file(path: Path, size: int, seed: int = 0) -> Path:
    """Write ``size`` pseudo-random bytes in 1 MiB pieces (never the whole file in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        left, i = size, 0
        while left:
            piece = hashlib.sha256(f"{seed}-{i}".encode()).digest() * (MiB // 32)
            f.write(piece[: min(left, MiB)])
            left -= min(left, MiB)
            i += 1
    return path


def keys_of(store: ObjectStore, prefix: str = "", start_after: str | None = None) -> list[str]:
    return [o.key for o in store.list(prefix, start_after)]


def leftovers(directory: Path) -> list[str]:
    """Hidden staging files (``.pbt-*``) left in ``directory``: a download must clean up after itself."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".pbt-"))


# --- the fixture contract -------------------------------------------------------------------------


class StoreFixtures:
    """What both storage suites need from a subclass.

    **Required fixture** ``open_store`` — a callable ``open_store(suffix: str = "") -> ObjectStore``
    that builds a *new* instance each call, rooted at the test's own empty root followed by
    ``suffix``: ``""`` is the same root (as another worker would open it), ``"-2"`` a neighbouring
    root whose name extends this one, ``"/<name>"`` a root nested under it. Roots must start
    empty for every test (use ``tmp_path``, a fresh bucket or a fresh prefix).

    **Provided fixture** ``store`` — ``open_store()``, the instance most tests use.

    **Optional overrides**:

    * :attr:`part_size` — the size at which the back end switches to multipart/streamed
      transfers; large-object tests use a few of these (default: S3's 5 MiB minimum part);
    * :meth:`raw_keys` — what the back end physically holds under the root, read around the
      store, so the suite can check keys land where they should (default: not checked);
    * :meth:`connection` — the object holding the store's connections, which a forked child
      must not share with its parent (default: none);
    * :meth:`recipe` — how another process builds the same store (default: from its URI, the
      way a worker opens the storage its task names).
    """

    part_size: ClassVar[int] = PART

    @pytest.fixture
    def open_store(self) -> OpenStore:
        pytest.fail(f"{type(self).__name__} must define an `open_store` fixture (see StoreFixtures)", pytrace=False)

    @pytest.fixture
    def store(self, open_store: OpenStore) -> ObjectStore:
        return open_store()

    def raw_keys(self, store: ObjectStore) -> list[str] | None:
        """Every object under ``store``'s root as the back end lists it, relative to the root.

        ``None`` (the default) skips the check. Override it with a listing that does not go
        through the store (the file system under the root, the raw bucket listing).
        """
        return None

    def connection(self, store: ObjectStore) -> object | None:
        """The per-process object behind ``store``'s connections (an S3 client), or None."""
        return None

    def recipe(self, store: ObjectStore) -> tuple[Callable[..., ObjectStore], tuple[Any, ...]]:
        """A picklable callable and its arguments that build ``store`` again in another process."""
        return open_object_store, (store.uri,)


# --- ObjectStore -----------------------------------------------------------------------------------

# "a-b" < "a.c" < "a/b" < "a0" in code-point (and S3's UTF-8 byte) order: a per-directory walk
# would list "a/..." before "a-b"; the contract says plain string order.
LIST_KEYS = ["a/b", "a-b", "a0", "a/a/z", "ab", "a.c", "b", "B", "a/b-c", "a/b0", "é"]

BAD_KEYS = ["", "..", "../x", "a/../../b", "a/..", "/abs", "/", "a//b", "a/", "./a", "a/./b", "a\\b",
            "..\\x", "a\x00b", "a\nb", "C:\\x"]

SEGMENTS = st.sampled_from(["a", "b.c", "..", ".", "", "x\\y", "ok-1", "é", " ", "\t", "...", "..a", "A_B"])
KEYS = st.one_of(
    st.builds(lambda lead, segs: lead + "/".join(segs), st.sampled_from(["", "/", "./", "../"]),
              st.lists(SEGMENTS, min_size=1, max_size=4)),
    st.text(max_size=12),
)
# A property defined here runs once per subclass (one per back end): hypothesis sees one test
# method called from several classes, which is intended, and the store comes from a fixture
# that each example uses afresh (it opens a root of its own).
SHARED_PROPERTY = [HealthCheck.function_scoped_fixture, HealthCheck.differing_executors]
SAFE_SEGMENT = st.text(alphabet="aAb-._/0é~", min_size=1, max_size=6).filter(
    lambda s: "/" not in s and s not in (".", "..")
)


def assert_refused_everywhere(store: ObjectStore, key: str, scratch: Path) -> None:
    """Every operation refuses ``key`` with InvalidNameError (before any I/O)."""
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


def _child_writes_and_reads(recipe: tuple[Callable[..., ObjectStore], tuple[Any, ...]], conn: Any) -> None:
    """In another process: read what the parent wrote, write an answer."""
    try:
        build, args = recipe
        store = build(*args)
        question = store.get_bytes("from-parent")
        store.put_bytes("from-child", question[::-1] + f" pid={os.getpid()}".encode())
        conn.send("ok")
    except BaseException:
        conn.send(traceback.format_exc())


class ObjectStoreContract(StoreFixtures):
    """The :class:`~pbt.storage.base.ObjectStore` contract; see :class:`StoreFixtures` for fixtures."""

    # --- round trips ---------------------------------------------------------------------------

    @pytest.mark.parametrize("data", [b"", b"x", bytes(range(256)) * 40], ids=["empty", "1B", "10KiB"])
    def test_bytes_round_trip(self, store: ObjectStore, open_store: OpenStore, data: bytes) -> None:
        store.put_bytes("study/trials/t1/record.json", data)
        assert store.get_bytes("study/trials/t1/record.json") == data
        assert store.exists("study/trials/t1/record.json")
        assert store.size("study/trials/t1/record.json") == len(data)
        # A second instance on the same root (another worker) sees the same object.
        assert open_store().get_bytes("study/trials/t1/record.json") == data

    @pytest.mark.parametrize("size", [0, 1, 70_000])
    def test_small_file_round_trip_leaves_no_temp_files(self, store: ObjectStore, tmp_path: Path, size: int) -> None:
        src = write_random_file(tmp_path / "src.bin", size, seed=size)
        store.put_file("files/a.bin", src)
        out = tmp_path / "out"
        out.mkdir()
        store.get_file("files/a.bin", out / "a.bin")
        assert (out / "a.bin").read_bytes() == src.read_bytes()
        assert leftovers(out) == []

    def test_multipart_sized_file_round_trip(self, store: ObjectStore, tmp_path: Path) -> None:
        """A file over the multipart threshold goes up and comes down whole (in parts, on S3)."""
        size = 2 * self.part_size + 12_345
        src = write_random_file(tmp_path / "big.bin", size, seed=7)
        store.put_file("ckpt/big.bin", src)
        store.get_file("ckpt/big.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
        assert store.size("ckpt/big.bin") == size

    def test_overwrite_replaces_the_whole_object(self, store: ObjectStore, tmp_path: Path) -> None:
        store.put_bytes("k", b"a much longer first version")
        store.put_bytes("k", b"short")
        assert store.get_bytes("k") == b"short" and store.size("k") == 5
        store.put_file("k", write_random_file(tmp_path / "f", 3000, seed=1))
        assert store.get_bytes("k") == (tmp_path / "f").read_bytes()
        (tmp_path / "dest").write_bytes(b"old content at the destination")
        store.get_file("k", tmp_path / "dest")
        assert (tmp_path / "dest").read_bytes() == (tmp_path / "f").read_bytes()

    def test_missing_objects_raise_not_found(self, store: ObjectStore, tmp_path: Path) -> None:
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

    # --- listing -------------------------------------------------------------------------------

    def test_list_is_in_string_order_with_prefix_and_start_after(self, store: ObjectStore) -> None:
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

    def test_list_prefix_cannot_escape_the_root(self, store: ObjectStore) -> None:
        with pytest.raises(InvalidNameError):
            list(store.list("../"))
        with pytest.raises(InvalidNameError):
            list(store.list("a/../../"))

    def test_neighbouring_roots_are_invisible(self, store: ObjectStore, open_store: OpenStore) -> None:
        """``.../root`` must not list ``.../root-2`` (a plain string prefix would), nor vice versa."""
        main, neighbour = store, open_store("-2")
        neighbour.put_bytes("k", b"neighbour")
        main.put_bytes("k", b"main")
        assert keys_of(main) == ["k"] and keys_of(neighbour) == ["k"]
        assert main.get_bytes("k") == b"main" and neighbour.get_bytes("k") == b"neighbour"
        main.delete(["k"])
        assert neighbour.get_bytes("k") == b"neighbour"

    # --- deletes -------------------------------------------------------------------------------

    def test_delete_is_idempotent(self, store: ObjectStore) -> None:
        store.put_bytes("x/1", b"1")
        store.put_bytes("x/2", b"2")
        store.delete(k for k in ["x/1", "never-existed", "x/1"])
        assert keys_of(store) == ["x/2"]
        store.delete(["x/1", "x/2"])
        store.delete(["x/1", "x/2"])
        store.delete([])
        assert keys_of(store) == []

    def test_delete_many_keys_in_batches(self, store: ObjectStore) -> None:
        """More keys than one S3 DeleteObjects call takes (1000) are all deleted, present or not."""
        keys = [f"many/{i:05d}" for i in range(1003)]
        present = keys[:2] + keys[998:1001] + keys[-1:]  # on both sides of the batch boundary
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda k: store.put_bytes(k, b""), present))
        store.put_bytes("kept", b"")
        store.delete(iter(keys))
        assert keys_of(store) == ["kept"]

    # --- keys that must be refused -------------------------------------------------------------

    @pytest.mark.parametrize("key", BAD_KEYS)
    def test_traversal_keys_are_refused(self, store: ObjectStore, tmp_path: Path, key: str) -> None:
        scratch = write_random_file(tmp_path / "scratch", 10)
        store.put_bytes("fine", b"kept")
        assert_refused_everywhere(store, key, scratch)
        assert keys_of(store) == ["fine"]
        assert store.get_bytes("fine") == b"kept"

    @settings(max_examples=60, deadline=None, suppress_health_check=SHARED_PROPERTY)
    @given(key=KEYS)
    def test_any_key_is_refused_or_stays_inside_the_root(
        self, open_store: OpenStore, tmp_path: Path, key: str
    ) -> None:
        """Property: a key is refused before any I/O, or it lands under the store's root."""
        store = open_store("/" + uuid.uuid4().hex[:10])  # a clean slate for each example
        try:
            validate_key(key)
        except InvalidNameError:
            assert_refused_everywhere(store, key, write_random_file(tmp_path / "scratch", 1))
            assert keys_of(store) == []
            return
        store.put_bytes(key, b"payload")
        assert keys_of(store) == [key] and store.get_bytes(key) == b"payload"
        raw = self.raw_keys(store)
        if raw is not None:
            assert raw == [key], f"the back end holds {raw} for key {key!r}"
        store.delete([key])

    @settings(max_examples=15, deadline=None, suppress_health_check=SHARED_PROPERTY)
    @given(
        keys=st.sets(st.lists(SAFE_SEGMENT, min_size=1, max_size=3).map("/".join), min_size=1, max_size=8),
        data=st.data(),
    )
    def test_list_agrees_with_a_sorted_model(self, open_store: OpenStore, keys: set[str], data: st.DataObject) -> None:
        """Property: list(prefix, start_after) is the sorted keys filtered by prefix and start_after."""
        # A file system cannot hold "a" and "a/b" at once; S3 can, but pbt never writes both.
        assume(not any(other.startswith(k + "/") for k in keys for other in keys))
        store = open_store("/" + uuid.uuid4().hex[:10])
        for key in keys:
            store.put_bytes(key, key.encode())
        model = sorted(keys)
        some_key = data.draw(st.sampled_from(model))
        prefix = some_key[: data.draw(st.integers(0, len(some_key)))]
        start_after = data.draw(st.one_of(st.none(), st.sampled_from(model), st.text("a-./0", max_size=3)))
        expected = [k for k in model if k.startswith(prefix) and (start_after is None or k > start_after)]
        assert keys_of(store, prefix, start_after) == expected

    # --- concurrency and processes -------------------------------------------------------------

    @pytest.mark.parametrize("kind", ["small", "multipart"])
    def test_reader_sees_a_whole_old_or_new_object_during_overwrites(
        self, store: ObjectStore, open_store: OpenStore, tmp_path: Path, kind: str
    ) -> None:
        big = kind == "multipart"
        size = 2 * self.part_size + 1 if big else 4096
        store.put_bytes("hot", versioned_payload(0, size))
        writes = 6 if big else 60
        done = threading.Event()
        errors: list[BaseException] = []

        def writer() -> None:
            try:
                for version in range(1, writes + 1):
                    if big:
                        src = tmp_path / f"v{version}"
                        src.write_bytes(versioned_payload(version, size))
                        store.put_file("hot", src)
                        src.unlink()
                    else:
                        store.put_bytes("hot", versioned_payload(version, size))
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        seen: list[int] = []
        reader_store = open_store()  # another instance, as another worker would have
        thread = threading.Thread(target=writer)
        thread.start()
        out = tmp_path / "read"
        out.mkdir()
        while not done.is_set() or len(seen) < 2:
            if big:
                reader_store.get_file("hot", out / "copy")
                seen.append(payload_version((out / "copy").read_bytes(), size))
            else:
                seen.append(payload_version(reader_store.get_bytes("hot"), size))
        thread.join()
        assert not errors, errors
        assert seen == sorted(seen), "a reader went back to an older version"
        assert len(set(seen)) >= 2, "the reader never overlapped the writer; the test proved nothing"
        assert payload_version(store.get_bytes("hot"), size) == writes
        assert leftovers(out) == []

    def test_another_process_shares_the_store(self, store: ObjectStore) -> None:
        """A spawned process (a worker on another machine, as far as storage can tell) shares the root."""
        store.put_bytes("from-parent", b"olleh")
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_child_writes_and_reads, args=(self.recipe(store), theirs))
        proc.start()
        assert ours.poll(60), "the child process did not answer"
        assert ours.recv() == "ok"
        proc.join(10)
        answer = store.get_bytes("from-child")
        assert answer.startswith(b"hello pid=") and answer != f"hello pid={os.getpid()}".encode()

    def test_store_built_before_fork_works_in_the_child(self, store: ObjectStore) -> None:
        """Celery's prefork workers fork after import: a store (and its connections) from the parent
        must keep working in the child without handing it the parent's connection pool."""
        store.put_bytes("before-fork", b"parent")  # the parent's client now holds pooled connections
        parent_connection = self.connection(store)
        connection = self.connection

        def child(conn: Any) -> None:
            try:
                if parent_connection is not None:
                    assert connection(store) is not parent_connection, "the child reused the parent's connections"
                assert store.get_bytes("before-fork") == b"parent"
                store.put_bytes("after-fork", b"child")
                conn.send("ok")
            except BaseException:
                conn.send(traceback.format_exc())

        ctx = multiprocessing.get_context("fork")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=child, args=(theirs,))
        proc.start()
        assert ours.poll(60), "the forked child did not answer"
        assert ours.recv() == "ok"
        proc.join(10)
        assert store.get_bytes("after-fork") == b"child"
        if parent_connection is not None:
            assert self.connection(store) is parent_connection  # the parent keeps its own


# --- checkpoints ------------------------------------------------------------------------------------

CHECKPOINT_NAME = "study/trials/t0001/step-000100"
CHECKPOINT_FILES = {"model.pt": 3000, "optim/state.bin": 1500, "nested/deeper/rng.json": 40, "empty": 0, "é.txt": 12}


def write_checkpoint(directory: Path, version: int, files: dict[str, int] = CHECKPOINT_FILES) -> Path:
    """A trainer's save(): every file encodes ``version``, so a mixed load is detectable."""
    for rel, size in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(versioned_payload(version, size))
    return directory


def tree(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` by relative path, with its bytes."""
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def loaded_version(directory: Path, files: dict[str, int] = CHECKPOINT_FILES) -> int:
    """The one version every file in ``directory`` holds; AssertionError on any mixture."""
    got = tree(directory)
    assert sorted(got) == sorted(files), f"files {sorted(got)} != {sorted(files)}"
    versions = {payload_version(got[rel], size) for rel, size in files.items() if size >= 12}
    assert len(versions) == 1, f"mixed versions {versions}"
    return versions.pop()


def staging_leftovers(*dirs: Path) -> list[str]:
    return [p.name for d in dirs if d.exists() for p in d.iterdir() if p.name.startswith(".pbt-")]


DAMAGE = [
    "flipped byte",
    "truncated part",
    "deleted part",
    "garbage manifest",
    "manifest of the wrong shape",
    "part key outside the checkpoint",
    "part path escaping the directory",
]


def do_damage(objects: ObjectStore, manifest: Manifest, damage: str) -> str:
    """Damage a saved checkpoint the way disks, networks and people do; return the expected error."""
    name = CHECKPOINT_NAME
    part = next(p for p in manifest.parts if p.path == "model.pt")
    manifest_key = f"{name}/{MANIFEST}"
    if damage == "flipped byte":
        data = bytearray(objects.get_bytes(part.key))
        data[len(data) // 2] ^= 0x01
        objects.put_bytes(part.key, bytes(data))
        return f"part {part.path} fails its SHA-256 check"
    if damage == "truncated part":
        objects.put_bytes(part.key, objects.get_bytes(part.key)[:-1])
        return f"part {part.path} is {part.size - 1} bytes, the manifest says {part.size}"
    if damage == "deleted part":
        objects.delete([part.key])
        return f"part {part.path} is missing"
    if damage == "garbage manifest":
        objects.put_bytes(manifest_key, b"{not json")
        return "unreadable manifest"
    if damage == "manifest of the wrong shape":
        objects.put_bytes(manifest_key, b'{"parts": {"a": 1}}')
        return "unreadable manifest"
    if damage == "part key outside the checkpoint":
        objects.put_bytes(manifest_key, manifest.to_json().replace(f"{name}/parts/".encode(), b"other/parts/"))
        return "points outside"
    assert damage == "part path escaping the directory"
    objects.put_bytes(manifest_key, manifest.to_json().replace(b'"path": "model.pt"', b'"path": "../../x"'))
    return "unsafe path"


class RacingStore(ObjectStore):
    """A real store whose ``get_file`` first runs ``before_get_file``: a writer at the worst time."""

    def __init__(self, inner: ObjectStore, before_get_file: Callable[[str], None]) -> None:
        self.inner, self.before_get_file, self.uri = inner, before_get_file, inner.uri

    def put_bytes(self, key: str, data: bytes) -> None:
        self.inner.put_bytes(key, data)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def put_file(self, key: str, path: Path) -> None:
        self.inner.put_file(key, path)

    def get_file(self, key: str, path: Path) -> None:
        self.before_get_file(key)
        self.inner.get_file(key, path)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        return self.inner.list(prefix, start_after)

    def delete(self, keys: Iterable[str]) -> None:
        self.inner.delete(keys)


def _save_in_another_process(recipe: tuple[Callable[..., ObjectStore], tuple[Any, ...]], src: str, conn: Any) -> None:
    try:
        build, args = recipe
        CheckpointStore(build(*args)).save(CHECKPOINT_NAME, Path(src), meta={"by": "child"})
        conn.send("ok")
    except BaseException:
        conn.send(traceback.format_exc())


class CheckpointContract(StoreFixtures):
    """What a worker relies on from :class:`~pbt.storage.checkpoints.CheckpointStore` over a back end.

    A saved directory comes back byte for byte; a reader racing a writer gets one whole version
    (or a StorageError that says "retry"), never a mixture and never a false "corrupt"; real
    damage is reported as CorruptCheckpointError naming the part, and leaves the destination
    untouched; memory does not grow with checkpoint size. Fixtures: see :class:`StoreFixtures`.
    """

    # --- round trips ---------------------------------------------------------------------------

    def test_round_trip_of_a_nested_directory(self, store: ObjectStore, open_store: OpenStore, tmp_path: Path) -> None:
        checkpoints = CheckpointStore(store)
        src = write_checkpoint(tmp_path / "src", 1)
        saved = checkpoints.save(CHECKPOINT_NAME, src, meta={"step": 100, "metrics": [{"loss": 0.5}]})
        assert checkpoints.exists(CHECKPOINT_NAME) and checkpoints.list("study/") == [CHECKPOINT_NAME]
        assert sorted(p.path for p in saved.parts) == sorted(CHECKPOINT_FILES)
        assert {p.path: p.size for p in saved.parts} == CHECKPOINT_FILES
        assert all(p.sha256 == sha256_file(src / p.path) for p in saved.parts)

        out = tmp_path / "work" / "restore"
        loaded = CheckpointStore(open_store()).load(CHECKPOINT_NAME, out)  # another worker's store
        assert tree(out) == tree(src)
        assert loaded.meta == {"step": 100, "metrics": [{"loss": 0.5}]} and (
            loaded.size == sum(CHECKPOINT_FILES.values())
        )
        assert checkpoints.manifest(CHECKPOINT_NAME).to_json() == saved.to_json() == loaded.to_json()
        assert staging_leftovers(out.parent) == []

    def test_multipart_sized_checkpoint(self, store: ObjectStore, tmp_path: Path) -> None:
        files = {"weights.bin": 2 * self.part_size + 7, "small.json": 100}
        checkpoints = CheckpointStore(store)
        checkpoints.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "src", 3, files))
        checkpoints.load(CHECKPOINT_NAME, tmp_path / "out")
        assert loaded_version(tmp_path / "out", files) == 3
        assert tree(tmp_path / "out") == tree(tmp_path / "src")

    def test_overwrite_swaps_the_whole_checkpoint_and_frees_the_old_parts(
        self, store: ObjectStore, tmp_path: Path
    ) -> None:
        checkpoints = CheckpointStore(store)
        checkpoints.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "v1", 1))
        v2_files = {"model.pt": 500, "new-file.bin": 64}
        v2 = checkpoints.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "v2", 2, v2_files))
        checkpoints.load(CHECKPOINT_NAME, tmp_path / "out")
        assert loaded_version(tmp_path / "out", v2_files) == 2
        part_keys = [o.key for o in store.list(CHECKPOINT_NAME + "/parts/")]
        assert sorted(part_keys) == sorted(p.key for p in v2.parts), "parts of the replaced version remain"

    def test_list_and_delete(self, store: ObjectStore, tmp_path: Path) -> None:
        checkpoints = CheckpointStore(store)
        names = ["s/trials/t1/step-1", "s/trials/t1/step-2", "s/trials/t10/step-1", "s/trials/t1/step-1/sub"]
        for i, name in enumerate(names):
            checkpoints.save(name, write_checkpoint(tmp_path / f"c{i}", i))
        assert checkpoints.list("s/trials/t1/") == [
            "s/trials/t1/step-1", "s/trials/t1/step-1/sub", "s/trials/t1/step-2"
        ]
        assert checkpoints.list("s/trials/t10/") == ["s/trials/t10/step-1"]

        manifest_size = store.size("s/trials/t1/step-1/" + MANIFEST)
        freed = checkpoints.delete("s/trials/t1/step-1")
        assert freed == sum(CHECKPOINT_FILES.values()) + manifest_size
        assert not checkpoints.exists("s/trials/t1/step-1")
        # A checkpoint nested under the deleted name is a different checkpoint: it survives.
        checkpoints.load("s/trials/t1/step-1/sub", tmp_path / "sub")
        assert loaded_version(tmp_path / "sub") == 3
        assert checkpoints.delete("s/trials/t1/step-1") == 0  # idempotent
        assert [o.key for o in store.list("s/trials/t1/step-1/") if "/sub/" not in o.key] == []

    def test_missing_checkpoint_is_not_found(self, store: ObjectStore, tmp_path: Path) -> None:
        checkpoints = CheckpointStore(store)
        with pytest.raises(NotFoundError, match="does not exist"):
            checkpoints.load("study/trials/none/step-1", tmp_path / "out")
        with pytest.raises(NotFoundError):
            checkpoints.manifest("study/trials/none/step-1")
        assert not checkpoints.exists("study/trials/none/step-1")
        assert not (tmp_path / "out").exists()

    def test_bad_input_is_refused_before_anything_is_written(self, store: ObjectStore, tmp_path: Path) -> None:
        checkpoints = CheckpointStore(store)
        src = write_checkpoint(tmp_path / "src", 1)
        for bad in ("../escape", "/abs", "a//b", "a\\b", ""):
            with pytest.raises(InvalidNameError):
                checkpoints.save(bad, src)
            with pytest.raises(InvalidNameError):
                checkpoints.load(bad, tmp_path / "out")
        with pytest.raises(ValueError, match="holds no files"):
            (tmp_path / "empty").mkdir()
            checkpoints.save(CHECKPOINT_NAME, tmp_path / "empty")
        with pytest.raises(TypeError):
            checkpoints.save(CHECKPOINT_NAME, src, meta={"not json": object()})
        assert list(store.list()) == []

    # --- corruption ----------------------------------------------------------------------------

    @pytest.mark.parametrize("damage", DAMAGE)
    def test_damage_is_reported_and_leaves_the_destination_untouched(
        self, store: ObjectStore, tmp_path: Path, damage: str
    ) -> None:
        checkpoints = CheckpointStore(store)
        manifest = checkpoints.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "src", 1))
        expected = do_damage(store, manifest, damage)
        out = tmp_path / "work" / "restore"
        out.mkdir(parents=True)
        (out / "previous.txt").write_text("the trainer's own file")
        with pytest.raises(CorruptCheckpointError) as info:
            checkpoints.load(CHECKPOINT_NAME, out)
        assert (expected in str(info.value) and store.url(CHECKPOINT_NAME) in str(info.value)) or (
            CHECKPOINT_NAME in str(info.value)
        )
        assert expected in str(info.value)
        assert tree(out) == {"previous.txt": b"the trainer's own file"}, "a failed load changed the destination"
        assert staging_leftovers(out.parent) == []
        assert not (tmp_path / "x").exists() and not (tmp_path / "work" / "x").exists()
        # A new save over the damage repairs the checkpoint (a bad old manifest does not block it).
        checkpoints.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "fixed", 2))
        checkpoints.load(CHECKPOINT_NAME, tmp_path / "again")
        assert loaded_version(tmp_path / "again") == 2

    # --- readers racing writers ----------------------------------------------------------------

    def test_a_version_replaced_mid_load_is_reloaded_not_reported_corrupt(
        self, store: ObjectStore, open_store: OpenStore, tmp_path: Path
    ) -> None:
        writer = CheckpointStore(store)
        writer.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "v1", 1))
        replaced: list[int] = []

        def replace_once(_key: str) -> None:
            if not replaced:  # the reader holds v1's manifest; v2 commits and v1's parts are deleted
                replaced.append(2)
                writer.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "v2", 2))

        manifest = CheckpointStore(RacingStore(open_store(), replace_once)).load(CHECKPOINT_NAME, tmp_path / "out")
        assert replaced and loaded_version(tmp_path / "out") == 2
        assert manifest.to_json() == writer.manifest(CHECKPOINT_NAME).to_json()

    def test_a_checkpoint_that_keeps_changing_asks_the_reader_to_retry(
        self, store: ObjectStore, open_store: OpenStore, tmp_path: Path
    ) -> None:
        writer = CheckpointStore(store)
        writer.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "v0", 0))
        versions = iter(range(1, 100))

        def replace_every_time(_key: str) -> None:
            version = next(versions)
            writer.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / f"v{version}", version))

        out = tmp_path / "out"
        with pytest.raises(StorageError, match=r"replaced \d+ times while loading; try again"):
            CheckpointStore(RacingStore(open_store(), replace_every_time)).load(CHECKPOINT_NAME, out)
        assert not any(out.iterdir()) and staging_leftovers(tmp_path) == []

    def test_a_checkpoint_deleted_mid_load_is_not_found(
        self, store: ObjectStore, open_store: OpenStore, tmp_path: Path
    ) -> None:
        writer = CheckpointStore(store)
        writer.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "v1", 1))
        reader = CheckpointStore(RacingStore(open_store(), lambda _key: writer.delete(CHECKPOINT_NAME)))
        with pytest.raises(NotFoundError, match="deleted while it was being loaded"):
            reader.load(CHECKPOINT_NAME, tmp_path / "out")

    def test_concurrent_reader_and_writer_never_mix_versions(
        self, store: ObjectStore, open_store: OpenStore, tmp_path: Path
    ) -> None:
        """A writer overwrites one checkpoint in a loop while a reader loads it in another thread:
        every load is one complete, verified version, newer or equal to the one before, or a
        StorageError asking to retry; never CorruptCheckpointError, NotFoundError or a mixture."""
        files = {"model.pt": 40_000, "optim/adam.bin": 20_000, "nested/deeper/rng.json": 100}
        writer = CheckpointStore(store)
        writer.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "v0", 0, files))
        saves, done, errors = 25, threading.Event(), []

        def write_loop() -> None:
            try:
                for version in range(1, saves + 1):
                    writer.save(CHECKPOINT_NAME, write_checkpoint(tmp_path / f"v{version}", version, files))
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        reader = CheckpointStore(open_store())
        seen, retries, attempt = [], 0, 0
        thread = threading.Thread(target=write_loop)
        thread.start()
        while not done.is_set() or not seen:
            attempt += 1
            out = tmp_path / "reads" / str(attempt)
            try:
                manifest = reader.load(CHECKPOINT_NAME, out)
            except StorageError:
                retries += 1
                continue
            version = loaded_version(out, files)
            assert manifest.parts[0].sha256 == sha256_file(out / manifest.parts[0].path)
            seen.append(version)
        thread.join()
        assert not errors, errors
        assert seen == sorted(seen), "a reader went back to an older version"
        assert len(set(seen)) >= 2, "the reader never overlapped the writer; the test proved nothing"
        assert retries <= len(seen), f"{retries} retries for {len(seen)} loads: the reader is starved"

    def test_a_checkpoint_saved_by_another_process_loads_here(self, store: ObjectStore, tmp_path: Path) -> None:
        """Warm starts across machines: a worker process saves, this one loads and verifies."""
        src = write_checkpoint(tmp_path / "src", 7)
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(target=_save_in_another_process, args=(self.recipe(store), str(src), theirs))
        proc.start()
        assert ours.poll(60), "the child process did not answer"
        assert ours.recv() == "ok"
        proc.join(10)
        manifest = CheckpointStore(store).load(CHECKPOINT_NAME, tmp_path / "out")
        assert manifest.meta == {"by": "child"} and loaded_version(tmp_path / "out") == 7

    # --- memory and format ---------------------------------------------------------------------

    def test_save_and_load_stream_instead_of_holding_the_checkpoint(self, store: ObjectStore, tmp_path: Path) -> None:
        """Python-side peak allocation stays far below the checkpoint size (here 8 parts).

        A back end may buffer a bounded amount (s3transfer's download queue: 25 MiB at its default
        depth); give this test a store whose buffers are small, so that only a store that holds
        the checkpoint itself fails. ``benchmarks/checkpoint_io.py`` measures RSS at the defaults.
        """
        size = 8 * self.part_size
        src = write_random_file(tmp_path / "src" / "weights.bin", size, seed=3)
        checkpoints = CheckpointStore(store)
        checkpoints.objects.put_bytes("warm-up", b"")  # build the client outside the measurement
        tracemalloc.start()
        try:
            checkpoints.save(CHECKPOINT_NAME, src.parent)
            _, save_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            checkpoints.load(CHECKPOINT_NAME, tmp_path / "out")
            _, load_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert sha256_file(tmp_path / "out" / "weights.bin") == sha256_file(src)
        budget = size // 4
        assert save_peak < budget and load_peak < budget, (save_peak, load_peak, size)

    def test_manifest_is_plain_json_listing_every_part(self, store: ObjectStore, tmp_path: Path) -> None:
        """Operators read manifests with any tool: plain JSON with sizes and SHA-256 per part."""
        CheckpointStore(store).save(CHECKPOINT_NAME, write_checkpoint(tmp_path / "src", 1), meta={"step": 100})
        raw = json.loads(store.get_bytes(f"{CHECKPOINT_NAME}/{MANIFEST}"))
        assert set(raw) == {"name", "parts", "meta", "created_at"} and raw["meta"] == {"step": 100}
        expected = {k: (v, 64) for k, v in CHECKPOINT_FILES.items()}
        assert {p["path"]: (p["size"], len(p["sha256"])) for p in raw["parts"]} == expected
