"""CheckpointStore behaviour, checked against every back end (``file://`` and moto ``s3://``).

The back-end-independent suite is :class:`pbt.testing.CheckpointContract` (round trips, readers
racing writers, damage, memory); here it runs over both back ends, S3's class adds its request
counts, and the S3 fault tests follow: transient S3 failures are retried by the real botocore
client, and surface as StorageError once its budget is spent.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import storage_backends as sb

from pbt.errors import CorruptCheckpointError, StorageError
from pbt.storage.base import ObjectStore
from pbt.storage.checkpoints import CheckpointStore
from pbt.testing import CheckpointContract
from pbt.testing.storage import CHECKPOINT_FILES as FILES
from pbt.testing.storage import CHECKPOINT_NAME as NAME
from pbt.testing.storage import OpenStore, loaded_version, write_checkpoint


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sb.Backend:
    return sb.open_backend("s3", tmp_path, monkeypatch)


@pytest.fixture
def inject() -> Iterator[Callable[..., sb.FaultInjector]]:
    with sb.injectors() as make:
        yield make


class TestLocalCheckpoints(CheckpointContract):
    @pytest.fixture
    def open_store(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> OpenStore:
        return sb.open_backend("file", tmp_path, monkeypatch).open


class TestS3Checkpoints(sb.S3Backed, CheckpointContract):

    def test_multipart_sized_checkpoint(self, store: ObjectStore, tmp_path: Path, inject: Callable) -> None:
        counter = inject(store)
        super().test_multipart_sized_checkpoint(store, tmp_path)
        assert counter.sent["UploadPart"] == 3 and counter.ranged_gets == 3

    def test_save_and_load_stream_instead_of_holding_the_checkpoint(self, backend: sb.Backend, tmp_path: Path) -> None:
        """On S3 the only buffer that scales with anything is s3transfer's download queue (chunks
        waiting for the disk): a short queue here shows that nothing else holds the checkpoint."""
        super().test_save_and_load_stream_instead_of_holding_the_checkpoint(backend.open(max_io_queue=8), tmp_path)


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
