"""URLs as pbt shows them: logged, printed and stored without the credentials they may carry.

The study file, the broker channels and the CLI all print broker URLs; they all redact them here.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """``redis://:secret@host`` → ``redis://:***@host``: URLs are logged, passwords never.

    A URL without a user or password comes back unchanged; the user name is kept, the password
    becomes ``***``.
    """
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@" if parts.password is not None else f"{user}@"
    netloc += parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
