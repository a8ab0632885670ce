"""Trace-context helpers and tracer set-up, without any server."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from opscale.runtime.live import telemetry
from opscale.runtime.live.telemetry import setup_tracing

pytestmark = pytest.mark.unit


def test_propagation_helpers_round_trip_and_tolerate_junk() -> None:
    provider = setup_tracing("t", "memory")
    with provider.get_tracer("t").start_as_current_span("s") as span:
        headers = telemetry.inject_nats_headers({"Opscale-Type": "X"})
        metadata = telemetry.inject_grpc_metadata([("x-other", "1")])
    assert headers["Opscale-Type"] == "X" and "traceparent" in headers
    assert metadata[0] == ("x-other", "1") and all(k == k.lower() for k, _ in metadata)
    for ctx in (telemetry.extract_nats_headers({"TraceParent": headers["traceparent"]}),
                telemetry.extract_grpc_metadata(metadata)):
        assert trace.get_current_span(ctx).get_span_context().trace_id == span.get_span_context().trace_id
    for junk in (None, {}, {"traceparent": "not-a-trace"}):
        assert not trace.get_current_span(telemetry.extract_headers(junk)).get_span_context().is_valid
    with pytest.raises(ValueError, match="'jaeger'"):
        setup_tracing("t", "jaeger")  # type: ignore[arg-type]


def test_providers_are_independent_and_not_installed_globally() -> None:
    shared = InMemorySpanExporter()
    a = setup_tracing("router", "memory", memory_exporter=shared)
    b = setup_tracing("planner", "memory", memory_exporter=shared)
    none = setup_tracing("aggregator", "none")
    with a.get_tracer("x").start_as_current_span("from-a"), b.get_tracer("x").start_as_current_span("from-b"):
        pass
    with none.get_tracer("x").start_as_current_span("dropped"):
        pass
    finished = {s.name: s.resource.attributes["service.name"] for s in shared.get_finished_spans()}
    assert finished == {"from-a": "router", "from-b": "planner"}
    assert none.memory_exporter is None
    assert trace.get_tracer_provider() not in (a, b, none)
    # Without a provider, helpers fall back to OTel's global one (a no-op unless someone installs one).
    assert telemetry.tracer(None, "x") is not None
