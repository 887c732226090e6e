"""CheckpointStore behaviour, checked against every back end (``file://`` and moto ``s3://``).

What a worker relies on: a saved directory comes back byte for byte; a reader racing a writer
gets one whole version (or a StorageError that says "retry"), never a mixture and never a false
"corrupt"; real damage is reported as CorruptCheckpointError naming the part, and leaves the
destination untouched; transient S3 failures are retried by the real botocore client, and
surface as StorageError once its budget is spent; memory does not grow with checkpoint size.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import traceback
import tracemalloc
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import storage_backends as sb

from pbt.errors import CorruptCheckpointError, InvalidNameError, NotFoundError, StorageError
from pbt.storage.base import ObjectInfo, ObjectStore
from pbt.storage.checkpoints import MANIFEST, CheckpointStore, Manifest, sha256_file
from pbt.storage.s3 import S3ObjectStore, S3Settings

NAME = "study/trials/t0001/step-000100"
FILES = {"model.pt": 3000, "optim/state.bin": 1500, "nested/deeper/rng.json": 40, "empty": 0, "é.txt": 12}


@pytest.fixture(params=sb.KINDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sb.Backend:
    return sb.open_backend(request.param, tmp_path, monkeypatch)


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sb.Backend:
    return sb.open_backend("s3", tmp_path, monkeypatch)


@pytest.fixture
def inject() -> Iterator[Callable[..., sb.FaultInjector]]:
    with sb.injectors() as make:
        yield make


def write_checkpoint(directory: Path, version: int, files: dict[str, int] = FILES) -> Path:
    """A trainer's save(): every file encodes ``version``, so a mixed load is detectable."""
    for rel, size in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sb.versioned_payload(version, size))
    return directory


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def loaded_version(directory: Path, files: dict[str, int] = FILES) -> int:
    """The one version every file in ``directory`` holds; AssertionError on any mixture."""
    got = tree(directory)
    assert sorted(got) == sorted(files), f"files {sorted(got)} != {sorted(files)}"
    versions = {sb.payload_version(got[rel], size) for rel, size in files.items() if size >= 12}
    assert len(versions) == 1, f"mixed versions {versions}"
    return versions.pop()


def staging_leftovers(*dirs: Path) -> list[str]:
    return [p.name for d in dirs if d.exists() for p in d.iterdir() if p.name.startswith(".pbt-")]


# --- round trips ---------------------------------------------------------------------------------


def test_round_trip_of_a_nested_directory(backend: sb.Backend, tmp_path: Path) -> None:
    store = CheckpointStore(backend.store)
    src = write_checkpoint(tmp_path / "src", 1)
    saved = store.save(NAME, src, meta={"step": 100, "metrics": [{"loss": 0.5}]})
    assert store.exists(NAME) and store.list("study/") == [NAME]
    assert sorted(p.path for p in saved.parts) == sorted(FILES)
    assert {p.path: p.size for p in saved.parts} == FILES
    assert all(p.sha256 == sha256_file(src / p.path) for p in saved.parts)

    out = tmp_path / "work" / "restore"
    loaded = CheckpointStore(backend.open()).load(NAME, out)  # another worker's store
    assert tree(out) == tree(src)
    assert loaded.meta == {"step": 100, "metrics": [{"loss": 0.5}]} and loaded.size == sum(FILES.values())
    assert store.manifest(NAME).to_json() == saved.to_json() == loaded.to_json()
    assert staging_leftovers(out.parent) == []


def test_multipart_sized_checkpoint(backend: sb.Backend, tmp_path: Path, inject: Callable) -> None:
    files = {"weights.bin": 2 * sb.PART + 7, "small.json": 100}
    counter = inject(backend.store) if backend.kind == "s3" else None
    store = CheckpointStore(backend.store)
    store.save(NAME, write_checkpoint(tmp_path / "src", 3, files))
    store.load(NAME, tmp_path / "out")
    assert loaded_version(tmp_path / "out", files) == 3
    assert tree(tmp_path / "out") == tree(tmp_path / "src")
    if counter is not None:
        assert counter.sent["UploadPart"] == 3 and counter.ranged_gets == 3


def test_overwrite_swaps_the_whole_checkpoint_and_frees_the_old_parts(backend: sb.Backend, tmp_path: Path) -> None:
    store = CheckpointStore(backend.store)
    store.save(NAME, write_checkpoint(tmp_path / "v1", 1))
    v2_files = {"model.pt": 500, "new-file.bin": 64}
    v2 = store.save(NAME, write_checkpoint(tmp_path / "v2", 2, v2_files))
    store.load(NAME, tmp_path / "out")
    assert loaded_version(tmp_path / "out", v2_files) == 2
    part_keys = [o.key for o in backend.store.list(NAME + "/parts/")]
    assert sorted(part_keys) == sorted(p.key for p in v2.parts), "parts of the replaced version remain"


