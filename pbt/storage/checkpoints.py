"""Atomic, checksummed checkpoints on any :class:`~pbt.storage.base.ObjectStore`.

A checkpoint is a directory of files written by a trainer. Saving uploads each file under a
fresh, never-reused folder (``<name>/parts/<nonce>/...``), then writes ``<name>/MANIFEST.json``
listing every part with its size and SHA-256. The manifest is the commit point: until it
exists the checkpoint does not, and overwriting it swaps the whole checkpoint at once, so a
reader sees the old version or the new one, never a mixture. Loading verifies every part and
raises :class:`~pbt.errors.CorruptCheckpointError` on any mismatch; callers fall back along
the lineage instead of silently training from scratch.

Files are hashed and moved in chunks: memory use does not depend on checkpoint size.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pbt.errors import CorruptCheckpointError, NotFoundError
from pbt.storage.base import ObjectStore
from pbt.storage.keys import join, validate_key

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


@dataclass
class Part:
    path: str  # relative path inside the checkpoint directory
    key: str  # object key
    size: int
    sha256: str


@dataclass
class Manifest:
    name: str
    parts: list[Part]
    meta: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    @property
    def size(self) -> int:
        return sum(p.size for p in self.parts)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, name: str, data: bytes) -> Manifest:
        try:
            raw = json.loads(data)
            parts = [Part(**p) for p in raw["parts"]]
            return cls(name=name, parts=parts, meta=raw.get("meta", {}), created_at=raw.get("created_at", 0.0))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(f"checkpoint {name}: unreadable manifest ({exc})") from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointStore:
    """Named checkpoints (``name`` is a '/'-separated key prefix) in an object store."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def save(self, name: str, directory: Path, meta: dict[str, Any] | None = None) -> Manifest:
        validate_key(name)
        directory = Path(directory)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"checkpoint {name}: {directory} holds no files; the trainer's save() wrote nothing")
        old = self._read_manifest(name, missing_ok=True)
        nonce = uuid.uuid4().hex[:12]
        parts = []
        for path in files:
            rel = path.relative_to(directory).as_posix()
            key = join(name, "parts", nonce, rel)
            parts.append(Part(path=rel, key=key, size=path.stat().st_size, sha256=sha256_file(path)))
            self.objects.put_file(key, path)
        manifest = Manifest(name=name, parts=parts, meta=dict(meta or {}), created_at=time.time())
        self.objects.put_bytes(join(name, MANIFEST), manifest.to_json())  # the commit point
        if old is not None:
            self.objects.delete(p.key for p in old.parts)
        return manifest

    def _read_manifest(self, name: str, missing_ok: bool = False) -> Manifest | None:
        try:
            data = self.objects.get_bytes(join(name, MANIFEST))
        except NotFoundError:
            if missing_ok:
                return None
            raise NotFoundError(f"checkpoint {self.objects.url(name)} does not exist") from None
        return Manifest.from_json(name, data)

    def manifest(self, name: str) -> Manifest:
        manifest = self._read_manifest(name)
        assert manifest is not None
        return manifest

    def exists(self, name: str) -> bool:
        return self.objects.exists(join(name, MANIFEST))

    def load(self, name: str, directory: Path) -> Manifest:
        """Download and verify ``name`` into ``directory`` (created if needed)."""
        manifest = self.manifest(name)
        directory = Path(directory)
        for part in manifest.parts:
            dest = directory / validate_key(part.path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.objects.get_file(part.key, dest)
            except NotFoundError:
                raise CorruptCheckpointError(
                    f"checkpoint {self.objects.url(name)}: part {part.path} is missing"
                ) from None
            size = dest.stat().st_size
            if size != part.size or sha256_file(dest) != part.sha256:
                raise CorruptCheckpointError(
                    f"checkpoint {self.objects.url(name)}: part {part.path} fails verification "
                    f"(size {size}, expected {part.size}; or SHA-256 mismatch)"
                )
        return manifest

    def list(self, prefix: str) -> list[str]:
        """Names of the committed checkpoints under ``prefix``, in key order."""
        suffix = "/" + MANIFEST
        return [o.key[: -len(suffix)] for o in self.objects.list(prefix) if o.key.endswith(suffix)]

    def delete(self, name: str) -> int:
        """Remove a checkpoint (manifest first, so it vanishes atomically); returns bytes freed."""
        manifest = self._read_manifest(name, missing_ok=True)
        self.objects.delete([join(name, MANIFEST)])
        objects = list(self.objects.list(name.rstrip("/") + "/"))
        self.objects.delete(o.key for o in objects)
        freed = sum(o.size for o in objects)
        return freed + (len(manifest.to_json()) if manifest else 0)
