"""Durable study records: the spec and every trial, in the same object store as checkpoints.

Redis may keep nothing on disk and the controller may die at any moment, so the study's truth
lives here. Records are written as a journal: each controller tick appends one segment
(``journal/<seq>.json``) holding the trials that changed, and every so often the whole state is
compacted into ``snapshot.json.gz`` and the segments it covers are deleted. That keeps a tick's
write cost proportional to what changed (not to the study's size), a resume to one snapshot read
plus a few segments, and the total cost of a study linear in its length: a snapshot of N trials
is only written after at least N/2 records were journalled since the last one.

One writer per study (the controller holding the study's lease); any number of readers
(``pbt status``, reports). Replaying a record is idempotent (records are upserts by trial id).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import ValidationError

from pbt.errors import CorruptRecordsError, NotFoundError, StorageError, StudyNotFoundError
from pbt.names import validate_name
from pbt.storage import open_object_store
from pbt.storage.base import ObjectStore
from pbt.storage.keys import join
from pbt.trial import Trial

_SNAPSHOT = "snapshot.json.gz"
_MIN_COMPACT = 1000
_READ_RETRIES = 5


class StudyStore:
    def __init__(self, objects: ObjectStore, study: str) -> None:
        self.objects = objects
        self.study = validate_name(study, "study name")
        self._records: dict[str, str] = {}  # trial id -> its latest record, as JSON text
        self._seq = 0  # last journal segment written or read
        self._since_snapshot = 0
        self._deleter: ThreadPoolExecutor | None = None

    def key(self, *parts: str) -> str:
        return join(self.study, *parts)

    # The spec and small control documents -------------------------------------------------

    def exists(self) -> bool:
        return self.objects.exists(self.key("spec.json"))

    def write_spec(self, spec: dict[str, Any]) -> None:
        self.objects.put_bytes(self.key("spec.json"), json.dumps(spec, indent=2, sort_keys=True).encode())

    def read_spec(self) -> dict[str, Any]:
        try:
            raw = self.objects.get_bytes(self.key("spec.json"))
        except NotFoundError:
            raise StudyNotFoundError(f"no study {self.study!r} in {self.objects.uri}") from None
        return self._mapping("spec.json", raw)

    def write_doc(self, name: str, doc: dict[str, Any]) -> None:
        self.objects.put_bytes(self.key(name + ".json"), json.dumps(doc, sort_keys=True).encode())

    def read_doc(self, name: str) -> dict[str, Any] | None:
        try:
            raw = self.objects.get_bytes(self.key(name + ".json"))
        except NotFoundError:
            return None
        return self._mapping(name + ".json", raw)

    def _mapping(self, name: str, raw: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(raw)
        except ValueError as exc:  # not JSON, not UTF-8
            raise self._corrupt(name, exc) from None
        if not isinstance(doc, dict):
            raise self._corrupt(name, f"a JSON {type(doc).__name__}, not an object")
        return doc

    def _corrupt(self, name: str, cause: Any) -> CorruptRecordsError:
        why = f"{type(cause).__name__}: {cause}" if isinstance(cause, BaseException) else cause
        return CorruptRecordsError(
            f"study {self.study}: {self.objects.uri.rstrip('/')}/{self.key(name)} cannot be read ({str(why)[:200]}); "
            "it was changed by something other than pbt: restore it from a backup, or delete the study with "
            f"`pbt clear {self.study} --storage ... --force`"
        )

    # Trial records --------------------------------------------------------------------------

    def load_trials(self) -> list[Trial]:
        """Every trial, in creation order. Also primes this instance to append after them.

        Raises CorruptRecordsError when a stored record is not a valid trial."""
        try:
            return self._load_trials()
        except ValidationError as exc:
            why = f"a trial record is invalid: {exc.errors()[0].get('msg')}"
            raise self._corrupt(f"{_SNAPSHOT} or journal/", why) from None

    def _load_trials(self) -> list[Trial]:
        """Every trial, in creation order. Also primes this instance to append after them."""
        for _ in range(_READ_RETRIES):
            try:
                records, seq, since = self._read_all()
            except _Raced:
                continue  # a compaction deleted segments under us: read the newer snapshot
            self._seq, self._since_snapshot = seq, since
            self._records = {k: json.dumps(r, separators=(",", ":")) for k, r in records.items()}
            return sorted((Trial.model_validate(r) for r in records.values()), key=lambda t: t.number)
        raise StorageError(f"study {self.study}: journal kept changing while reading; try again")

    def _read_all(self) -> tuple[dict[str, dict[str, Any]], int, int]:
        records: dict[str, dict[str, Any]] = {}
        seq = 0
        try:
            raw = self.objects.get_bytes(self.key(_SNAPSHOT))
        except NotFoundError:
            raw = None
        if raw is not None:
            try:
                snapshot = json.loads(gzip.decompress(raw))
                seq = int(snapshot["seq"])
                records = {r["id"]: r for r in snapshot["trials"]}
            except (ValueError, EOFError, OSError, LookupError, TypeError) as exc:  # truncated, not gzip/JSON
                raise self._corrupt(_SNAPSHOT, exc) from None
        prefix = self.key("journal") + "/"
        since = 0
        for info in self.objects.list(prefix, start_after=prefix + _segment_name(seq)):
            number = int(info.key.rsplit("/", 1)[1].split(".")[0])
            if number != seq + 1:
                raise _Raced()
            try:
                raw = self.objects.get_bytes(info.key)
            except NotFoundError:
                raise _Raced() from None
            try:
                for record in json.loads(raw)["records"]:
                    records[record["id"]] = record
                    since += 1
            except (ValueError, LookupError, TypeError) as exc:
                raise self._corrupt(info.key.rsplit("/", 2)[-2] + "/" + info.key.rsplit("/", 1)[1], exc) from None
            seq = number
        return records, seq, since

    def append(self, trials: Iterable[Trial]) -> None:
        """Durably record these trials (one write); compact when the journal has grown enough."""
        # Each record serialised once, by pydantic (the same JSON as json.dumps of model_dump),
        # and kept as text: a snapshot joins them instead of serialising every trial again.
        batch = [(t.id, t.model_dump_json()) for t in trials]
        if not batch:
            return
        self._seq += 1
        body = f'{{"seq":{self._seq},"records":[{",".join(text for _, text in batch)}]}}'.encode()
        self.objects.put_bytes(self.key("journal", _segment_name(self._seq)), body)
        for trial_id, text in batch:
            self._records[trial_id] = text
        self._since_snapshot += len(batch)
        if self._since_snapshot >= max(_MIN_COMPACT, len(self._records) // 2):
            self.compact()

    def compact(self) -> None:
        """Write a snapshot of everything up to the last segment, then drop those segments."""
        snapshot = f'{{"seq":{self._seq},"trials":[{",".join(self._records.values())}]}}'
        data = gzip.compress(snapshot.encode(), compresslevel=3)
        self.objects.put_bytes(self.key(_SNAPSHOT), data)
        self._since_snapshot = 0
        # Deleting the covered segments is I/O the writer need not wait for; readers that race
        # it simply re-read the newer snapshot.
        if self._deleter is None:
            self._deleter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pbt-journal")
        self._deleter.submit(self._delete_segments_upto, self._seq)

    def _delete_segments_upto(self, seq: int) -> None:
        prefix = self.key("journal") + "/"
        self.objects.delete([o.key for o in self.objects.list(prefix) if o.key <= prefix + _segment_name(seq)])

    def close(self) -> None:
        """Wait for background deletes; call before the process exits."""
        if self._deleter is not None:
            self._deleter.shutdown(wait=True)
            self._deleter = None


class _Raced(Exception):
    pass


def _segment_name(seq: int) -> str:
    return f"{seq:012d}.json"


def open_study_store(storage: str, study: str) -> StudyStore:
    """The store of an existing study in ``storage`` (a path, ``file://`` or ``s3://`` URI).

    Raises StudyNotFoundError naming the study and the storage when there is none. Readers
    want :func:`pbt.analysis.study.open_study`, which also reads what the store holds.
    """
    store = StudyStore(open_object_store(storage), study)
    store.read_spec()
    return store


def list_studies(objects: ObjectStore) -> list[str]:
    """Names of the studies stored under this root."""
    return sorted(
        o.key.split("/", 1)[0] for o in objects.list("") if o.key.count("/") == 1 and o.key.endswith("/spec.json")
    )