def test_list_and_delete(backend: sb.Backend, tmp_path: Path) -> None:
    store = CheckpointStore(backend.store)
    names = ["s/trials/t1/step-1", "s/trials/t1/step-2", "s/trials/t10/step-1", "s/trials/t1/step-1/sub"]
    for i, name in enumerate(names):
        store.save(name, write_checkpoint(tmp_path / f"c{i}", i))
    assert store.list("s/trials/t1/") == ["s/trials/t1/step-1", "s/trials/t1/step-1/sub", "s/trials/t1/step-2"]
    assert store.list("s/trials/t10/") == ["s/trials/t10/step-1"]

    manifest_size = backend.store.size("s/trials/t1/step-1/" + MANIFEST)
    freed = store.delete("s/trials/t1/step-1")
    assert freed == sum(FILES.values()) + manifest_size
    assert not store.exists("s/trials/t1/step-1")
    # A checkpoint nested under the deleted name is a different checkpoint: it survives.
    store.load("s/trials/t1/step-1/sub", tmp_path / "sub")
    assert loaded_version(tmp_path / "sub") == 3
    assert store.delete("s/trials/t1/step-1") == 0  # idempotent
    assert [o.key for o in backend.store.list("s/trials/t1/step-1/") if "/sub/" not in o.key] == []


def test_missing_checkpoint_is_not_found(backend: sb.Backend, tmp_path: Path) -> None:
    store = CheckpointStore(backend.store)
    with pytest.raises(NotFoundError, match="does not exist"):
        store.load("study/trials/none/step-1", tmp_path / "out")
    with pytest.raises(NotFoundError):
        store.manifest("study/trials/none/step-1")
    assert not store.exists("study/trials/none/step-1")
    assert not (tmp_path / "out").exists()


def test_bad_input_is_refused_before_anything_is_written(backend: sb.Backend, tmp_path: Path) -> None:
    store = CheckpointStore(backend.store)
    src = write_checkpoint(tmp_path / "src", 1)
    for bad in ("../escape", "/abs", "a//b", "a\\b", ""):
        with pytest.raises(InvalidNameError):
            store.save(bad, src)
        with pytest.raises(InvalidNameError):
            store.load(bad, tmp_path / "out")
    with pytest.raises(ValueError, match="holds no files"):
        (tmp_path / "empty").mkdir()
        store.save(NAME, tmp_path / "empty")
    with pytest.raises(TypeError):
        store.save(NAME, src, meta={"not json": object()})
    assert list(backend.store.list()) == []


# --- corruption ----------------------------------------------------------------------------------


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
    part = next(p for p in manifest.parts if p.path == "model.pt")
    manifest_key = f"{NAME}/{MANIFEST}"
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
        objects.put_bytes(manifest_key, manifest.to_json().replace(f"{NAME}/parts/".encode(), b"other/parts/"))
        return "points outside"
    assert damage == "part path escaping the directory"
    objects.put_bytes(manifest_key, manifest.to_json().replace(b'"path": "model.pt"', b'"path": "../../x"'))
    return "unsafe path"


@pytest.mark.parametrize("damage", DAMAGE)
def test_damage_is_reported_and_leaves_the_destination_untouched(
    backend: sb.Backend, tmp_path: Path, damage: str
) -> None:
    store = CheckpointStore(backend.store)
    manifest = store.save(NAME, write_checkpoint(tmp_path / "src", 1))
    expected = do_damage(backend.store, manifest, damage)
    out = tmp_path / "work" / "restore"
    out.mkdir(parents=True)
    (out / "previous.txt").write_text("the trainer's own file")
    with pytest.raises(CorruptCheckpointError) as info:
        store.load(NAME, out)
    assert (expected in str(info.value) and backend.store.url(NAME) in str(info.value)) or NAME in str(info.value)
    assert expected in str(info.value)
    assert tree(out) == {"previous.txt": b"the trainer's own file"}, "a failed load changed the destination"
    assert staging_leftovers(out.parent) == []
    assert not (tmp_path / "x").exists() and not (tmp_path / "work" / "x").exists()
    # A new save over the damage repairs the checkpoint (a bad old manifest does not block it).
    store.save(NAME, write_checkpoint(tmp_path / "fixed", 2))
    store.load(NAME, tmp_path / "again")
    assert loaded_version(tmp_path / "again") == 2


# --- readers racing writers ----------------------------------------------------------------------


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


