"""The live event bus: NATS JetStream with protobuf payloads.

One stream per kind of event (heartbeat, routerload, records, windows, poolutil, forecasts, kvevents, plans), created or
updated at start-up with retention limits by age and size; the plans stream keeps the last N plans per subject so
`last()` can read the newest plan. Events go out as `(type header, protobuf payload)` through the codec,
with `Nats-Msg-Id` for JetStream's de-duplication window and W3C trace context in the headers.

Consumers are durable pull consumers. A fetch loop pulls at most `max_pending` messages ahead of the
handler into a bounded queue (back-pressure, never a silent drop); each message is acked after its async
handler returns, nak'ed with a growing delay when it raises or times out, and terminated (counted as
dead-lettered) once it has been delivered `max_deliveries` times. Delivery is at least once: handlers
de-duplicate (the design keys commands and plans by epoch and id).

A `namespace` prefixes every subject and stream: namespace "t3f2" publishes `opscale.records.eu` as
`t3f2.opscale.records.eu` into stream `T3F2_OPSCALE_RECORDS`, so tests and stacks can share one server.
Handlers see subjects without the namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Counter

from opscale.runtime.live import codec, telemetry
from opscale.runtime.live.redact import redact_url
from opscale.services import subjects

__all__ = [
    "DEFAULT_STREAMS",
    "TYPE_HEADER",
    "BusError",
    "durable_name",
    "Delivery",
    "Handler",
    "NatsBus",
    "PublishAck",
    "StreamSpec",
    "Subscription",
    "SubscriptionStats",
]

log = logging.getLogger(__name__)

TYPE_HEADER = "Opscale-Type"
"""Header naming the codec type of the payload."""

_MIB = 1024 * 1024
_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_DURABLE_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def durable_name(*parts: str) -> str:
    """A durable consumer's name made of `parts` (service, identity, kind, namespace): characters JetStream
    refuses become '_', and a name over 64 characters keeps its start and a hash of the whole, so two
    long identities (pod names run to 63) never truncate to the same consumer."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", "-".join(p for p in parts if p))
    if len(name) <= 64:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"{name[:51]}-{digest}"


class BusError(RuntimeError):
    """The bus could not do what was asked (server unreachable, no stream for a subject, ...)."""


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """Retention of one kind of event. `kind` is the subject token after `opscale.`."""

    kind: str
    name: str  # stream name suffix: OPSCALE_<name>
    max_age_s: float | None
    max_bytes: int | None
    max_msgs_per_subject: int | None = None
    duplicate_window_s: float = 120.0
    storage: Literal["file", "memory"] = "file"


DEFAULT_STREAMS: tuple[StreamSpec, ...] = (
    # Heartbeats only matter while fresh; a few per agent are kept for debugging.
    StreamSpec("heartbeat", "HEARTBEATS", max_age_s=600.0, max_bytes=64 * _MIB, max_msgs_per_subject=100),
    # A router's held requests: a leading signal that is stale within seconds.
    StreamSpec("routerload", "ROUTERLOAD", max_age_s=600.0, max_bytes=64 * _MIB, max_msgs_per_subject=100),
    # Request records feed the aggregator; a day lets a restarted aggregator rebuild its windows.
    StreamSpec("records", "RECORDS", max_age_s=86_400.0, max_bytes=1024 * _MIB),
    StreamSpec("windows", "WINDOWS", max_age_s=7 * 86_400.0, max_bytes=256 * _MIB),
    # Per-pool utilisation windows (the aggregator's, from heartbeats): on a kind of their own, so that
    # the windows' consumers (forecaster, planner) receive only the request windows they read.
    StreamSpec("poolutil", "POOLUTIL", max_age_s=7 * 86_400.0, max_bytes=128 * _MIB),
    StreamSpec("forecasts", "FORECASTS", max_age_s=7 * 86_400.0, max_bytes=128 * _MIB),
    # The engines' KV events (opscale.services.node_agent's forwarder, one batch per instance per tick): a
    # router's prefix index follows them as they come, and one that starts reads the last minutes back
    # (the blocks still cached then). Kept in memory: they are many, small and soon stale.
    StreamSpec("kvevents", "KVEVENTS", max_age_s=300.0, max_bytes=256 * _MIB, storage="memory"),
    # Plans never expire by age: an agent that starts must find the newest one.
    StreamSpec("plans", "PLANS", max_age_s=None, max_bytes=64 * _MIB, max_msgs_per_subject=100),
)


