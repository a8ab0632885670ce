"""Actions returned by services. The shell performs them: publish on the bus, call an agent, write the
store, start or stop an engine, forward a request to an instance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from opscale.model import InstanceSpec, OperatorReplicas, Request
from opscale.services.events import ApplyCommand, DrainCommand


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish an event on the bus under `subject` (namespaced `opscale.<kind>.<region>...`)."""

    subject: str
    event: Any


@dataclass(slots=True)  # once per request: not frozen for speed (see opscale.services.events), never mutated
class Dispatch:
    """Send a request to an instance. `reason` says why this instance was chosen. For a disaggregated
    model `instance_id` is the prefill instance and `decode_instance_id` the decode instance its KV goes
    to when the prefill is done; "" for a unified one."""

    request: Request
    instance_id: str
    region: str
    endpoint: str
    reason: str = ""
    decode_instance_id: str = ""
    decode_endpoint: str = ""


@dataclass(frozen=True, slots=True)
class Reject:
    """Refuse a request: no capacity, unknown model, or overload. `status` is the HTTP status to use."""

    request: Request
    status: int
    message: str
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class SendCommand:
    """Deliver a command to a node-agent (gRPC in the live runtime)."""

    agent_id: str
    command: ApplyCommand | DrainCommand


@dataclass(frozen=True, slots=True)
class Store:
    """Persist a value under a key (Redis in the live runtime). Values are plain JSON-able data."""

    key: str
    value: Any


@dataclass(frozen=True, slots=True)
class StartEngine:
    """Start an engine for `spec`; it becomes ready after `load_s` seconds."""

    spec: InstanceSpec
    load_s: float


@dataclass(frozen=True, slots=True)
class DrainEngine:
    """Stop admitting new requests to an engine; in-flight ones finish."""

    instance_id: str


@dataclass(frozen=True, slots=True)
class StopEngine:
    instance_id: str


@dataclass(frozen=True, slots=True)
class SetOperatorReplicas:
    """The operator replicas of a running engine changed, in place (no restart): `serving` take part in
    its iterations from now on; `provisioned` hold GPUs now (`serving` plus those still loading)."""

    instance_id: str
    serving: tuple[OperatorReplicas, ...]
    provisioned: tuple[OperatorReplicas, ...]


@dataclass(frozen=True, slots=True)
class Log:
    """A decision worth explaining: the reason is data, so reports and traces explain themselves."""

    service: str
    message: str
    fields: dict[str, Any] | None = None


Action = (Publish | Dispatch | Reject | SendCommand | Store | StartEngine | DrainEngine | StopEngine | SetOperatorReplicas
          | Log)
