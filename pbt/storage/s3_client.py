"""How pbt builds its S3 clients: settings read from the environment, one cached client per process.

:mod:`pbt.storage.s3` is the object store on top; this module only decides how the boto3 client
and its transfers are configured, and keeps one client per process and settings.

* **One client per process.** A boto3 client owns a connection pool and resolved credentials;
  building one costs milliseconds and a credential lookup, so it is cached per process. Celery's
  prefork workers fork *after* importing pbt, and a pool whose sockets are shared by two
  processes corrupts both, so the cache is keyed by ``os.getpid()`` and cleared in the child
  at fork.
* **Credentials come only from the standard boto3 chain** (environment, shared config, SSO,
  instance/container roles); an endpoint URL carrying them is refused.
* **Endpoint**: boto3 itself honours ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (and
  ``endpoint_url`` in the shared config); ``PBT_S3_ENDPOINT_URL`` overrides them for pbt alone.
  With any custom endpoint pbt defaults to path-style addressing, because ``bucket.minio:9000``
  style host names rarely resolve inside a docker or Kubernetes network.
* **Retries are botocore's** (``standard`` mode by default: throttling, 5xx and connection
  errors, exponential back-off with jitter) with a larger budget than boto's default of 3,
  because losing a checkpoint to a short S3 brown-out costs a trial.
* **Transfers stream** through s3transfer with a bounded part size and concurrency, so memory
  does not grow with the object.

Settings (environment, read when a store is built; :class:`S3Settings` for code and tests):
``PBT_S3_ENDPOINT_URL``, ``PBT_S3_RETRY_MODE`` (``standard``/``adaptive``; else
``AWS_RETRY_MODE``), ``PBT_S3_MAX_ATTEMPTS`` (else ``AWS_MAX_ATTEMPTS``; default 10),
``PBT_S3_MULTIPART_THRESHOLD`` and ``PBT_S3_MULTIPART_CHUNKSIZE`` (bytes, ``64MiB`` style
suffixes allowed; default 64 MiB), ``PBT_S3_MAX_CONCURRENCY`` (default 10),
``PBT_S3_CONNECT_TIMEOUT`` / ``PBT_S3_READ_TIMEOUT`` (seconds), ``PBT_S3_ADDRESSING_STYLE``
(``auto``/``path``/``virtual``). A malformed value raises :class:`~pbt.errors.SpecError`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from pbt.errors import SpecError

__all__ = ["S3Settings", "client_for", "reset_clients"]

_MiB = 1 << 20


def _parse_size(name: str, raw: str) -> int:
    units = {"": 1, "b": 1, "kb": 10**3, "kib": 1 << 10, "mb": 10**6, "mib": _MiB}
    units |= {"gb": 10**9, "gib": 1 << 30}
    match = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", raw)
    if not match or match.group(2).lower() not in units:
        raise SpecError(f"{name}={raw!r}: expected a size in bytes such as 67108864 or 64MiB")
    return int(match.group(1)) * units[match.group(2).lower()]


def _env_number(env: Mapping[str, str], names: tuple[str, ...], default: float, kind: type = int) -> Any:
    for name in names:
        raw = env.get(name)
        if raw not in (None, ""):
            try:
                value = kind(raw)
            except ValueError:
                raise SpecError(f"{name}={raw!r}: expected a number") from None
            if value <= 0:
                raise SpecError(f"{name}={raw!r}: must be positive")
            return value
    return default


@dataclass(frozen=True)
class S3Settings:
    """Everything that shapes the client and transfers; hashable, so it keys the client cache."""

    endpoint_url: str | None = None  # None: let boto3 resolve AWS_ENDPOINT_URL_S3 and friends
    retry_mode: str = "standard"
    max_attempts: int = 10
    multipart_threshold: int = 64 * _MiB
    multipart_chunksize: int = 64 * _MiB
    max_concurrency: int = 10
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    addressing_style: str | None = None  # None: path-style if an endpoint is configured, else auto
    # Downloaded chunks (256 KiB each) waiting for the disk: s3transfer's default of 100 caps that
    # buffer at 25 MiB whatever the object size. Code only, no variable: few need to change it.
    max_io_queue: int = 100

    def __post_init__(self) -> None:
        if self.retry_mode not in ("standard", "adaptive", "legacy"):
            raise SpecError(f"S3 retry mode {self.retry_mode!r}: use 'standard' or 'adaptive'")
        if self.addressing_style not in (None, "auto", "path", "virtual"):
            raise SpecError(f"S3 addressing style {self.addressing_style!r}: use auto, path or virtual")
        if min(self.max_attempts, self.max_concurrency, self.max_io_queue) < 1:
            raise SpecError("S3 max_attempts, max_concurrency and max_io_queue must be at least 1")
        if self.endpoint_url is not None:
            parsed = urlparse(self.endpoint_url)
            if parsed.scheme not in ("http", "https") or not parsed.hostname:
                raise SpecError("PBT_S3_ENDPOINT_URL must look like https://host[:port]")
            if parsed.username or parsed.password or parsed.query:
                raise SpecError(
                    "PBT_S3_ENDPOINT_URL must not carry credentials or a query; "
                    "credentials come from the standard boto3 chain"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> S3Settings:
        """Settings from ``env`` (default ``os.environ``); :class:`~pbt.errors.SpecError` on a bad value."""
        env = os.environ if env is None else env
        style = env.get("PBT_S3_ADDRESSING_STYLE") or None
        endpoint_vars = ("PBT_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
        custom_endpoint = any(env.get(name) for name in endpoint_vars)
        return cls(
            endpoint_url=env.get("PBT_S3_ENDPOINT_URL") or None,
            retry_mode=env.get("PBT_S3_RETRY_MODE") or env.get("AWS_RETRY_MODE") or "standard",
            max_attempts=_env_number(env, ("PBT_S3_MAX_ATTEMPTS", "AWS_MAX_ATTEMPTS"), 10),
            multipart_threshold=_parse_size(
                "PBT_S3_MULTIPART_THRESHOLD", env.get("PBT_S3_MULTIPART_THRESHOLD") or str(64 * _MiB)
            ),
            multipart_chunksize=_parse_size(
                "PBT_S3_MULTIPART_CHUNKSIZE", env.get("PBT_S3_MULTIPART_CHUNKSIZE") or str(64 * _MiB)
            ),
            max_concurrency=_env_number(env, ("PBT_S3_MAX_CONCURRENCY",), 10),
            connect_timeout=_env_number(env, ("PBT_S3_CONNECT_TIMEOUT",), 10.0, float),
            read_timeout=_env_number(env, ("PBT_S3_READ_TIMEOUT",), 60.0, float),
            addressing_style=style or ("path" if custom_endpoint else None),
        )

    def replace(self, **changes: Any) -> S3Settings:
        return dataclasses.replace(self, **changes)

    def transfer_config(self) -> TransferConfig:
        # "classic" pins the pure-Python s3transfer engine: the CRT engine, picked automatically
        # when awscrt is installed, ignores these limits and its memory use is its own.
        return TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=self.multipart_chunksize,
            max_concurrency=self.max_concurrency,
            max_io_queue=self.max_io_queue,
            use_threads=True,
            preferred_transfer_client="classic",
        )


# --- the per-process client cache ------------------------------------------------------------

_clients: dict[tuple[int, S3Settings], Any] = {}
_clients_lock = threading.Lock()


def _forget_clients_after_fork() -> None:
    """In a forked child: drop the parent's clients, and a lock another thread may have held."""
    global _clients_lock
    _clients_lock = threading.Lock()
    _clients.clear()


