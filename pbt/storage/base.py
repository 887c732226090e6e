"""The contract every storage back end implements: a flat store of objects under a prefix.

Checkpoints (:mod:`pbt.storage.checkpoints`) and study records (:mod:`pbt.storage.study_store`)
are written on top of this one small interface, so their atomicity, checksums and garbage
collection are implemented once and behave the same on local disk and on S3. A back end only
has to move bytes.

Contract (checked by :class:`pbt.testing.ObjectStoreContract`, which ``tests/test_object_store.py``
runs against every back end):

* Keys are relative, '/'-separated, validated by :func:`pbt.storage.keys.validate_key`.
* ``put_*`` is atomic per object: a concurrent reader sees the old object, or none, never a
  partial one. Overwriting an existing key is allowed.
* ``put_file``/``get_file`` stream: memory use does not grow with the object's size.
* ``list`` yields objects in lexicographic key order, and supports ``start_after`` so a reader
  can resume a listing without re-reading what it has seen.
* A missing object raises :class:`pbt.errors.NotFoundError`; a transient failure that survived
  the back end's own retries raises :class:`pbt.errors.StorageError`.
* Instances are safe to use from several threads; each process builds its own (they are cheap
  to construct and never shared across ``fork``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int


class ObjectStore(ABC):
    """Bytes under keys. ``uri`` is the root (``file:///abs/dir`` or ``s3://bucket/prefix``)."""

    uri: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None: ...

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download to ``path`` (its parent exists); the file appears whole or not at all."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, in key order, after ``start_after``."""

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> None:
        """Delete keys; missing keys are ignored (deletes are idempotent)."""

    def url(self, key: str) -> str:
        """A human-readable address of ``key``, for messages and reports."""
        return f"{self.uri.rstrip('/')}/{key}"
