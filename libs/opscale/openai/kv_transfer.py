"""The prefill/decode hand-off on the OpenAI API: vLLM's `kv_transfer_params` protocol.

A disaggregated request is served in two HTTP steps that the router drives, as vLLM's disaggregated
proxy (NixlConnector) and llm-d's P/D routing sidecar do:

1. prefill: the request goes to the prefill instance with `max_tokens: 1`, `stream: false` and
   `kv_transfer_params: {"do_remote_decode": true, ...}`. The prefill runs, its KV stays ready for
   pick-up, and the answer is a completion whose `kv_transfer_params` say where the KV is
   (`do_remote_prefill: true` and the prefill side's identity).
2. decode: the client's request goes to the decode instance with those `kv_transfer_params`; the decode
   engine pulls the KV from the prefill side, then streams the tokens.

The router treats the answer's parameters as opaque and passes them on whole, so a pair of real vLLM
servers with a KV connector runs the same protocol (the connector fills in its block ids and host).
opscale's simulated engine, which moves no bytes, adds where its prefill ran (`SimKvHandoff`): the KV
size, the host, its region and switches (S0/S1/S2), its SKU and TP, from which the decode side prices
the transfer over the path the two hosts share. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from opscale.openai.schema import ApiError, invalid_request

__all__ = ["KV_TRANSFER_PARAMS", "KvStep", "SimKvHandoff", "decode_body", "handoff_params", "kv_step",
           "prefill_body"]

KV_TRANSFER_PARAMS = "kv_transfer_params"


class KvStep(StrEnum):
    """Which half of a disaggregated request an engine is asked to serve."""

    PREFILL = "prefill"  # prefill, keep the KV for a remote decode (`do_remote_decode`)
    DECODE = "decode"  # decode from a KV prefilled remotely (`do_remote_prefill`)


def prefill_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body of step 1 from an engine request body: one token, not streamed, KV kept for a remote
    decode (the request fields vLLM's proxy sends, with the remote fields left for the engine to fill)."""
    out = dict(body)
    out.pop("stream_options", None)
    out.pop("max_completion_tokens", None)
    out["stream"] = False
    out["max_tokens"] = 1
    out[KV_TRANSFER_PARAMS] = {"do_remote_decode": True, "do_remote_prefill": False, "remote_engine_id": None,
                               "remote_block_ids": None, "remote_host": None, "remote_port": None}
    return out


def decode_body(body: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The body of step 2: the engine request with the prefill answer's `kv_transfer_params`, unchanged."""
    out = dict(body)
    out[KV_TRANSFER_PARAMS] = dict(params)
    return out


def handoff_params(answer: object) -> dict[str, Any] | None:
    """The `kv_transfer_params` of a prefill answer (a decoded JSON body); None when it has none."""
    if not isinstance(answer, dict):
        return None
    params = answer.get(KV_TRANSFER_PARAMS)
    return params if isinstance(params, dict) else None


def kv_step(body: Mapping[str, Any]) -> KvStep | None:
    """The step an engine request body asks for; None for a whole request (no `kv_transfer_params`, or
    ones that ask for neither step)."""
    params = body.get(KV_TRANSFER_PARAMS)
    if not isinstance(params, dict):
        return None
    if params.get("do_remote_decode") is True:
        return KvStep.PREFILL
    if params.get("do_remote_prefill") is True:
        return KvStep.DECODE
    return None


@dataclass(frozen=True, slots=True)
class SimKvHandoff:
    """Where a simulated prefill left its KV: what the decode side needs to price the transfer.

    `host` is the prefill's node-agent (a host), `region`, `s0`, `s1`, `s2` its network position ('' where
    not configured), `sku` and `tp` its instance's GPU and tensor-parallel degree (the links the KV shards
    move over), `kv_bytes` the prompt's KV."""

    engine_id: str
    host: str
    region: str
    s0: str
    s1: str
    s2: str
    sku: str
    tp: int
    kv_bytes: int

    def params(self) -> dict[str, Any]:
        """The prefill answer's `kv_transfer_params`: vLLM's fields, with opscale's own beside them."""
        return {"do_remote_decode": False, "do_remote_prefill": True, "remote_engine_id": self.engine_id,
                "remote_block_ids": [], "remote_host": self.host, "remote_port": None,
                "opscale_region": self.region, "opscale_s0": self.s0, "opscale_s1": self.s1, "opscale_s2": self.s2,
                "opscale_sku": self.sku, "opscale_tp": self.tp, "opscale_kv_bytes": self.kv_bytes}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> SimKvHandoff | ApiError:
        """Read a decode request's `kv_transfer_params`; a missing or bad field is a 400 naming it."""
        strings: dict[str, str] = {}
        for key, field in (("remote_engine_id", "engine_id"), ("remote_host", "host"), ("opscale_region", "region"),
                           ("opscale_s0", "s0"), ("opscale_s1", "s1"), ("opscale_s2", "s2"), ("opscale_sku", "sku")):
            value = params.get(key)
            if not isinstance(value, str) or (field in ("engine_id", "host", "region", "sku") and not value):
                return _bad(key, value, "a non-empty string" if field in ("engine_id", "host", "region", "sku")
                            else "a string")
            strings[field] = value
        numbers: dict[str, int] = {}
        for key, field, least in (("opscale_tp", "tp", 1), ("opscale_kv_bytes", "kv_bytes", 0)):
            value = params.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                return _bad(key, value, f"an integer >= {least}")
            numbers[field] = value
        return cls(**strings, **numbers)


def _bad(key: str, value: object, want: str) -> ApiError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return invalid_request(f"{KV_TRANSFER_PARAMS}.{key} must be {want}, got {shown}: a decode instance takes the "
                           f"parameters a prefill instance of this model answered with",
                           param=f"{KV_TRANSFER_PARAMS}.{key}")