@dataclass(frozen=True, slots=True)
class PublishAck:
    """JetStream's answer to a publish. `duplicate` is True when `msg_id` was seen within the window."""

    stream: str
    seq: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event handed to a subscriber. `subject` is without the bus namespace."""

    subject: str
    event: Any
    type_name: str
    headers: Mapping[str, str]
    num_delivered: int
    stream_seq: int
    msg_id: str | None


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SubscriptionStats:
    """Exact accounting of one subscription since it started."""

    received: int
    acked: int
    nacked: int
    dead_lettered: int
    decode_errors: int
    pending: int


@dataclass(slots=True)
class _Counts:
    received: int = 0
    acked: int = 0
    nacked: int = 0
    dead_lettered: int = 0
    decode_errors: int = 0


@dataclass(frozen=True, slots=True)
class _Metrics:
    published: Counter
    consumed: Counter

    @staticmethod
    def create(registry: CollectorRegistry) -> _Metrics:
        return _Metrics(
            published=Counter("opscale_bus_published", "Events published on the bus", ["kind"],
                              registry=registry),
            consumed=Counter("opscale_bus_consumed", "Events taken from the bus, by outcome",
                             ["durable", "outcome"], registry=registry),
        )


class Subscription:
    """A running durable consumer: a fetch loop, a bounded queue and `concurrency` handler workers."""

    def __init__(self, bus: NatsBus, psub: JetStreamContext.PullSubscription, durable: str, handler: Handler,
                 *, max_pending: int, max_deliveries: int, handler_timeout_s: float, concurrency: int,
                 fetch_batch: int, fetch_wait_s: float, retry_base_s: float, retry_max_s: float,
                 restore: Callable[[], Awaitable[None]] | None = None) -> None:
        self.durable = durable
        self._bus = bus
        self._psub = psub
        self._restore = restore
        self._handler = handler
        self._max_pending = max_pending
        self._max_deliveries = max_deliveries
        self._handler_timeout_s = handler_timeout_s
        self._fetch_batch = fetch_batch
        self._fetch_wait_s = fetch_wait_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._queue: asyncio.Queue[Msg] = asyncio.Queue(maxsize=max_pending)
        # Messages fetched and not yet settled (queued or in a handler); bounded by max_pending.
        self._outstanding = 0
        self._room = asyncio.Condition()
        self._counts = _Counts()
        self._stopping = False
        self._fetcher = asyncio.create_task(self._fetch_loop(), name=f"bus-fetch-{durable}")
        self._workers = [asyncio.create_task(self._work(), name=f"bus-worker-{durable}-{i}")
                         for i in range(concurrency)]

    def stats(self) -> SubscriptionStats:
        c = self._counts
        return SubscriptionStats(received=c.received, acked=c.acked, nacked=c.nacked,
                                 dead_lettered=c.dead_lettered, decode_errors=c.decode_errors,
                                 pending=self._outstanding)

    async def stop(self, timeout_s: float = 5.0) -> int:
        """Stop fetching, let queued messages finish within `timeout_s`, then cancel the workers.

        Returns how many fetched messages were left unsettled; JetStream redelivers them to the
        durable consumer after its ack wait, so nothing is lost.
        """
        if self._stopping:
            return 0
        self._stopping = True
        self._fetcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._fetcher
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        for w in self._workers:
            w.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        left = self._outstanding
        with contextlib.suppress(Exception):
            await self._psub.unsubscribe()
        self._bus._forget(self)
        if left:
            log.warning("bus consumer %s stopped with %d unsettled messages (they will be redelivered)",
                        self.durable, left)
        return left

    async def _fetch_loop(self) -> None:
        failures = 0
        while not self._stopping:
            async with self._room:
                await self._room.wait_for(lambda: self._outstanding < self._max_pending)
                room = self._max_pending - self._outstanding
            try:
                msgs = await self._psub.fetch(min(room, self._fetch_batch), timeout=self._fetch_wait_s)
            except (nats.errors.TimeoutError, TimeoutError):
                # an empty fetch: nothing arrived within fetch_wait_s (nats-py raises either kind)
                failures = 0
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnecting servers raise many kinds; retry all
                failures += 1
                delay_s = min(self._retry_max_s, self._retry_base_s * 2 ** min(failures, 10))
                log.warning("bus consumer %s: fetch failed (%r); retrying in %.2fs", self.durable, exc, delay_s)
                await asyncio.sleep(delay_s)
                if isinstance(exc, nats.js.errors.ServiceUnavailableError) and self._restore is not None \
                        and self._bus.connected:
                    # Connected, yet nobody answers the pull: the server lost the consumer or its stream
                    # (a restarted NATS loses memory-stored streams). Create both again; idempotent.
                    try:
                        await self._restore()
                        log.warning("bus consumer %s: stream and consumer created again", self.durable)
                    except Exception as restore_exc:  # noqa: BLE001 - retried on the next failure
                        log.warning("bus consumer %s: could not create it again (%r)", self.durable, restore_exc)
                continue
            failures = 0
            for msg in msgs:
                self._outstanding += 1
                self._counts.received += 1
                self._queue.put_nowait(msg)  # never full: outstanding <= max_pending == maxsize

    async def _work(self) -> None:
        while True:
            msg = await self._queue.get()
            try:
                await self._settle(msg)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - an ack that fails is redelivered by the server
                log.exception("bus consumer %s: settling a message failed", self.durable)
            finally:
                self._queue.task_done()
                async with self._room:
                    self._outstanding -= 1
                    self._room.notify_all()

    async def _settle(self, msg: Msg) -> None:
        try:
            delivery = self._bus._delivery(msg)
        except codec.CodecError as exc:
            # Redelivery cannot fix a payload; terminate it so it stops occupying the consumer.
            self._counts.decode_errors += 1
            self._bus._count_consumed(self.durable, "decode_error")
            log.error("bus consumer %s: dropping undecodable message seq=%d on %s: %s",
                      self.durable, msg.metadata.sequence.stream, msg.subject, exc)
            await msg.term()
            return
        parent = telemetry.extract_nats_headers(delivery.headers)
        with self._bus._tracer.start_as_current_span(
                f"consume {subjects.kind_of(delivery.subject) or delivery.subject}", context=parent,
                kind=SpanKind.CONSUMER,
                attributes={"messaging.system": "nats", "messaging.destination.name": delivery.subject,
                            "messaging.consumer.group.name": self.durable,
                            "messaging.message.delivery_count": delivery.num_delivered}) as span:
            try:
                async with asyncio.timeout(self._handler_timeout_s):
                    await self._handler(delivery)
            except Exception as exc:  # noqa: BLE001 - any handler failure means "retry this message"
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
                await self._failed(msg, delivery, exc)
                return
        await msg.ack()
        self._counts.acked += 1
        self._bus._count_consumed(self.durable, "acked")

    async def _failed(self, msg: Msg, delivery: Delivery, exc: Exception) -> None:
        what = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
        if delivery.num_delivered >= self._max_deliveries:
            self._counts.dead_lettered += 1
            self._bus._count_consumed(self.durable, "dead_lettered")
            log.error("bus consumer %s: handler %s on %s seq=%d, delivery %d of %d; giving up",
                      self.durable, what, delivery.subject, delivery.stream_seq, delivery.num_delivered,
                      self._max_deliveries)
            await msg.term()
            return
        delay_s = min(self._retry_max_s, self._retry_base_s * 2 ** (delivery.num_delivered - 1))
        self._counts.nacked += 1
        self._bus._count_consumed(self.durable, "nacked")
        log.warning("bus consumer %s: handler %s on %s seq=%d, delivery %d of %d; redelivering in %.2fs",
                    self.durable, what, delivery.subject, delivery.stream_seq, delivery.num_delivered,
                    self._max_deliveries, delay_s)
        await msg.nak(delay=delay_s)


@dataclass(slots=True)
class _Conn:
    nc: NatsClient
    js: JetStreamContext
    subs: list[Subscription] = field(default_factory=list)


class NatsBus:
    """Publish and consume opscale events on NATS JetStream. See the module docstring."""

    def __init__(self, namespace: str = "", *, streams: Sequence[StreamSpec] = DEFAULT_STREAMS,
                 tracer_provider: trace.TracerProvider | None = None, registry: CollectorRegistry | None = None,
                 request_timeout_s: float = 5.0) -> None:
        if namespace and not _NAMESPACE_RE.match(namespace):
            raise ValueError(f"bus namespace must match {_NAMESPACE_RE.pattern} (lower case, so stream names "
                             f"cannot collide), got {namespace!r}")
        kinds = [s.kind for s in streams]
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"bus streams: each kind needs exactly one stream, got {kinds}")
        self.namespace = namespace
        self._streams = {s.kind: s for s in streams}
        self._request_timeout_s = request_timeout_s
        self._tracer = telemetry.tracer(tracer_provider, "opscale.bus")
        self._metrics = _Metrics.create(registry) if registry is not None else None
        self._conn: _Conn | None = None

    # -- names -------------------------------------------------------------------------------------

    def subject(self, subject: str) -> str:
        """The subject on the wire: the namespace prefixed."""
        return f"{self.namespace}.{subject}" if self.namespace else subject

    def strip_namespace(self, wire_subject: str) -> str:
        prefix = f"{self.namespace}." if self.namespace else ""
        return wire_subject[len(prefix):] if prefix and wire_subject.startswith(prefix) else wire_subject

    def _delivery(self, msg: Msg) -> Delivery:
        """A JetStream message as the handlers see it; CodecError when its payload cannot be decoded."""
        headers = dict(msg.headers or {})
        meta = msg.metadata
        type_name = headers.get(TYPE_HEADER, "")
        return Delivery(subject=self.strip_namespace(msg.subject), event=codec.decode(type_name, msg.data),
                        type_name=type_name, headers=headers, num_delivered=meta.num_delivered,
                        stream_seq=meta.sequence.stream, msg_id=headers.get("Nats-Msg-Id"))

    def stream_name(self, kind: str) -> str:
        spec = self._streams.get(kind)
        if spec is None:
            raise BusError(f"no stream for kind {kind!r}; streams exist for {', '.join(sorted(self._streams))}")
        ns = self.namespace.upper().replace("-", "_") + "_" if self.namespace else ""
        return f"{ns}{subjects.PREFIX.upper()}_{spec.name}"

    def stream_names(self) -> list[str]:
        return [self.stream_name(kind) for kind in self._streams]

    def stream_for(self, subject: str) -> str:
        """The stream holding `subject` (a subject or filter without the namespace)."""
        kind = subjects.kind_of(subject)
        if not kind:
            raise BusError(f"subject {subject!r} is not an opscale subject ({subjects.PREFIX}.<kind>...)")
        return self.stream_name(kind)

    # -- connection ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and self._conn.nc.is_connected

    async def connect(self, url: str, name: str, *, connect_timeout_s: float = 10.0,
                      reconnect_wait_s: float = 1.0, ensure_streams: bool = True,
                      options: Mapping[str, Any] | None = None) -> None:
        """Connect (giving up after `connect_timeout_s`), then reconnect forever on later losses; create
        or update the streams unless `ensure_streams` is False. `options`: nats-py connect arguments
        for credentials and TLS (opscale.runtime.live.credentials.nats_connect_options)."""
        if self._conn is not None:
            raise BusError("NatsBus.connect: already connected")
        nc = NatsClient()
        shown = redact_url(url)  # never a password in a log line or an error

        async def on_error(exc: Exception) -> None:
            log.warning("nats %s: %s", shown, exc)

        async def on_disconnected() -> None:
            # close() detaches the connection before draining it; only an unexpected loss is news.
            if self._conn is not None:
                log.warning("nats %s: disconnected; reconnecting", shown)

        async def on_reconnected() -> None:
            log.info("nats %s: reconnected", shown)

        try:
            async with asyncio.timeout(connect_timeout_s):
                await nc.connect(servers=[url], name=name, error_cb=on_error, disconnected_cb=on_disconnected,
                                 reconnected_cb=on_reconnected, allow_reconnect=True,
                                 max_reconnect_attempts=-1, reconnect_time_wait=reconnect_wait_s,
                                 connect_timeout=max(1, int(min(connect_timeout_s, 5.0))),
                                 ping_interval=10, max_outstanding_pings=3, **dict(options or {}))
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            raise BusError(f"cannot connect to NATS at {shown} within {connect_timeout_s}s: {exc!r}") from None
        self._conn = _Conn(nc=nc, js=nc.jetstream(timeout=self._request_timeout_s))
        if ensure_streams:
            try:
                await self.ensure_streams()
            except BaseException:
                # Start-up rolls back what it acquired.
                await self.close()
                raise

    def _js(self) -> JetStreamContext:
        if self._conn is None:
            raise BusError("NatsBus is not connected; call connect() first")
        return self._conn.js

    def _stream_config(self, spec: StreamSpec) -> StreamConfig:
        return StreamConfig(
            name=self.stream_name(spec.kind),
            description=f"opscale {spec.kind} events" + (f" (namespace {self.namespace})" if self.namespace else ""),
            subjects=[self.subject(f"{subjects.PREFIX}.{spec.kind}.>")],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_age=spec.max_age_s if spec.max_age_s is not None else 0,
            max_bytes=spec.max_bytes if spec.max_bytes is not None else -1,
            max_msgs_per_subject=spec.max_msgs_per_subject if spec.max_msgs_per_subject is not None else -1,
            duplicate_window=spec.duplicate_window_s,
            storage=StorageType.FILE if spec.storage == "file" else StorageType.MEMORY,
        )

    async def ensure_streams(self) -> list[str]:
        """Create each stream, or update it when it exists (idempotent). Returns the stream names."""
        js = self._js()
        names = []
        for spec in self._streams.values():
            config = self._stream_config(spec)
            try:
                await js.stream_info(config.name)
            except nats.js.errors.NotFoundError:
                await js.add_stream(config)
            else:
                await js.update_stream(config)
            names.append(config.name)
        return names

    async def delete_streams(self) -> int:
        """Delete this namespace's streams (tests and teardown). Refused for the default namespace so a
        test can never wipe a production stack. Returns how many existed."""
        if not self.namespace:
            raise BusError("delete_streams is refused for the default namespace")
        js = self._js()
        deleted = 0
        for name in self.stream_names():
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_stream(name)
                deleted += 1
        return deleted

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop every subscription (letting queued work finish), then drain and close the connection."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for sub in list(conn.subs):
            await sub.stop(timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                await conn.nc.drain()
        except Exception as exc:  # noqa: BLE001 - shutdown releases what it can and reports the rest
            log.warning("nats drain did not finish cleanly (%r); closing", exc)
            with contextlib.suppress(Exception):
                await conn.nc.close()

    def _forget(self, sub: Subscription) -> None:
        if self._conn is not None and sub in self._conn.subs:
            self._conn.subs.remove(sub)

    def _count_consumed(self, durable: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.consumed.labels(durable=durable, outcome=outcome).inc()

    # -- publish / last --------------------------------------------------------------------------

    async def publish(self, subject: str, event: Any, msg_id: str | None = None,
                      headers: Mapping[str, str] | None = None, *, timeout_s: float | None = None) -> PublishAck:
        """Publish `event` on `subject` and wait for JetStream to store it.

        `msg_id` makes the publish idempotent within the stream's duplicate window (a retried publish
        returns `duplicate=True` and stores nothing). Raises CodecError for an event that cannot be
        encoded and BusError when the server does not confirm within the timeout.
        """
        js = self._js()
        type_name, payload = codec.encode(event)
        kind = subjects.kind_of(subject)
        stream = self.stream_for(subject)
        wire = self.subject(subject)
        with self._tracer.start_as_current_span(
                f"publish {kind}", kind=SpanKind.PRODUCER,
                attributes={"messaging.system": "nats", "messaging.destination.name": subject,
                            "opscale.event.type": type_name}):
            hdrs = telemetry.inject_nats_headers(dict(headers or {}))
            hdrs[TYPE_HEADER] = type_name
            if msg_id is not None:
                hdrs["Nats-Msg-Id"] = msg_id
            try:
                ack = await js.publish(wire, payload, timeout=timeout_s or self._request_timeout_s,
                                       stream=stream, headers=hdrs)
            except nats.errors.TimeoutError:
                raise BusError(f"publish to {subject!r}: no confirmation from JetStream within "
                               f"{timeout_s or self._request_timeout_s}s") from None
            except nats.js.errors.NoStreamResponseError:
                raise BusError(f"publish to {subject!r}: no stream {stream} answers; "
                               f"was ensure_streams() run?") from None
            except nats.errors.Error as exc:
                # Closed or reconnecting connection, a JetStream API error: the caller decides to retry.
                raise BusError(f"publish to {subject!r} failed: {exc!r}") from None
        if self._metrics is not None:
            self._metrics.published.labels(kind=kind).inc()
        return PublishAck(stream=ack.stream, seq=ack.seq, duplicate=bool(ack.duplicate))

    async def last(self, subject: str) -> Any | None:
        """The newest event stored under exactly `subject` (e.g. the current plan), or None."""
        js = self._js()
        stream = self.stream_for(subject)
        try:
            raw = await js.get_last_msg(stream, self.subject(subject))
        except nats.js.errors.NotFoundError:
            return None
        except nats.errors.Error as exc:
            raise BusError(f"reading the last message of {subject!r} failed: {exc!r}") from None
        headers = dict(raw.headers or {})
        return codec.decode(headers.get(TYPE_HEADER, ""), raw.data or b"")

    # -- replay --------------------------------------------------------------------------------------

    async def replay(self, subject_filter: str, since_s: float, handler: Handler, *, batch: int = 500,
                     fetch_wait_s: float = 2.0) -> int:
        """Hand `handler` every event stored under `subject_filter` since `since_s` (Unix seconds, by the
        time the server stored it), in stream order, and return how many there were: a restarted service
        rebuilds its state (windows, series) from what the stream still holds before it follows on.

        Reads through a consumer of its own that acknowledges nothing and is deleted afterwards (the
        server removes it anyway once idle), so no durable consumer's position moves. An undecodable
        event is logged and skipped; a handler that raises stops the replay with that error.
        """
        js = self._js()
        stream = self.stream_for(subject_filter)
        name = f"replay-{uuid.uuid4().hex[:20]}"
        config = ConsumerConfig(
            name=name, deliver_policy=DeliverPolicy.BY_START_TIME,
            opt_start_time=datetime.fromtimestamp(max(0.0, since_s), tz=UTC), ack_policy=AckPolicy.NONE,
            filter_subject=self.subject(subject_filter), inactive_threshold=60.0, mem_storage=True,
        )
        try:
            info = await js.add_consumer(stream, config)
            psub = await js.pull_subscribe_bind(durable=name, stream=stream)
        except nats.errors.Error as exc:
            raise BusError(f"replaying {subject_filter!r}: cannot read stream {stream}: {exc!r}") from None
        pending, handled = int(info.num_pending or 0), 0
        try:
            while pending > 0:
                try:
                    msgs = await psub.fetch(min(batch, pending), timeout=fetch_wait_s)
                except (nats.errors.TimeoutError, TimeoutError):
                    break  # what was pending has expired from the stream meanwhile
                for msg in msgs:
                    pending = msg.metadata.num_pending
                    try:
                        delivery = self._delivery(msg)
                    except codec.CodecError as exc:
                        log.error("replay of %s: skipping undecodable message seq=%d: %s", subject_filter,
                                  msg.metadata.sequence.stream, exc)
                        continue
                    await handler(delivery)
                    handled += 1
        finally:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
            with contextlib.suppress(Exception):
                await js.delete_consumer(stream, name)
        return handled

    # -- subscribe ---------------------------------------------------------------------------------

    async def subscribe(self, subject_filter: str, durable: str, handler: Handler, max_pending: int = 1000, *,
                        max_deliveries: int = 5, ack_wait_s: float = 30.0, handler_timeout_s: float | None = None,
                        deliver: Literal["all", "new", "last_per_subject"] = "all", concurrency: int = 1,
                        fetch_batch: int = 100, fetch_wait_s: float = 1.0, retry_base_s: float = 0.5,
                        retry_max_s: float = 30.0, inactive_threshold_s: float | None = None) -> Subscription:
        """Consume `subject_filter` (e.g. `opscale.records.>`) through the durable consumer `durable`.

        The consumer is created or updated, so a restarted service resumes where it acked. `deliver`
        only matters when the consumer is first created. With `concurrency` 1 (the default) events are
        handled in stream order. A handler that raises or exceeds `handler_timeout_s` (default: 80% of
        `ack_wait_s`, so the nak beats the server's own redelivery) is retried after
        `retry_base_s * 2**(delivery-1)` seconds, up to `max_deliveries` deliveries.
        """
        if not _DURABLE_RE.match(durable):
            raise ValueError(f"durable name must match {_DURABLE_RE.pattern}, got {durable!r}")
        for label, value in (("max_pending", max_pending), ("max_deliveries", max_deliveries),
                             ("concurrency", concurrency), ("fetch_batch", fetch_batch)):
            if value < 1:
                raise ValueError(f"subscribe: {label} must be >= 1, got {value}")
        js = self._js()
        stream = self.stream_for(subject_filter)
        policy = {"all": DeliverPolicy.ALL, "new": DeliverPolicy.NEW,
                  "last_per_subject": DeliverPolicy.LAST_PER_SUBJECT}[deliver]
        config = ConsumerConfig(
            name=durable, durable_name=durable, deliver_policy=policy, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait_s, max_deliver=max_deliveries, max_ack_pending=max_pending,
            filter_subject=self.subject(subject_filter),
            # a consumer named after one process (a planner's own view) is removed by the server once
            # that process has been gone this long, instead of piling up across restarts
            inactive_threshold=inactive_threshold_s,
        )
        await js.add_consumer(stream, config)  # create or update: idempotent for the same config
        psub = await js.pull_subscribe_bind(durable=durable, stream=stream,
                                            pending_msgs_limit=max(2 * max_pending, 64))

        async def restore() -> None:
            await self.ensure_streams()
            await self._js().add_consumer(stream, config)

        sub = Subscription(self, psub, durable, handler, max_pending=max_pending, max_deliveries=max_deliveries,
                           handler_timeout_s=handler_timeout_s or 0.8 * ack_wait_s, concurrency=concurrency,
                           fetch_batch=fetch_batch, fetch_wait_s=fetch_wait_s, retry_base_s=retry_base_s,
                           retry_max_s=retry_max_s, restore=restore)
        if self._conn is None:  # closed while the consumer was being created
            await sub.stop(0)
            raise BusError("NatsBus was closed during subscribe")
        self._conn.subs.append(sub)
        return sub
