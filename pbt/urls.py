"""URLs and log lines as pbt shows them: logged, printed and stored without the credentials they carry.

The study file, the broker channels and the CLI all print broker URLs; they all redact them here.
Log records are redacted too (:class:`SecretFilter`, installed on every handler by the CLI and
the workers): botocore's debug logging prints request headers, whose ``Authorization`` names the
access key id, and a library may quote a broker URL with its password. Credentials never reach
a log, at any level.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``redis://:secret@host`` → ``redis://:***@host``: URLs are logged, passwords never.

    A URL without a user or password comes back unchanged; the user name is kept, the password
    becomes ``***``.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, a bad IPv6 host: mask it as text instead
        return redact_secrets(url)
    if parts.password is None and parts.username is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@" if parts.password is not None else f"{user}@"
    netloc += parts.hostname or ""
    if port:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


_SECRETS = [
    # Authorization: AWS4-HMAC-SHA256 Credential=AKIA.../..., SignedHeaders=..., Signature=...
    (re.compile(r"(Authorization['\"]?\s*[:=]\s*b?['\"]?)[^'\",}\n]*(?:,[^'\",}\n]*)*", re.I), r"\1***"),
    (re.compile(r"(X-Amz-(?:Credential|Security-Token|Signature)['\"]?\s*[:=]\s*b?['\"]?)[^'\"&,}\s]+", re.I),
     r"\1***"),
    (re.compile(r"(Credential=)[^/,&\s'\"]+"), r"\1***"),
    (re.compile(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{12,}\b"), "***"),
    (re.compile(r"((?:aws_)?secret_?access_?key|SecretAccessKey|aws_session_token|SessionToken)(['\"]?\s*[:=]\s*b?['\"]?)"
                r"[^'\",}\s]+", re.I), r"\1\2***"),
    (re.compile(r"(?<=://)([^/@\s'\":]*):[^/@\s'\"]+@"), r"\1:***@"),  # user:password@ in any URL
]


def redact_secrets(text: str) -> str:
    """``text`` with access key ids, signatures, tokens, secret keys and URL passwords masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class SecretFilter(logging.Filter):
    """Masks credentials in every record that passes through the handler it is attached to."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error path
            return True
        clean = redact_secrets(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_secrets(record.exc_text)
        if clean != message:
            record.msg, record.args = clean, None
        return True


#: Libraries whose debug output is request dumps: capped at INFO unless PBT_DEBUG_HTTP=1.
CHATTY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def redact_logs(logger: logging.Logger | None = None) -> None:
    """Install :class:`SecretFilter` on every handler of ``logger`` (default: the root logger),
    and keep HTTP libraries' request dumps out of debug logs unless ``PBT_DEBUG_HTTP=1``."""
    logger = logger or logging.getLogger()
    for handler in logger.handlers:
        if not any(isinstance(f, SecretFilter) for f in handler.filters):
            handler.addFilter(SecretFilter())
    if os.environ.get("PBT_DEBUG_HTTP") != "1":
        for name in CHATTY_LOGGERS:
            chatty = logging.getLogger(name)
            if chatty.getEffectiveLevel() < logging.INFO:
                chatty.setLevel(logging.INFO)
