"""``s3://bucket[/prefix]`` object store: AWS S3 or any S3-compatible service (MinIO, Ceph, moto).

The client it talks through — settings from the environment, retries, timeouts, transfer
limits, one cached client per process — is built by :mod:`pbt.storage.s3_client` (where the
``PBT_S3_*`` variables are listed); ``S3Settings`` and ``reset_clients`` are re-exported here.
Why the store is built this way:

* **Credentials come only from the standard boto3 chain** (environment, shared config, SSO,
  instance/container roles). They never appear in the URI (refused if they do), in messages or
  in logs.
* **Errors**: whatever survives botocore's retries is a :class:`~pbt.errors.StorageError`
  (retryable), except errors a person must fix (access denied, missing bucket, no credentials),
  which raise :class:`S3ConfigError`, a :class:`~pbt.errors.FatalError`: retrying those only
  delays the message an operator needs.
* **Atomic uploads**: a multipart upload only becomes visible when it completes, which keeps
  ``put_file`` atomic. (Give the bucket an ``AbortIncompleteMultipartUpload`` lifecycle rule
  so uploads killed with their process do not accumulate.)
* **Integrity** is end to end in :mod:`pbt.storage.checkpoints` (SHA-256 per part); botocore's
  own CRC checksums come on top. S3-compatible stores that reject those checksums (older MinIO,
  some appliances) work with ``AWS_REQUEST_CHECKSUM_CALCULATION=when_required``.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import botocore.exceptions as bce
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from s3transfer.exceptions import S3DownloadFailedError

from pbt.errors import FatalError, NotFoundError, SpecError, StorageConfigError, StorageError
from pbt.storage.base import ObjectInfo, ObjectStore
from pbt.storage.keys import validate_key
from pbt.storage.s3_client import S3Settings, client_for, reset_clients

__all__ = ["S3ConfigError", "S3ObjectStore", "S3Settings", "reset_clients"]

_TMP = ".pbt-tmp-"  # same hidden prefix as the local store, so stray temp files look alike
_DELETE_BATCH = 1000  # the DeleteObjects limit
_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$")

# Error codes that may succeed later. Everything else with a 4xx status needs a person.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "PriorRequestNotComplete",
        "XMinioServerNotInitialized",
    }
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_CONNECTION_ERRORS = (
    bce.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ProxyConnectionError, SSLError
    bce.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ResponseStreamingError
    bce.IncompleteReadError,
    bce.FlexibleChecksumError,  # a body damaged in transit: reading it again may work
    RetriesExceededError,  # s3transfer gave up re-reading a download stream
    S3DownloadFailedError,
)
_CONFIG_ERRORS = (
    bce.NoCredentialsError,
    bce.PartialCredentialsError,
    bce.NoRegionError,
    bce.ParamValidationError,
    bce.InvalidConfigError,
    bce.ProfileNotFound,
    bce.UnknownCredentialError,
)
_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


class S3ConfigError(StorageConfigError):
    """S3 refused the request for a reason retrying cannot fix (credentials, permissions, bucket).

    Not a :class:`~pbt.errors.StorageError`: a worker that retried these would spin until its
    lease ran out and hide the message the operator needs ("AccessDenied on s3://...").
    """


def _scrub(text: str) -> str:
    """Drop ``user:password@`` from any URL in ``text`` (botocore messages quote endpoints)."""
    return _USERINFO.sub("***@", text)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into a checked bucket name and a validated key prefix."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise SpecError(f"storage: {uri!r} is not s3://bucket[/prefix]")
    if "@" in parsed.netloc or ":" in parsed.netloc:
        raise SpecError(
            "storage: an s3:// URI must not carry credentials or a port; "
            "credentials come from the standard boto3 chain and the endpoint from PBT_S3_ENDPOINT_URL"
        )
    if parsed.query or parsed.fragment or parsed.params:
        raise SpecError(f"storage: s3://{parsed.netloc}/...: no query or fragment allowed")
    if not _BUCKET.fullmatch(parsed.netloc):
        raise SpecError(f"storage: {parsed.netloc!r} is not a valid S3 bucket name")
    prefix = parsed.path.strip("/")
    if prefix:
        validate_key(prefix)
    return parsed.netloc, prefix


class S3ObjectStore(ObjectStore):
    """Objects under ``s3://bucket/prefix``; keys are relative to the prefix and cannot leave it."""

    def __init__(self, uri: str, settings: S3Settings | None = None) -> None:
        self.bucket, self.prefix = parse_s3_uri(uri)
        self.uri = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.settings = settings if settings is not None else S3Settings.from_env()
        self.transfer = self.settings.transfer_config()
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._bucket_seen = False

    def __repr__(self) -> str:
        return f"S3ObjectStore({self.uri!r})"

    @property
    def client(self) -> Any:
        """This process's client for these settings (rebuilt after a fork)."""
        return client_for(self.settings)

    def _key(self, key: str) -> str:
        return self._root + validate_key(key)

    # --- error translation -------------------------------------------------------------------

    def _translate(self, exc: BaseException, action: str, key: str | None) -> Exception:
        """Map a boto/s3transfer exception to a pbt error whose message names the object."""
        where = self.url(key) if key is not None else self.uri
        if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, bce.ClientError):
            exc = exc.__context__  # s3transfer wraps the ClientError in a string; the original is here
        if isinstance(exc, bce.ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            meta = exc.response.get("ResponseMetadata", {})
            status = int(meta.get("HTTPStatusCode") or 0)
            tries = int(meta.get("RetryAttempts") or 0) + 1
            detail = _scrub(f"{code or status}: {error.get('Message') or 'no message'}")
            if code in _NOT_FOUND_CODES:
                return NotFoundError(f"{where} does not exist")
            if code == "NoSuchBucket":
                return S3ConfigError(f"{action} {where}: bucket {self.bucket!r} does not exist")
            if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
                return StorageError(f"{action} {where} failed after {tries} attempt(s): {detail}")
            hint = ""
            if code in ("AccessDenied", "403", "Forbidden"):
                hint = (
                    "; check the credentials the boto3 chain found and their policy for this bucket "
                    "(without s3:ListBucket, S3 reports a missing object as AccessDenied)"
                )
            return S3ConfigError(f"{action} {where} refused: {detail}{hint}")
        if isinstance(exc, _CONFIG_ERRORS):
            hint = "S3 credentials come from the standard boto3 chain"
            return S3ConfigError(f"{action} {where}: {_scrub(str(exc))} ({hint})")
        if isinstance(exc, (*_CONNECTION_ERRORS, bce.BotoCoreError, OSError)):
            return StorageError(f"{action} {where} failed: {type(exc).__name__}: {_scrub(str(exc))}")
        return StorageError(f"{action} {where} failed: {type(exc).__name__}")

    @contextmanager
    def _errors(self, action: str, key: str | None) -> Iterator[None]:
        try:
            yield
        except (bce.BotoCoreError, bce.ClientError, S3UploadFailedError, RetriesExceededError,
                S3DownloadFailedError) as exc:
            translated = self._translate(exc, action, key)
            if isinstance(translated, NotFoundError):
                self._check_bucket()
            raise translated from exc

    def _check_bucket(self) -> None:
        """Tell "no such object" from "no such bucket": a HEAD on a key answers 404 for both."""
        if self._bucket_seen:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except bce.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise S3ConfigError(f"bucket {self.bucket!r} of {self.uri} does not exist") from None
            return  # 403 on HeadBucket is common with narrow policies; the key's 404 stands
        except bce.BotoCoreError:
            return
        self._bucket_seen = True

    # --- the ObjectStore contract -------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        with self._errors("writing", key):
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        # botocore retries a request until its headers arrive; a connection that dies while the
        # body streams is ours to retry, with the same budget and a jittered back-off.
        for attempt in range(1, self.settings.max_attempts + 1):
            with self._errors("reading", key):
                response = self.client.get_object(Bucket=self.bucket, Key=full)
                try:
                    return response["Body"].read()
                except (bce.HTTPClientError, bce.IncompleteReadError, bce.FlexibleChecksumError):
                    if attempt == self.settings.max_attempts:
                        raise
                finally:
                    response["Body"].close()
            time.sleep(random.random() * min(2.0 ** (attempt - 1) * 0.1, 5.0))
        raise AssertionError("unreachable")

    def put_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        with self._errors("uploading", key):
            self.client.upload_file(os.fspath(path), self.bucket, full, Config=self.transfer)

    def get_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        dest = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=_TMP, dir=dest.parent)
        os.close(fd)
        try:
            # A ranged (multipart) download pins the object's ETag; if the object is replaced
            # mid-download S3 answers PreconditionFailed and we start again on the new version,
            # so the file is always one whole version.
            for attempt in range(1, self.settings.max_attempts + 1):
                try:
                    with self._errors("downloading", key):
                        self.client.download_file(self.bucket, full, tmp, Config=self.transfer)
                    break
                except StorageError as exc:
                    replaced = isinstance(exc.__cause__, S3DownloadFailedError)
                    if not replaced or attempt == self.settings.max_attempts:
                        raise
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        full = self._key(key)
        with self._errors("inspecting", key):
            return int(self.client.head_object(Bucket=self.bucket, Key=full)["ContentLength"])

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        # Same validation as the local store: the directory part of a prefix must be a safe key.
        if "/" in prefix:
            validate_key(prefix.rsplit("/", 1)[0])
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._root + prefix}
        if start_after is not None:
            kwargs["StartAfter"] = self._root + start_after
        cut = len(self._root)
        with self._errors("listing", prefix or None):
            for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
                for obj in page.get("Contents", ()):
                    key = obj["Key"][cut:]
                    try:
                        validate_key(key)
                    except FatalError:
                        continue  # not written by pbt (e.g. a console "folder/" marker): not ours to show
                    yield ObjectInfo(key, int(obj["Size"]))

    def delete(self, keys: Iterable[str]) -> None:
        batch: dict[str, None] = {}
        for key in keys:
            batch[self._key(key)] = None
            if len(batch) == _DELETE_BATCH:
                self._delete_batch(list(batch))
                batch.clear()
        if batch:
            self._delete_batch(list(batch))

    def _delete_batch(self, full_keys: list[str]) -> None:
        first = full_keys[0][len(self._root) :]
        with self._errors("deleting", first):
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in full_keys], "Quiet": True},
            )
        errors = [e for e in response.get("Errors", ()) if e.get("Code") != "NoSuchKey"]
        if errors:
            code, message = str(errors[0].get("Code", "")), errors[0].get("Message") or "no message"
            where = self.url(str(errors[0].get("Key", ""))[len(self._root) :] or first)
            count = f"{len(errors)} of {len(full_keys)} keys failed"
            text = f"deleting {where} ({count}): {code}: {_scrub(message)}"
            raise StorageError(text) if code in _TRANSIENT_CODES else S3ConfigError(text)
