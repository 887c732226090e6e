"""Atomic, checksummed checkpoints on any :class:`~pbt.storage.base.ObjectStore`.

A checkpoint is a directory of files written by a trainer. Saving uploads each file under a
fresh, never-reused folder (``<name>/parts/<nonce>/...``), then writes ``<name>/MANIFEST.json``
listing every part with its size and SHA-256. The manifest is the commit point: until it
exists the checkpoint does not, and overwriting it swaps the whole checkpoint at once, so a
reader sees the old version or the new one, never a mixture. Loading verifies every part and
raises :class:`~pbt.errors.CorruptCheckpointError` on any mismatch; callers fall back along
the lineage instead of silently training from scratch.

A reader racing a writer is not corruption: the writer deletes the parts of the version it
replaced, so a reader still fetching that version finds a part gone. ``load`` tells the two
apart by re-reading the manifest: if it changed, the load starts again on the new version (and
after a few such restarts raises :class:`~pbt.errors.StorageError`, which says "retry"); only
a part missing from the *current* manifest is corruption. Otherwise a busy checkpoint would
send workers back along the lineage for nothing.

Files are hashed and moved in chunks: memory use does not depend on checkpoint size.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from pbt.errors import CorruptCheckpointError, NotFoundError, PbtError, StorageError
from pbt.storage.base import ObjectStore
from pbt.storage.keys import join, validate_key

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# How many times a load starts over because a writer replaced the checkpoint under it. Each
# restart means a whole save finished during our load, so a handful is already unusual.
_LOAD_RESTARTS = 4


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
        """Parse and check a manifest; anything that could misdirect a load is corruption.

        Part keys must lie under ``<name>/parts/`` and part paths must be safe relative paths, so
        a damaged (or hostile) manifest can neither read another checkpoint's objects nor write
        outside the directory being loaded.
        """
        try:
            raw = json.loads(data)
            parts = [Part(**p) for p in raw["parts"]]
            meta = raw.get("meta", {})
            created_at = float(raw.get("created_at", 0.0))
            if not isinstance(meta, dict) or not isinstance(raw["parts"], list):
                raise TypeError("'meta' must be an object and 'parts' a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(f"checkpoint {name}: unreadable manifest ({exc})") from exc
        own = f"{name}/parts/"
        for part in parts:
            problem = _part_problem(part, own)
            if problem:
                raise CorruptCheckpointError(f"checkpoint {name}: manifest entry {part.path!r} {problem}")
        return cls(name=name, parts=parts, meta=meta, created_at=created_at)


def _part_problem(part: Part, own: str) -> str | None:
    if not isinstance(part.path, str) or not isinstance(part.key, str):
        return "has a non-string path or key"
    try:
        validate_key(part.path)
        validate_key(part.key)
    except PbtError:
        return "has an unsafe path or key"
    if not part.key.startswith(own):
        return f"points outside {own}"
    if not isinstance(part.size, int) or isinstance(part.size, bool) or part.size < 0:
        return "has an invalid size"
    if not isinstance(part.sha256, str) or not _SHA256.fullmatch(part.sha256):
        return "has an invalid SHA-256"
    return None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _move(src: Path, dest: Path) -> None:
    """Rename into place; copy only if ``dest`` is on another file system (a mount point)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(src, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(src, dest)


class _PartVanished(Exception):
    """A part listed by the manifest we hold is gone: corruption, or a writer replaced it."""

    def __init__(self, part: Part) -> None:
        super().__init__(part.path)
        self.part = part


class CheckpointStore:
    """Named checkpoints (``name`` is a '/'-separated key prefix) in an object store."""

    def __init__(self, objects: ObjectStore) -> None:
        self.objects = objects

    def save(self, name: str, directory: Path, meta: dict[str, Any] | None = None) -> Manifest:
        """Upload every file under ``directory`` as checkpoint ``name``, replacing any old version.

        Two writers saving one name at the same time leave one complete version (the last to
        commit) and, at worst, the other's parts orphaned until :meth:`delete`; never a mix.
        """
        validate_key(name)
        directory = Path(directory)
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        if not files:
            raise ValueError(f"checkpoint {name}: {directory} holds no files; trainer.save() wrote nothing")
        meta = dict(meta or {})
        json.dumps(meta)  # fail on unserialisable metadata before uploading gigabytes
        try:
            old = self._read_manifest(name, missing_ok=True)
        except CorruptCheckpointError:
            old = None  # a damaged manifest must not block writing a good one; delete() sweeps its parts
        nonce = uuid.uuid4().hex[:12]
        parts = []
        for path in files:
            rel = path.relative_to(directory).as_posix()
            key = join(name, "parts", nonce, rel)
            parts.append(Part(path=rel, key=key, size=path.stat().st_size, sha256=sha256_file(path)))
            self.objects.put_file(key, path)
        manifest = Manifest(name=name, parts=parts, meta=meta, created_at=time.time())
        self.objects.put_bytes(join(name, MANIFEST), manifest.to_json())  # the commit point
        if old is not None:
            self.objects.delete(p.key for p in old.parts)
        return manifest

    def _manifest_bytes(self, name: str) -> bytes:
        try:
            return self.objects.get_bytes(join(name, MANIFEST))
        except NotFoundError:
            raise NotFoundError(f"checkpoint {self.objects.url(name)} does not exist") from None

    def _read_manifest(self, name: str, missing_ok: bool = False) -> Manifest | None:
        try:
            data = self._manifest_bytes(name)
        except NotFoundError:
            if missing_ok:
                return None
            raise
        return Manifest.from_json(name, data)

    def manifest(self, name: str) -> Manifest:
        return Manifest.from_json(name, self._manifest_bytes(validate_key(name)))

    def exists(self, name: str) -> bool:
        return self.objects.exists(join(name, MANIFEST))

    def load(self, name: str, directory: Path) -> Manifest:
        """Download and verify ``name`` into ``directory`` (created if needed).

        Parts land in a hidden staging folder beside ``directory`` and are verified there; only
        a checkpoint whose every part verified is moved in, so a failed load leaves
        ``directory`` as it was. Files already in ``directory`` that the checkpoint does not
        name are left alone: load into an empty directory to get exactly the checkpoint.
        """
        validate_key(name)
        directory = Path(directory)
        raw = self._manifest_bytes(name)  # before creating anything: a missing checkpoint leaves no trace
        directory.mkdir(parents=True, exist_ok=True)
        for _ in range(_LOAD_RESTARTS + 1):
            manifest = Manifest.from_json(name, raw)
            staging = Path(tempfile.mkdtemp(prefix=".pbt-load-", dir=directory.parent))
            try:
                self._fetch(manifest, staging)
                for part in manifest.parts:
                    _move(staging / part.path, directory / part.path)
                return manifest
            except _PartVanished as gone:
                missing = gone.part
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            try:
                now = self._manifest_bytes(name)
            except NotFoundError:
                raise NotFoundError(
                    f"checkpoint {self.objects.url(name)} was deleted while it was being loaded"
                ) from None
            if now == raw:
                where = self.objects.url(name)
                raise CorruptCheckpointError(f"checkpoint {where}: part {missing.path} is missing")
            raw = now  # a writer committed a new version and removed the one we were reading
        raise StorageError(
            f"checkpoint {self.objects.url(name)} was replaced {_LOAD_RESTARTS + 1} times while loading; "
            "try again when its writer pauses"
        )

    def _fetch(self, manifest: Manifest, staging: Path) -> None:
        where = self.objects.url(manifest.name)
        for part in manifest.parts:
            dest = staging / part.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.objects.get_file(part.key, dest)
            except NotFoundError:
                raise _PartVanished(part) from None
            size = dest.stat().st_size
            if size != part.size:
                raise CorruptCheckpointError(
                    f"checkpoint {where}: part {part.path} is {size} bytes, the manifest says {part.size} "
                    "(truncated or overwritten)"
                )
            if sha256_file(dest) != part.sha256:
                raise CorruptCheckpointError(f"checkpoint {where}: part {part.path} fails its SHA-256 check")

    def list(self, prefix: str) -> list[str]:
        """Names of the committed checkpoints under ``prefix``, in key order."""
        suffix = "/" + MANIFEST
        return [o.key[: -len(suffix)] for o in self.objects.list(prefix) if o.key.endswith(suffix)]

    def delete(self, name: str) -> int:
        """Remove a checkpoint (manifest first, so it vanishes atomically); returns bytes freed.

        Removes every part under ``<name>/parts/``, including those of versions orphaned by
        interrupted or concurrent saves, and nothing else: a checkpoint named ``<name>/x`` is not
        part of ``<name>``. Do not delete a checkpoint that is still being written.
        """
        manifest_key = join(name, MANIFEST)
        try:
            freed = self.objects.size(manifest_key)
        except NotFoundError:
            freed = 0
        self.objects.delete([manifest_key])
        parts = list(self.objects.list(join(name, "parts") + "/"))
        self.objects.delete(o.key for o in parts)
        return freed + sum(o.size for o in parts)


def load_from_url(where: str, directory: Path) -> Manifest:
    """Load and verify the checkpoint at ``where`` into ``directory``.

    ``where`` is a checkpoint's address as pbt prints it (``file:///…/<name>``,
    ``s3://bucket/prefix/<name>``) or a local path to the same folder: it must hold a
    ``MANIFEST.json``, and every part is checked against its SHA-256 like a worker's warm start.
    A folder without a manifest cannot be verified and is refused.
    """
    from pbt.storage import normalize_uri, open_object_store

    uri = normalize_uri(where).rstrip("/")
    scheme, _, rest = uri.partition("://")
    head, _, last = rest.rpartition("/")
    if last == MANIFEST:  # the manifest itself was named
        uri = f"{scheme}://{head}"
    raw_root, _, leaf = uri.rpartition("/")
    if scheme == "file" and not Path(unquote(urlparse(uri).path)).is_dir():
        raise NotFoundError(f"{where}: no such checkpoint folder")
    probe = open_object_store(raw_root)
    try:
        data = probe.get_bytes(join(leaf, MANIFEST))
    except NotFoundError:
        raise CorruptCheckpointError(
            f"{where}: no {MANIFEST} there, so it cannot be verified; give the address of a checkpoint pbt "
            "saved (pbt status and pbt report print them)"
        ) from None
    try:
        key = json.loads(data)["parts"][0]["key"]
        name = key.split("/parts/", 1)[0]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise CorruptCheckpointError(f"{where}: unreadable manifest ({exc})") from None
    if not (uri.endswith("/" + name) and name.rsplit("/", 1)[-1] == leaf):
        raise CorruptCheckpointError(f"{where}: its manifest names another checkpoint ({name})")
    root = uri[: -len(name) - 1]
    return CheckpointStore(open_object_store(root)).load(name, directory)
