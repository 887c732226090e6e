"""Study records survive the controller: journal, snapshot, compaction, concurrent readers.

Runs on both back ends; S3 is a real boto3 client against a moto server.
"""

from __future__ import annotations

import gzip
import re
import threading

import pytest
import storage_backends as sb

from pbt.storage import study_store
from pbt.storage.local import LocalObjectStore
from pbt.storage.study_store import StudyStore, list_studies
from pbt.trial import Trial, TrialStatus


@pytest.fixture(params=sb.KINDS)
def backend(request, tmp_path, monkeypatch) -> sb.Backend:
    return sb.open_backend(request.param, tmp_path, monkeypatch)


def trial(n: int, status: TrialStatus = TrialStatus.PENDING, **kw) -> Trial:
    return Trial(id=f"t{n:06d}", study="s1", number=n, params={"x": n}, steps=4, status=status, **kw)


def test_records_round_trip_and_last_write_wins(backend):
    store = StudyStore(backend.store, "s1")
    store.write_spec({"name": "s1"})
    store.append([trial(0), trial(1)])
    store.append([trial(0, TrialStatus.COMPLETED, objective=1.5, steps_done=4)])
    reader = StudyStore(backend.open(), "s1")
    trials = reader.load_trials()
    assert [t.id for t in trials] == ["t000000", "t000001"]
    assert trials[0].status is TrialStatus.COMPLETED and trials[0].objective == 1.5
    assert reader.read_spec() == {"name": "s1"}
    assert list_studies(backend.store) == ["s1"]


def test_a_resumed_writer_continues_the_journal(backend):
    first = StudyStore(backend.store, "s1")
    first.append([trial(0)])
    second = StudyStore(backend.open(), "s1")  # a restarted controller
    assert len(second.load_trials()) == 1
    second.append([trial(1)])
    assert [t.id for t in StudyStore(backend.store, "s1").load_trials()] == ["t000000", "t000001"]


def test_compaction_keeps_every_record_and_bounds_the_journal(backend, monkeypatch):
    monkeypatch.setattr(study_store, "_MIN_COMPACT", 10)
    store = StudyStore(backend.store, "s1")
    for n in range(60):
        store.append([trial(n)])
        if n % 3 == 0:
            store.append([trial(n, TrialStatus.COMPLETED, objective=float(n))])
    store.close()
    segments = [o.key for o in backend.store.list("s1/journal/")]
    assert len(segments) < 40  # compacted, not one segment per append
    loaded = StudyStore(backend.open(), "s1").load_trials()
    assert [t.number for t in loaded] == list(range(60))
    assert all((t.status is TrialStatus.COMPLETED) == (t.number % 3 == 0) for t in loaded)


def test_readers_during_compaction_always_see_a_consistent_study(backend, monkeypatch):
    monkeypatch.setattr(study_store, "_MIN_COMPACT", 5)
    writer = StudyStore(backend.store, "s1")
    done = threading.Event()
    errors: list[BaseException] = []

    def read_loop() -> None:
        reader = StudyStore(backend.open(), "s1")
        while not done.is_set():
            try:
                trials = reader.load_trials()
                assert [t.number for t in trials] == list(range(len(trials)))  # a prefix, no gaps
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for n in range(80):
            writer.append([trial(n)])
    finally:
        done.set()
        thread.join()
        writer.close()
    assert not errors, errors[0]


def test_invalid_study_names_never_become_keys(backend):
    from pbt.errors import InvalidNameError

    for bad in ("../x", "/abs", "a/b", "", ".."):
        with pytest.raises(InvalidNameError):
            StudyStore(backend.store, bad)


class CountingStore:
    """Wraps an object store and counts the requests and bytes a study store makes."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.gets = self.puts = self.lists = 0
        self.bytes_written = 0

    def get_bytes(self, key):
        self.gets += 1
        return self.inner.get_bytes(key)

    def put_bytes(self, key, data):
        self.puts += 1
        self.bytes_written += len(data)
        return self.inner.put_bytes(key, data)

    def list(self, prefix="", start_after=None):
        self.lists += 1
        return self.inner.list(prefix, start_after)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_long_study_costs_linear_writes_and_a_constant_number_of_reads_to_resume(tmp_path):
    from pbt.storage.local import LocalObjectStore

    objects = CountingStore(LocalObjectStore(tmp_path / "store"))
    store = StudyStore(objects, "big")
    n, batch = 30_000, 100
    for start in range(0, n, batch):  # each trial recorded twice: created, then completed
        store.append([trial(i) for i in range(start, start + batch)])
        store.append([trial(i, TrialStatus.COMPLETED, objective=1.0) for i in range(start, start + batch)])
    store.close()
    record = len(trial(0).model_dump_json())
    # Linear: every record is written once to the journal, plus snapshots whose total size is
    # bounded by a geometric series (a snapshot of N records only after N/2 new ones).
    assert objects.bytes_written < 2 * n * record * 6
    reader = CountingStore(LocalObjectStore(tmp_path / "store"))
    trials = StudyStore(reader, "big").load_trials()
    assert len(trials) == n and all(t.status is TrialStatus.COMPLETED for t in trials)
    segments = len(list(objects.inner.list("big/journal/")))
    assert reader.gets == 1 + segments  # the snapshot and the segments written since
    assert segments <= n // batch  # far fewer than one object per record


@pytest.mark.parametrize(("name", "content"), [
    ("spec.json", b"garbage"), ("spec.json", b"[1]"), ("state.json", b"[1,2"),
    ("snapshot.json.gz", b"\x1f\x8b\x08\x00truncated"), ("snapshot.json.gz", gzip.compress(b'{"trials": 5}')),
    ("snapshot.json.gz", gzip.compress(b'{"seq": 0, "trials": [{"id": "x"}]}')),
])
def test_records_changed_by_something_else_are_a_corrupt_records_error_naming_the_object(tmp_path, name, content):
    from pbt.errors import CorruptRecordsError

    objects = LocalObjectStore(tmp_path)
    store = StudyStore(objects, "s")
    store.write_spec({"name": "s"})
    store.write_doc("state", {"finished": False})
    objects.put_bytes(f"s/{name}", content)
    with pytest.raises(CorruptRecordsError, match=f"s/{re.escape(name)}.* cannot be read"):
        store.read_spec()
        store.read_doc("state")
        StudyStore(objects, "s").load_trials()
