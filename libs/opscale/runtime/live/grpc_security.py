"""mTLS for the gRPC control surface: credentials from `GrpcTlsSettings`, and the check of who calls.

A server built with `server_credentials` requires a client certificate signed by the configured CA (the
TLS handshake fails without one); `require_peer` then admits only the allowed identities, read from the
verified certificate's common name and DNS subject alternative names. A client built with
`channel_credentials` verifies the server's certificate against the same CA. `insecure` settings give
None for both, and the caller uses plain-text ports and channels.
"""

from __future__ import annotations

from collections.abc import Collection

import grpc
import grpc.aio

from opscale.runtime.live.settings import GrpcTlsSettings, SettingsError

__all__ = ["channel_credentials", "peer_identities", "require_peer", "server_credentials"]


def _read(tls: GrpcTlsSettings, who: str) -> tuple[bytes, bytes, bytes]:
    tls.require(who)
    assert tls.ca_file is not None and tls.cert_file is not None and tls.key_file is not None  # by require()
    try:
        return tls.ca_file.read_bytes(), tls.cert_file.read_bytes(), tls.key_file.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{who}: cannot read a grpc_tls file: {exc.filename}: {exc.strerror}") from None


def server_credentials(tls: GrpcTlsSettings, who: str) -> grpc.ServerCredentials | None:
    """Credentials of a gRPC server that requires and verifies client certificates; None when insecure."""
    if tls.insecure:
        return None
    ca, cert, key = _read(tls, who)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)


def channel_credentials(tls: GrpcTlsSettings, who: str) -> grpc.ChannelCredentials | None:
    """Credentials of a gRPC client that presents its certificate and verifies the server's; None when
    insecure."""
    if tls.insecure:
        return None
    ca, cert, key = _read(tls, who)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def peer_identities(context: grpc.aio.ServicerContext) -> set[str]:
    """The verified names of the caller: its certificate's CN and DNS SANs (empty without TLS)."""
    auth = context.auth_context() or {}
    names: set[str] = set()
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        names.update(v.decode(errors="replace") for v in auth.get(key, ()))
    return names


async def require_peer(context: grpc.aio.ServicerContext, allowed: Collection[str] | None) -> None:
    """Abort the call with PERMISSION_DENIED unless the caller's certificate names an allowed identity.
    `allowed` None admits any caller (plain text, or any certificate the CA signed)."""
    if allowed is None:
        return
    names = peer_identities(context)
    if not names & set(allowed):
        shown = ", ".join(sorted(names)) or "no certificate"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"caller ({shown}) is not an allowed identity ({', '.join(sorted(allowed))})")
