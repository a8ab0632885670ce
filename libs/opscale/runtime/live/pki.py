"""A development certificate authority and per-service certificates (`opscale certs init DIR`).

Every opscale service gets one key pair and one certificate, usable both as a TLS server and as a TLS
client (gRPC mTLS, NATS and Redis over TLS). The certificate's common name is the service's identity:
a node-agent admits Apply and Drain only from a peer whose certificate names an allowed identity
(`planner` by default). The subject alternative names cover how the service is reached locally
(localhost, 127.0.0.1, ::1), in docker-compose (the compose service name) and in Kubernetes (the
Service name, `NAME.NAMESPACE`, `NAME.NAMESPACE.svc`, `NAME.NAMESPACE.svc.cluster.local`).

This is a development CA: its key sits next to the certificates. Production should use its own CA or
cert-manager with the same names.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["SERVICES", "IssuedFiles", "PkiError", "init_dev_pki", "service_names"]

# Identities that get a certificate: the five services, and the two servers they talk to.
SERVICES = ("planner", "node-agent", "router", "aggregator", "forecaster", "nats", "redis")
DEFAULT_K8S_NAMESPACE = "opscale"
CA_NAME = "opscale development CA"


class PkiError(ValueError):
    """The folder cannot take a new PKI (files exist, not writable): the message says which."""


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    ca_cert: Path
    ca_key: Path
    certs: dict[str, tuple[Path, Path]]  # identity -> (certificate, key)


def service_names(identity: str, k8s_namespace: str = DEFAULT_K8S_NAMESPACE,
                  extra: Iterable[str] = ()) -> list[str]:
    """DNS names of a service: its compose name and its Kubernetes Service names."""
    ns = k8s_namespace
    names = [identity, f"opscale-{identity}", f"{identity}.{ns}", f"{identity}.{ns}.svc",
             f"{identity}.{ns}.svc.cluster.local", "localhost", *extra]
    return list(dict.fromkeys(names))


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "opscale"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, mode: int) -> None:
    path.write_bytes(data)
    os.chmod(path, mode)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def init_dev_pki(folder: Path, *, identities: Sequence[str] = SERVICES, days: int = 365,
                 k8s_namespace: str = DEFAULT_K8S_NAMESPACE, extra_names: Iterable[str] = (),
                 force: bool = False, key_mode: int = 0o600) -> IssuedFiles:
    """Write ca.crt, ca.key and IDENTITY.crt / IDENTITY.key for each identity into `folder` (created).
    Service keys get `key_mode` (owner only by default; a container running as another user, as in the
    compose stack, may need 0o644), the CA key always 0o600. Refuses to overwrite an existing CA unless
    `force`."""
    if days < 1:
        raise PkiError(f"days must be at least 1, got {days}")
    folder.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = folder / "ca.crt", folder / "ca.key"
    if not force and (ca_cert_path.exists() or ca_key_path.exists()):
        raise PkiError(f"{folder} already holds a CA (ca.crt / ca.key); pass --force to replace it")
    now = dt.datetime.now(dt.UTC)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = _key()
    ca_cert = (x509.CertificateBuilder().subject_name(_name(CA_NAME)).issuer_name(_name(CA_NAME))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))
    _write(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(ca_key_path, _pem_key(ca_key), 0o600)
    extra = list(extra_names)
    ips = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
    certs: dict[str, tuple[Path, Path]] = {}
    for identity in identities:
        key = _key()
        sans = [x509.DNSName(n) for n in service_names(identity, k8s_namespace, extra)] + ips
        cert = (x509.CertificateBuilder().subject_name(_name(identity)).issuer_name(ca_cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(end)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                # one certificate per service, both ends: it serves (agent, NATS) and it calls (planner)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path, key_path = folder / f"{identity}.crt", folder / f"{identity}.key"
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        _write(key_path, _pem_key(key), key_mode)
        certs[identity] = (cert_path, key_path)
    return IssuedFiles(ca_cert_path, ca_key_path, certs)
