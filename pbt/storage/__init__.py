"""Where pbt persists things: checkpoints and study records, on local disk or S3.

``open_object_store(uri)`` picks the back end from the URI; everything above it
(checkpoints, study records) is back-end independent.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from pbt.errors import SpecError
from pbt.storage.base import ObjectInfo, ObjectStore

__all__ = ["ObjectInfo", "ObjectStore", "normalize_uri", "open_object_store"]


def normalize_uri(uri: str) -> str:
    """``file:///abs``, ``s3://bucket[/prefix]`` or a plain local path (made absolute)."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise SpecError(f"storage: {uri!r} names no bucket (expected s3://bucket/prefix)")
        return uri.rstrip("/")
    if uri.startswith("file://"):
        parsed = urlparse(uri)
        if parsed.netloc not in ("", "localhost"):
            raise SpecError(f"storage: {uri!r} has a host; use file:///absolute/path")
        return Path(unquote(parsed.path)).resolve().as_uri()
    if "://" in uri:
        raise SpecError(f"storage: unsupported scheme in {uri!r}; use file:// or s3://")
    return Path(uri).expanduser().resolve().as_uri()


def open_object_store(uri: str) -> ObjectStore:
    """Build the back end for ``uri``. Cheap; call it once per process and reuse it."""
    uri = normalize_uri(uri)
    if uri.startswith("s3://"):
        from pbt.storage.s3 import S3ObjectStore

        return S3ObjectStore(uri)
    from pbt.storage.local import LocalObjectStore

    return LocalObjectStore(unquote(urlparse(uri).path))
