"""A development PKI (opscale certs init) for the integration tests, made once per test process, and the
gRPC TLS settings of each identity in it."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

from opscale.runtime.live.pki import IssuedFiles, init_dev_pki
from opscale.runtime.live.settings import GrpcTlsSettings


@functools.cache
def dev_pki() -> IssuedFiles:
    folder = Path(tempfile.mkdtemp(prefix="opscale-test-pki-"))
    atexit.register(shutil.rmtree, folder, True)
    return init_dev_pki(folder)


def tls_dict(identity: str, **extra: object) -> dict[str, object]:
    """grpc_tls settings (as a settings file or constructor takes them) of `identity`."""
    pki = dev_pki()
    cert, key = pki.certs[identity]
    return {"ca_file": pki.ca_cert, "cert_file": cert, "key_file": key, **extra}


def grpc_tls(identity: str, **extra: object) -> GrpcTlsSettings:
    return GrpcTlsSettings(**tls_dict(identity, **extra))  # type: ignore[arg-type]
