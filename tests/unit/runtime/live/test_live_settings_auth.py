"""The router's API-key settings: keys from a YAML or JSON file (a mounted Kubernetes Secret) and from
an environment variable, auth on when keys are configured, a router told to require keys refusing to
start without any, and every error naming the field or the file's entry without echoing a secret."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from opscale.runtime.live.settings import RouterSettings, SettingsError, load_settings

pytestmark = [pytest.mark.unit, pytest.mark.security]

SECRET = "sk-live-3f9a7c1e5b2d"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OPSCALE_"):
            monkeypatch.delenv(name)


def test_without_keys_auth_is_off_and_with_keys_it_is_on() -> None:
    assert not load_settings(RouterSettings).auth.active
    on = load_settings(RouterSettings, auth={"keys": [{"id": "a", "secret": SECRET}]})
    assert on.auth.active and [k.id for k in on.auth.key_specs()] == ["a"]
    off = load_settings(RouterSettings, auth={"enabled": False, "keys": [{"id": "a", "secret": SECRET}]})
    assert not off.auth.active


def test_required_auth_without_keys_refuses_to_start() -> None:
    with pytest.raises(SettingsError, match="'auth'.*enabled is true but no key is configured"):
        load_settings(RouterSettings, auth={"enabled": True})


@pytest.mark.parametrize("suffix", ["yaml", "json"])
def test_keys_from_a_file_as_a_list_or_under_keys(tmp_path: Path, suffix: str) -> None:
    keys = [{"id": "team-a", "secret": SECRET, "models": ["Llama-3-8B"], "requests_per_min": 60,
             "tokens_per_min": 100000, "default_tier": "batch"},
            {"id": "team-b", "secret_sha256": hashlib.sha256(b"sk-b-0123456789").hexdigest()}]
    path = tmp_path / f"keys.{suffix}"
    path.write_text(json.dumps({"keys": keys}) if suffix == "json" else "- " + json.dumps(keys[0]) + "\n- "
                    + json.dumps(keys[1]) + "\n")
    settings = load_settings(RouterSettings, auth={"keys_file": str(path)})
    a, b = settings.auth.key_specs()
    assert (a.id, a.models, a.requests_per_min, a.default_tier) == ("team-a", ["Llama-3-8B"], 60, "batch")
    assert a.secret is None and a.secret_sha256 == hashlib.sha256(SECRET.encode()).hexdigest()
    assert b.id == "team-b" and settings.auth.active


def test_keys_from_the_environment_as_a_kubernetes_secret_gives_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSCALE_ROUTER_AUTH__KEYS", json.dumps([{"id": "svc", "secret": SECRET}]))
    settings = load_settings(RouterSettings)
    assert [k.id for k in settings.auth.key_specs()] == ["svc"] and settings.auth.active
    assert SECRET not in settings.model_dump_json() and SECRET not in repr(settings)


def test_a_key_in_the_file_and_inline_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"- {{id: a, secret: {SECRET}}}\n")
    with pytest.raises(SettingsError, match="key id 'a' is configured twice"):
        load_settings(RouterSettings, auth={"keys_file": str(path), "keys": [{"id": "a", "secret": SECRET + "x"}]})


@pytest.mark.parametrize(("text", "message"), [
    ("keys: 3", "expected a list of keys"),
    ("- [1, 2]", "entry 0: expected a mapping"),
    (f"- {{id: a, secret: {SECRET}, requests_per_min: -5}}", "entry 0 (id 'a'): requests_per_min: Input should "
                                                            "be greater than 0"),
    (f"- {{id: a, secret: {SECRET}, secret_sha256: {'0' * 64}}}", "entry 0 (id 'a'): key: Value error, give "
                                                                  "either secret or secret_sha256"),
    (f"- {{id: a, secret: {SECRET}, colour: red}}", "entry 0 (id 'a'): colour: Extra inputs are not permitted"),
    (f"- {{id: a, secret: {SECRET}\n- oops: [", "invalid YAML or JSON at line"),
])
def test_a_bad_keys_file_names_the_file_and_entry_never_a_secret(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError) as info:
        load_settings(RouterSettings, auth={"keys_file": str(path)})
    assert message in str(info.value) and str(path) in str(info.value)
    assert SECRET not in str(info.value)


def test_a_missing_keys_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"keys file .*nope.yaml does not exist"):
        load_settings(RouterSettings, auth={"keys_file": str(tmp_path / "nope.yaml")})


@pytest.mark.parametrize(("key", "message"), [
    ({"id": "a", "secret": SECRET, "default_tier": "platinum"}, "default_tier 'platinum', which is not a configured tier"),
    ({"id": "a", "secret": SECRET, "tokens_per_min": "lots"}, "'auth.keys.0.tokens_per_min'"),
    ({"id": "a b", "secret": SECRET}, "'auth.keys.0.id'"),
    ({"id": "a", "secret": SECRET, "secret_sha256": "0" * 64}, "give either secret or secret_sha256"),
])
def test_inline_key_errors_name_the_field_and_never_echo_the_secret(key: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(RouterSettings, auth={"keys": [key]})
    assert message in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("name", ["OPSCALE_ROUTER_AUTH", "OPSCALE_ROUTER_AUTH__KEYS"])
def test_malformed_json_in_the_environment_is_named_without_its_value(monkeypatch: pytest.MonkeyPatch,
                                                                      name: str) -> None:
    monkeypatch.setenv(name, '{"keys": [{"id": "a", "secret": "' + SECRET + '"}')
    with pytest.raises(SettingsError) as info:
        load_settings(RouterSettings)
    assert "'auth'" in str(info.value) and "not valid JSON" in str(info.value)
    assert SECRET not in str(info.value)