def test_a_version_replaced_mid_load_is_reloaded_not_reported_corrupt(backend: sb.Backend, tmp_path: Path) -> None:
    writer = CheckpointStore(backend.store)
    writer.save(NAME, write_checkpoint(tmp_path / "v1", 1))
    replaced: list[int] = []

    def replace_once(_key: str) -> None:
        if not replaced:  # the reader holds v1's manifest; v2 commits and v1's parts are deleted
            replaced.append(2)
            writer.save(NAME, write_checkpoint(tmp_path / "v2", 2))

    manifest = CheckpointStore(RacingStore(backend.open(), replace_once)).load(NAME, tmp_path / "out")
    assert replaced and loaded_version(tmp_path / "out") == 2
    assert manifest.to_json() == writer.manifest(NAME).to_json()


def test_a_checkpoint_that_keeps_changing_asks_the_reader_to_retry(backend: sb.Backend, tmp_path: Path) -> None:
    writer = CheckpointStore(backend.store)
    writer.save(NAME, write_checkpoint(tmp_path / "v0", 0))
    versions = iter(range(1, 100))

    def replace_every_time(_key: str) -> None:
        version = next(versions)
        writer.save(NAME, write_checkpoint(tmp_path / f"v{version}", version))

    out = tmp_path / "out"
    with pytest.raises(StorageError, match=r"replaced \d+ times while loading; try again"):
        CheckpointStore(RacingStore(backend.open(), replace_every_time)).load(NAME, out)
    assert not any(out.iterdir()) and staging_leftovers(tmp_path) == []


def test_a_checkpoint_deleted_mid_load_is_not_found(backend: sb.Backend, tmp_path: Path) -> None:
    writer = CheckpointStore(backend.store)
    writer.save(NAME, write_checkpoint(tmp_path / "v1", 1))
    reader = CheckpointStore(RacingStore(backend.open(), lambda _key: writer.delete(NAME)))
    with pytest.raises(NotFoundError, match="deleted while it was being loaded"):
        reader.load(NAME, tmp_path / "out")


def test_concurrent_reader_and_writer_never_mix_versions(backend: sb.Backend, tmp_path: Path) -> None:
    """A writer overwrites one checkpoint in a loop while a reader loads it in another thread:
    every load is one complete, verified version, newer or equal to the one before, or a
    StorageError asking to retry; never CorruptCheckpointError, NotFoundError or a mixture."""
    files = {"model.pt": 40_000, "optim/adam.bin": 20_000, "nested/deeper/rng.json": 100}
    writer = CheckpointStore(backend.store)
    writer.save(NAME, write_checkpoint(tmp_path / "v0", 0, files))
    saves, done, errors = 25, threading.Event(), []

    def write_loop() -> None:
        try:
            for version in range(1, saves + 1):
                writer.save(NAME, write_checkpoint(tmp_path / f"v{version}", version, files))
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    reader = CheckpointStore(backend.open())
    seen, retries, attempt = [], 0, 0
    thread = threading.Thread(target=write_loop)
    thread.start()
    while not done.is_set() or not seen:
        attempt += 1
        out = tmp_path / "reads" / str(attempt)
        try:
            manifest = reader.load(NAME, out)
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


def _save_in_another_process(uri: str, settings: S3Settings | None, src: str, conn: Any) -> None:
    try:
        from pbt.storage import open_object_store

        objects = S3ObjectStore(uri, settings) if settings else open_object_store(uri)
        CheckpointStore(objects).save(NAME, Path(src), meta={"by": "child"})
        conn.send("ok")
    except BaseException:
        conn.send(traceback.format_exc())


def test_a_checkpoint_saved_by_another_process_loads_here(backend: sb.Backend, tmp_path: Path) -> None:
    """Warm starts across machines: a worker process saves, this one loads and verifies."""
    src = write_checkpoint(tmp_path / "src", 7)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=_save_in_another_process, args=(backend.uri, backend.settings, str(src), theirs))
    proc.start()
    assert ours.poll(60), "the child process did not answer"
    assert ours.recv() == "ok"
    proc.join(10)
    manifest = CheckpointStore(backend.store).load(NAME, tmp_path / "out")
    assert manifest.meta == {"by": "child"} and loaded_version(tmp_path / "out") == 7


# --- S3 faults: retried by botocore, surfaced after the budget ---------------------------------


