"""``file://`` object store: the embedded default, and what tests run without a network.

Atomicity comes from the POSIX rename: every write goes to a hidden temporary file in the
destination directory, is fsynced, then ``os.replace``d over the key.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from pbt.errors import NotFoundError, StorageError
from pbt.storage.base import ObjectInfo, ObjectStore
from pbt.storage.keys import validate_key

_TMP = ".pbt-tmp-"
_CHUNK = 1 << 20


class LocalObjectStore(ObjectStore):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _atomic_write(self, key: str, write) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda f: f.write(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFoundError(f"{self.url(key)} does not exist") from None

    def put_file(self, key: str, path: Path) -> None:
        with open(path, "rb") as src:
            self._atomic_write(key, lambda f: shutil.copyfileobj(src, f, _CHUNK))

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFoundError(f"{self.url(key)} does not exist")
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
                shutil.copyfileobj(f, out, _CHUNK)
            os.replace(tmp, path)
        except FileNotFoundError:
            Path(tmp).unlink(missing_ok=True)
            raise NotFoundError(f"{self.url(key)} does not exist") from None
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise StorageError(f"reading {self.url(key)}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise NotFoundError(f"{self.url(key)} does not exist") from None

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        # Walk only the directory the prefix names, then sort: S3 orders keys as strings,
        # which a per-directory walk would not reproduce ("a-b" sorts before "a/b").
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = self.root / validate_key(base) if base else self.root
        found: list[ObjectInfo] = []
        for dirpath, _dirs, files in os.walk(top):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if name.startswith(_TMP):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                if key.startswith(prefix) and (start_after is None or key > start_after):
                    try:
                        found.append(ObjectInfo(key, os.stat(os.path.join(dirpath, name)).st_size))
                    except FileNotFoundError:  # deleted while we walked
                        continue
        found.sort(key=lambda o: o.key)
        yield from found

    def delete(self, keys: Iterable[str]) -> None:
        paths = [self._path(key) for key in keys]  # validate the whole batch before touching any
        parents: set[Path] = set()
        for path in paths:
            path.unlink(missing_ok=True)
            parents.add(path.parent)
        # Prune directories the deletes emptied, deepest first, once per batch: long studies
        # should not leave husks, and a failed rmdir per key would double the cost of a delete.
        tried: set[Path] = set()
        for parent in sorted(parents, key=lambda p: len(p.parts), reverse=True):
            while parent != self.root and parent not in tried:
                tried.add(parent)
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent
