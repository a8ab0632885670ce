"""Credentials out of URLs before they reach a log line or an error message.

A NATS or Redis URL may carry a user and password (`nats://svc:secret@nats:4222`), a token in place of
the user (`nats://s3cr3t@nats:4222`) or a password in its query (`redis://r:6379/0?password=...`).
`redact_url` keeps what says where the server is (scheme, user name, host, port, path) and masks the
rest, so every line that prints a server's URL goes through it.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["MASK", "redact_url"]

MASK = "***"
# query parameters that carry a secret (redis-py reads `password`; others use token or key)
_SECRET_PARAMS = ("pass", "secret", "token", "key", "auth", "cred")


def redact_url(url: str) -> str:
    """`url` with its password, a bare token in the user position and secret query values masked.
    A string that is not a URL with a network location comes back unchanged."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a malformed port raises here, and the input is then masked whole
    except ValueError:
        return MASK if "@" in url else url
    out = url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, _ = userinfo.partition(":")
        # user:password keeps the user; a lone user part may be a token (nats://TOKEN@host): masked
        masked = f"{user}:{MASK}@{hostport}" if has_password and user else f"{MASK}@{hostport}"
        out = out.replace(netloc, masked, 1)  # in place: the rest of the URL is kept byte for byte
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        query = urlencode([(k, MASK if any(s in k.lower() for s in _SECRET_PARAMS) else v) for k, v in pairs],
                          safe="*")
        out = out.replace(f"?{parts.query}", f"?{query}", 1)
    return out
