"""Tenants and keys: a key is found by its secret and only by it, only the secret's digest is held, a key
uses only its models, its request and token rates are enforced with the wait until there is room, a
request refused for tokens spends no request, and output tokens charged at the end hold back the next."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from opscale.routing.tenants import ApiKeySpec, KeyTable, Tenant

pytestmark = pytest.mark.unit

SECRET = "sk-team-a-0123456789"


def spec(**fields: object) -> ApiKeySpec:
    return ApiKeySpec.model_validate({"id": "team-a", "secret": SECRET, **fields})


def test_a_key_is_found_by_its_secret_and_a_wrong_or_near_one_finds_nothing() -> None:
    table = KeyTable([spec(), ApiKeySpec(id="team-b", secret_sha256=hashlib.sha256(b"sk-other-key-99").hexdigest())])
    tenant = table.authenticate(SECRET)
    assert tenant is not None and tenant.key_id == "team-a"
    other = table.authenticate("sk-other-key-99")
    assert other is not None and other.key_id == "team-b"
    for guess in ("", SECRET[:-1], SECRET + "0", SECRET.upper(), hashlib.sha256(SECRET.encode()).hexdigest()):
        assert table.authenticate(guess) is None
    assert table.tenant("team-b") is other and table.key_ids() == ["team-a", "team-b"]


def test_only_the_digest_of_a_secret_is_held() -> None:
    key = spec()
    assert key.secret is None and key.secret_sha256 == hashlib.sha256(SECRET.encode()).hexdigest()
    assert SECRET not in repr(key) and SECRET not in key.model_dump_json()


@pytest.mark.parametrize(("fields", "message"), [
    ({"secret_sha256": "ab" * 32}, "either secret or secret_sha256"),
    ({"secret": "short"}, "at least 8 characters"),
    ({"secret": None}, "give secret or secret_sha256"),
    ({"id": "team a"}, "id"),
    ({"request_burst": 5}, "request_burst needs requests_per_min"),
    ({"tokens_per_min": 0}, "tokens_per_min"),
    ({"default_tier": "gold.plated"}, "default_tier"),
])
def test_bad_keys_are_refused_naming_the_field_never_the_secret(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        spec(**fields)
    text = str(info.value)
    assert message in text
    for err in info.value.errors():
        assert SECRET not in repr(err.get("ctx", ""))


def test_duplicate_ids_and_duplicate_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="'team-a' is configured twice"):
        KeyTable([spec(), spec()])
    with pytest.raises(ValueError, match="'team-a' and 'team-b' have the same secret"):
        KeyTable([spec(), spec(id="team-b")])


def test_a_key_uses_only_its_models_and_every_model_without_a_list() -> None:
    limited = Tenant(spec(models=["Llama-3-8B"]))
    refusal = limited.admit("Llama-3-70B", 10, 0.0)
    assert refusal is not None and refusal.limit == "model" and "does not exist or you do not have access" in refusal.message
    assert limited.admit("Llama-3-8B", 10, 0.0) is None
    assert Tenant(spec()).admit("anything", 10, 0.0) is None


def test_request_rate_refuses_with_the_wait_until_the_bucket_has_room() -> None:
    tenant = Tenant(spec(requests_per_min=60), now_s=0.0)  # burst defaults to a minute's allowance
    assert all(tenant.admit("m", 1, 0.0) is None for _ in range(60))
    refusal = tenant.admit("m", 1, 0.0)
    assert refusal is not None and refusal.limit == "requests" and refusal.retry_after_s == pytest.approx(1.0)
    assert "requests per min (RPM): Limit 60" in refusal.message
    assert tenant.admit("m", 1, 1.0) is None


def test_a_request_refused_for_tokens_spends_no_request() -> None:
    tenant = Tenant(spec(requests_per_min=2, tokens_per_min=600, token_burst=100), now_s=0.0)
    assert tenant.admit("m", 100, 0.0) is None
    refusal = tenant.admit("m", 50, 0.0)
    assert refusal is not None and refusal.limit == "tokens" and refusal.retry_after_s == pytest.approx(5.0)
    assert tenant.requests is not None and tenant.requests.level(0.0) == pytest.approx(1.0)


def test_a_prompt_larger_than_the_burst_is_refused_without_a_useful_wait() -> None:
    tenant = Tenant(spec(tokens_per_min=1000))
    refusal = tenant.admit("m", 1001, 0.0)
    assert refusal is not None and refusal.retry_after_s == math.inf and "Request too large" in refusal.message


def test_output_tokens_settled_at_the_end_hold_back_the_next_request_and_a_refusal_is_refunded() -> None:
    tenant = Tenant(spec(tokens_per_min=600), now_s=0.0)  # 10 tokens/s, burst 600
    assert tenant.admit("m", 100, 0.0) is None
    tenant.settle(100, 700, ran=True, now_s=0.0)  # the answer was long: 200 in debt
    refusal = tenant.admit("m", 100, 0.0)
    assert refusal is not None and refusal.retry_after_s == pytest.approx(30.0)
    other = Tenant(spec(tokens_per_min=600), now_s=0.0)
    assert other.admit("m", 600, 0.0) is None
    other.settle(600, 0, ran=False, now_s=0.0)  # refused downstream: the prompt charge comes back
    assert other.admit("m", 600, 0.0) is None


@given(st.lists(st.tuples(st.floats(0, 5), st.integers(1, 200), st.integers(0, 400)), max_size=40))
def test_tokens_admitted_stay_within_the_rate_and_burst(requests: list[tuple[float, int, int]]) -> None:
    tenant = Tenant(spec(tokens_per_min=1200, token_burst=500), now_s=0.0)  # 20 tokens/s
    now, spent = 0.0, 0
    for gap, prompt, output in requests:
        now += gap
        if tenant.admit("m", prompt, now) is None:
            spent += prompt
            assert spent <= 20 * now + 500 + 1e-6
            tenant.settle(prompt, output, ran=True, now_s=now)
            spent += output
