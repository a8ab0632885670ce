"""OpenTelemetry set-up for the live services and W3C trace-context propagation over NATS headers,
HTTP headers and gRPC metadata, so that a trace started at the router continues in the agent.

`setup_tracing` builds a TracerProvider and hands it back; it does not install it as OTel's global
provider, so several services can share one process (tests, `opscale up` in-process) without
clobbering each other. Components take the provider as an argument; `tracer()` falls back to OTel's
global (no-op unless someone installs one) when none is given.

The propagator is W3C Trace Context plus Baggage: `traceparent`, `tracestate`, `baggage` keys.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "Exporter",
    "OpscaleTracerProvider",
    "extract_grpc_metadata",
    "extract_headers",
    "extract_http_headers",
    "extract_nats_headers",
    "inject_grpc_metadata",
    "inject_headers",
    "inject_http_headers",
    "inject_nats_headers",
    "setup_tracing",
    "tracer",
]

Exporter = Literal["none", "console", "memory"]
EXPORTERS: tuple[str, ...] = ("none", "console", "memory")

# Stateless: one instance is shared, like OTel's own default propagator.
_PROPAGATOR = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])


class OpscaleTracerProvider(TracerProvider):
    """An SDK TracerProvider that also keeps the in-memory exporter it was built with (tests read the
    finished spans from it); `memory_exporter` is None for the other exporters."""

    def __init__(self, resource: Resource, memory_exporter: InMemorySpanExporter | None) -> None:
        # Services shut their provider down themselves; an atexit hook per provider would pile up in
        # test sessions that build many.
        super().__init__(resource=resource, shutdown_on_exit=False)
        self.memory_exporter = memory_exporter


def setup_tracing(service_name: str, exporter: Exporter = "none", *,
                  memory_exporter: InMemorySpanExporter | None = None,
                  service_instance_id: str | None = None) -> OpscaleTracerProvider:
    """A TracerProvider for one service.

    exporter "none" records nothing beyond propagation (spans are still created so context flows),
    "console" prints finished spans in batches, "memory" keeps them in `provider.memory_exporter`
    (pass your own exporter to share one between services). Call `provider.shutdown()` on exit.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"tracing exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if not service_name:
        raise ValueError("setup_tracing: service_name must not be empty")
    attributes: dict[str, str] = {"service.name": service_name}
    if service_instance_id:
        attributes["service.instance.id"] = service_instance_id
    kept = (memory_exporter or InMemorySpanExporter()) if exporter == "memory" else None
    provider = OpscaleTracerProvider(Resource.create(attributes), kept)
    if exporter == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(service_name=service_name)))
    elif kept is not None:
        # Synchronous export: a span is readable as soon as it ends, which tests rely on.
        provider.add_span_processor(SimpleSpanProcessor(kept))
    return provider


def tracer(provider: trace.TracerProvider | None, name: str) -> trace.Tracer:
    """A tracer from `provider`, or from OTel's global provider (a no-op by default) when None."""
    if provider is None:
        return trace.get_tracer(name)
    return provider.get_tracer(name)


def inject_headers(headers: dict[str, str] | None = None, context: Context | None = None) -> dict[str, str]:
    """Add the current (or given) trace context to a str->str header dict and return it."""
    carrier: dict[str, str] = dict(headers) if headers else {}
    _PROPAGATOR.inject(carrier, context=context)
    return carrier


def extract_headers(headers: Mapping[str, str] | None) -> Context:
    """The trace context carried by headers (case-insensitive keys); an empty context when none."""
    if not headers:
        return Context()
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    return _PROPAGATOR.extract(lowered)


# NATS headers and HTTP headers are both str->str maps; the names say where a call site uses them.
inject_nats_headers = inject_headers
extract_nats_headers = extract_headers
inject_http_headers = inject_headers
extract_http_headers = extract_headers


def inject_grpc_metadata(metadata: Iterable[tuple[str, str]] = (),
                         context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata with the trace context appended (gRPC requires lower-case keys)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=context)
    return (*tuple(metadata), *((k.lower(), v) for k, v in carrier.items()))


def extract_grpc_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The trace context in a call's invocation metadata (binary `-bin` entries are skipped)."""
    if not metadata:
        return Context()
    carrier = {k.lower(): v for k, v in metadata if isinstance(v, str)}
    return _PROPAGATOR.extract(carrier)