os.register_at_fork(after_in_child=_forget_clients_after_fork)


def reset_clients() -> None:
    """Forget every cached client, so the next call builds fresh ones.

    Tests use it to isolate event hooks and botocore's per-client retry quota; an operator
    never needs it (refreshable credentials refresh inside the client).
    """
    with _clients_lock:
        _clients.clear()


def client_for(settings: S3Settings) -> Any:
    """This process's boto3 S3 client for ``settings``, built on first use (and again after a fork)."""
    pid = os.getpid()
    with _clients_lock:
        client = _clients.get((pid, settings))
        if client is None:
            for stale in [k for k in _clients if k[0] != pid]:  # belt and braces if fork hooks were skipped
                del _clients[stale]
            s3_options = {"addressing_style": settings.addressing_style} if settings.addressing_style else {}
            config = Config(
                # "total_max_attempts" counts the first try, like AWS_MAX_ATTEMPTS; botocore's
                # "max_attempts" key would count retries only (one more request than asked for).
                retries={"mode": settings.retry_mode, "total_max_attempts": settings.max_attempts},
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                max_pool_connections=settings.max_concurrency + 10,
                s3=s3_options,
            )
            # A Session per client: boto3's default session is not thread-safe to build clients from.
            client = boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, config=config)
            _clients[(pid, settings)] = client
        return client
