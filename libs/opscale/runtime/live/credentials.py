"""Connection options for NATS and Redis from the settings' credentials and TLS files.

Secrets leave their `SecretStr` only here, on their way into the client library; nothing here logs.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from opscale.runtime.live.settings import NatsAuthSettings, RedisAuthSettings, SettingsError

__all__ = ["nats_connect_options", "redis_connect_options", "tls_context"]


def tls_context(ca_file: Path, cert_file: Path | None = None, key_file: Path | None = None, *,
                where: str = "tls") -> ssl.SSLContext:
    """A client TLS context that verifies the server against `ca_file` (and its host name), presenting
    `cert_file`/`key_file` when given. SettingsError naming `where` when a file cannot be used."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as exc:
        # the message names the file, never its contents
        raise SettingsError(f"{where}: cannot use the TLS files ({ca_file}, {cert_file}, {key_file}): "
                            f"{getattr(exc, 'strerror', None) or exc.__class__.__name__}") from None
    return context


def nats_connect_options(auth: NatsAuthSettings) -> dict[str, Any]:
    """Keyword arguments of nats-py's `connect` for these credentials (none: anonymous, plain text)."""
    options: dict[str, Any] = {}
    if auth.user and auth.password is not None:
        options.update(user=auth.user, password=auth.password.get_secret_value())
    if auth.token is not None:
        options["token"] = auth.token.get_secret_value()
    if auth.creds_file is not None:
        options["user_credentials"] = str(auth.creds_file)
    if auth.tls_ca_file is not None:
        options["tls"] = tls_context(auth.tls_ca_file, auth.tls_cert_file, auth.tls_key_file, where="nats_auth")
    return options


def redis_connect_options(auth: RedisAuthSettings, url: str) -> dict[str, Any]:
    """Keyword arguments of redis-py's `from_url` for these credentials; TLS files only with rediss://."""
    options: dict[str, Any] = {}
    if auth.username:
        options["username"] = auth.username
    if auth.password is not None:
        options["password"] = auth.password.get_secret_value()
    if url.startswith("rediss://"):
        if auth.tls_ca_file is not None:
            options["ssl_ca_certs"] = str(auth.tls_ca_file)
        if auth.tls_cert_file is not None and auth.tls_key_file is not None:
            options.update(ssl_certfile=str(auth.tls_cert_file), ssl_keyfile=str(auth.tls_key_file))
    return options
