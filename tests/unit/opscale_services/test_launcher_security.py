"""What `opscale up` does for security before it starts anything: loopback binds unless the settings
name an address, a development CA for mTLS unless grpc_tls is configured, and a loud line for every
part of the control traffic that goes unencrypted."""

from __future__ import annotations

from pathlib import Path

import pytest

from opscale.runtime.live.settings import SERVICE_SETTINGS, GrpcTlsSettings, load_settings

from opscale_services.launcher import plain_control, secure_defaults

pytestmark = pytest.mark.security


def _loaded(**overrides: object) -> dict:
    return {key: load_settings(cls, **overrides) for key, cls in SERVICE_SETTINGS.items()}


def test_up_binds_loopback_and_makes_a_ca_when_nothing_is_configured(tmp_path: Path) -> None:
    env = secure_defaults(_loaded(), {}, tmp_path)
    assert env["OPSCALE_NODE_AGENT_GRPC_HOST"] == "127.0.0.1" and env["OPSCALE_ROUTER_HTTP_HOST"] == "127.0.0.1"
    assert env["OPSCALE_PLANNER_OPS_HOST"] == "127.0.0.1"
    assert Path(env["OPSCALE_GRPC_TLS__CA_FILE"]).is_file()
    planner = load_settings(SERVICE_SETTINGS["planner"], grpc_tls={
        "ca_file": env["OPSCALE_GRPC_TLS__CA_FILE"], "cert_file": env["OPSCALE_PLANNER_GRPC_TLS__CERT_FILE"],
        "key_file": env["OPSCALE_PLANNER_GRPC_TLS__KEY_FILE"]})
    planner.grpc_tls.require("planner")  # complete
    assert plain_control(_loaded()) == ["NATS without TLS and without credentials",
                                        "Redis without TLS and without a password"]


def test_an_address_or_tls_in_the_settings_is_kept(tmp_path: Path) -> None:
    env = secure_defaults(_loaded(ops_host="0.0.0.0", grpc_tls={"insecure": True}), {}, tmp_path)
    assert "OPSCALE_PLANNER_OPS_HOST" not in env and not any("GRPC_TLS" in k for k in env)
    warning = plain_control(_loaded(grpc_tls={"insecure": True}))[0]
    assert "plain text" in warning and "grpc_tls.insecure" in warning


def test_incomplete_grpc_tls_names_what_is_missing() -> None:
    with pytest.raises(ValueError, match="grpc_tls.cert_file, grpc_tls.key_file not set"):
        GrpcTlsSettings(ca_file=Path(__file__)).require("planner")


def test_up_refuses_incomplete_grpc_tls_before_starting_anything(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from opscale_services.launcher import run_stack

    config = tmp_path / "opscale.yaml"
    config.write_text(f"grpc_tls: {{ca_file: {tmp_path / 'ca.crt'}}}\n")
    assert run_stack(1, config) == 2
    assert "grpc_tls.cert_file, grpc_tls.key_file not set" in caplog.text
