"""The P/D hand-off protocol on the OpenAI API (vLLM's kv_transfer_params): the two step bodies, which step
an engine is asked for, and the simulated engine's hand-off read back, a bad field named."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opscale.openai.kv_transfer import (
    KV_TRANSFER_PARAMS,
    KvStep,
    SimKvHandoff,
    decode_body,
    handoff_params,
    kv_step,
    prefill_body,
)
from opscale.openai.schema import ApiError

pytestmark = pytest.mark.unit

BODY = {"model": "m", "prompt": "hi", "max_tokens": 64, "stream": True, "stream_options": {"include_usage": True}}


def test_the_prefill_step_asks_for_one_token_unstreamed_and_a_remote_decode() -> None:
    body = prefill_body(BODY)
    assert (body["max_tokens"], body["stream"], "stream_options" in body) == (1, False, False)
    assert kv_step(body) is KvStep.PREFILL and kv_step(BODY) is None
    assert BODY["max_tokens"] == 64  # the client's body is not changed


def test_the_decode_step_carries_the_prefill_answers_parameters_whole() -> None:
    answer = {"choices": [], KV_TRANSFER_PARAMS: {"do_remote_prefill": True, "remote_block_ids": [3, 4], "x": 1}}
    params = handoff_params(answer)
    assert params is not None
    body = decode_body(BODY, params)
    assert body[KV_TRANSFER_PARAMS] == answer[KV_TRANSFER_PARAMS] and kv_step(body) is KvStep.DECODE
    assert body["max_tokens"] == 64 and body["stream"] is True
    assert handoff_params({"choices": []}) is None and handoff_params([1]) is None


names = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)


@given(st.builds(SimKvHandoff, engine_id=names, host=names, region=names, s0=names | st.just(""),
                 s1=names | st.just(""), s2=names | st.just(""), sku=names, tp=st.integers(1, 64),
                 kv_bytes=st.integers(0, 1 << 40)))
def test_a_simulated_hand_off_reads_back_as_it_was_written(handoff: SimKvHandoff) -> None:
    params = handoff.params()
    assert kv_step({KV_TRANSFER_PARAMS: params}) is KvStep.DECODE
    assert SimKvHandoff.from_params(params) == handoff


@pytest.mark.parametrize(("field", "value"), [("opscale_kv_bytes", -1), ("opscale_tp", 0), ("opscale_tp", True),
                                              ("remote_host", ""), ("opscale_region", None), ("opscale_s1", 3)])
def test_a_bad_hand_off_field_is_a_400_naming_it(field: str, value: object) -> None:
    params = SimKvHandoff("p-1", "h", "eu", "leaf", "", "", "H100-80GB", 1, 10).params()
    error = SimKvHandoff.from_params({**params, field: value})
    assert isinstance(error, ApiError) and error.status == 400
    assert error.param == f"{KV_TRANSFER_PARAMS}.{field}" and repr(value) in error.message
