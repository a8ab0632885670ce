"""`opscale certs init DIR`: a CA and one certificate per service, each signed by the CA, naming its
service (CN) and reachable names (SANs), for both TLS ends; keys private; an existing CA is kept."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner

from opscale.cli import app
from opscale.runtime.live.pki import SERVICES

pytestmark = pytest.mark.security

runner = CliRunner()


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_certs_init_makes_a_ca_and_a_certificate_per_service(tmp_path: Path) -> None:
    result = runner.invoke(app, ["certs", "init", str(tmp_path / "pki"), "--k8s-namespace", "prod",
                                 "--name", "gpu-host-7.example.internal"])
    assert result.exit_code == 0, result.output
    ca = _load(tmp_path / "pki" / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    for service in SERVICES:
        cert = _load(tmp_path / "pki" / f"{service}.crt")
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == service
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = set(sans.get_values_for_type(x509.DNSName))
        assert {service, "localhost", f"{service}.prod.svc.cluster.local", "gpu-host-7.example.internal"} <= names
        assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
        usages = set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages
        assert stat.S_IMODE((tmp_path / "pki" / f"{service}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pki" / "ca.key").stat().st_mode) == 0o600


def test_an_existing_ca_is_kept_unless_forced_and_keys_may_be_made_readable(tmp_path: Path) -> None:
    assert runner.invoke(app, ["certs", "init", str(tmp_path)]).exit_code == 0
    first = (tmp_path / "ca.crt").read_bytes()
    again = runner.invoke(app, ["certs", "init", str(tmp_path)])
    assert again.exit_code == 2 and "already holds a CA" in again.output and "Traceback" not in again.output
    assert (tmp_path / "ca.crt").read_bytes() == first
    forced = runner.invoke(app, ["certs", "init", str(tmp_path), "--force", "--readable-keys"])
    assert forced.exit_code == 0 and (tmp_path / "ca.crt").read_bytes() != first
    assert stat.S_IMODE((tmp_path / "planner.key").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600  # the CA key never
    bad = runner.invoke(app, ["certs", "init", str(tmp_path / "x"), "--days", "0"])
    assert bad.exit_code == 2 and "days must be at least 1" in bad.output