@pytest.mark.parametrize("fault", list(sb.FAULTS))
def test_transient_s3_errors_are_retried_until_they_stop(
    s3: sb.Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inject: Callable, fault: str
) -> None:
    """Every request fails twice, then succeeds (max_attempts=3): every operation still works."""
    sb.fast_backoff(monkeypatch)
    files = {"weights.bin": 2 * sb.PART + 3, **FILES}
    faults = inject(s3.store, sb.FAULTS[fault], fail_run=2)
    store = CheckpointStore(s3.store)
    store.save(NAME, write_checkpoint(tmp_path / "v1", 1, files))
    store.save(NAME, write_checkpoint(tmp_path / "v2", 2, files))  # also deletes v1's parts
    assert store.exists(NAME) and store.list("study/") == [NAME]
    store.load(NAME, tmp_path / "out")
    assert loaded_version(tmp_path / "out", files) == 2
    assert store.delete(NAME) > 0 and not store.exists(NAME)
    for op in ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload", "GetObject",
               "HeadObject", "ListObjectsV2", "DeleteObjects"):
        assert faults.failed[op] == 2 * (faults.sent[op] - faults.failed[op]) > 0, op


def test_a_stream_cut_mid_body_is_read_again(s3: sb.Backend, tmp_path: Path, inject: Callable) -> None:
    """Headers arrive, then the connection dies mid-body: botocore does not retry that itself;
    get_bytes (the manifest) and s3transfer (the parts) must."""
    files = {"weights.bin": 2 * sb.PART + 3, "small": 100}
    store = CheckpointStore(s3.store)
    store.save(NAME, write_checkpoint(tmp_path / "src", 4, files))
    faults = inject(s3.store, sb.body_cut, fail_run=2, operations=frozenset({"GetObject"}))
    store.load(NAME, tmp_path / "out")
    assert loaded_version(tmp_path / "out", files) == 4
    assert faults.failed["GetObject"] >= 2 * 5  # manifest + 1 small part + 3 ranges, twice each


@pytest.mark.parametrize("fault", ["503 SlowDown", "connection reset"])
def test_transient_s3_errors_surface_as_storage_errors_after_the_budget(
    s3: sb.Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inject: Callable, fault: str
) -> None:
    sb.fast_backoff(monkeypatch)
    store = CheckpointStore(s3.store)
    store.save(NAME, write_checkpoint(tmp_path / "v1", 1))
    faults = inject(s3.store, sb.FAULTS[fault], fail_run=None)
    for call in (
        lambda: store.save(NAME, write_checkpoint(tmp_path / "v2", 2)),
        lambda: store.load(NAME, tmp_path / "out"),
        lambda: store.exists(NAME),
        lambda: store.list("study/"),
        lambda: store.delete(NAME),
    ):
        with pytest.raises(StorageError) as info:
            call()
        assert not isinstance(info.value, CorruptCheckpointError)
        assert s3.uri in str(info.value)
        assert sb.SECRET not in "".join(traceback.format_exception(info.value))
    # save (for the old version) and load each read the manifest: three attempts apiece, no more.
    assert faults.sent["GetObject"] == 2 * 3
    faults.remove()
    # Once the faults stop, the untouched v1 is still there and whole.
    store.load(NAME, tmp_path / "after")
    assert loaded_version(tmp_path / "after") == 1


# --- memory --------------------------------------------------------------------------------------


def test_save_and_load_stream_instead_of_holding_the_checkpoint(backend: sb.Backend, tmp_path: Path) -> None:
    """Python-side peak allocation stays far below the checkpoint size (here 8 parts of 5 MiB).

    On S3 the only buffer that scales with anything is s3transfer's download queue (chunks
    waiting for the disk, 25 MiB at its default depth): a short queue here shows that nothing
    else holds the checkpoint. ``benchmarks/checkpoint_io.py`` measures RSS at the defaults.
    """
    size = 8 * sb.PART
    src = sb.write_random_file(tmp_path / "src" / "weights.bin", size, seed=3)
    objects = backend.open(max_io_queue=8) if backend.kind == "s3" else backend.store
    store = CheckpointStore(objects)
    store.objects.put_bytes("warm-up", b"")  # build the client outside the measurement
    tracemalloc.start()
    try:
        store.save(NAME, src.parent)
        _, save_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        store.load(NAME, tmp_path / "out")
        _, load_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sha256_file(tmp_path / "out" / "weights.bin") == sha256_file(src)
    budget = size // 4
    assert save_peak < budget and load_peak < budget, (save_peak, load_peak, size)


def test_manifest_is_plain_json_listing_every_part(backend: sb.Backend, tmp_path: Path) -> None:
    """Operators read manifests with any tool: plain JSON with sizes and SHA-256 per part."""
    CheckpointStore(backend.store).save(NAME, write_checkpoint(tmp_path / "src", 1), meta={"step": 100})
    raw = json.loads(backend.store.get_bytes(f"{NAME}/{MANIFEST}"))
    assert set(raw) == {"name", "parts", "meta", "created_at"} and raw["meta"] == {"step": 100}
    assert {p["path"]: (p["size"], len(p["sha256"])) for p in raw["parts"]} == {k: (v, 64) for k, v in FILES.items()}
