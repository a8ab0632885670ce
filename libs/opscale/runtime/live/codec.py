"""Protobuf codec: the event dataclasses of opscale.services.events (and the model types they carry)
to and from the generated messages of proto/opscale/v1.

The live bus sends `(type name, payload)`: the type name travels in a header and says which dataclass to
rebuild. `encode` validates every field against its wire type (a negative count or a string that is not
UTF-8 is refused with the field's name) and `decode` validates what it rebuilds (unknown enum numbers,
duplicate plan entries, the dataclasses' own checks), so a malformed payload raises `CodecError` naming
the type, never a protobuf or dataclass traceback.

This module only converts; it does no I/O.

Example:
    >>> name, payload = encode(ForecastIssued("m", "eu", "chat", 60.0, 300.0, 2.0, 1.5, 2.5, "ewma"))
    >>> name
    'ForecastIssued'
    >>> decode(name, payload).mean_rps
    2.0
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message

from opscale.engine.outputs import EngineReport
from opscale.model import InstanceSpec, InstanceStatus, Plan, Request, RequestOutcome
from opscale.model.instance import InstanceState, Role
from opscale.services.events import (
    AgentHeartbeat,
    ApplyCommand,
    DispatchFailed,
    DrainCommand,
    ForecastIssued,
    PlanPublished,
    RequestArrived,
    RequestFinished,
    RouterLoad,
    WindowStats,
)
from opscale.v1 import control_pb2, events_pb2

__all__ = [
    "BATCH_TYPE",
    "CodecError",
    "TYPE_NAMES",
    "decode",
    "decode_records",
    "encode",
    "encode_records",
    "from_message",
    "to_message",
    "type_name_of",
]

BATCH_TYPE = "RequestRecordBatch"
"""Type name of a batch of RequestOutcome records (a tuple or list of them on the Python side)."""

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class CodecError(ValueError):
    """A value could not be encoded, or a payload could not be decoded; the message names the type
    and, where it is known, the field and the value."""


T = TypeVar("T")

# -- field checks on the way out: protobuf's own errors do not name the field -------------------------


def _str(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise CodecError(f"{field}: expected a string, got {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CodecError(f"{field}: string is not valid UTF-8 ({exc.reason}): {value!r}") from None
    return value


def _int(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise CodecError(f"{field}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise CodecError(f"{field}: {value!r} is outside the wire range [{lo}, {hi}]")
    return value


def _u32(value: Any, field: str) -> int:
    return _int(value, field, 0, _U32_MAX)


def _u64(value: Any, field: str) -> int:
    return _int(value, field, 0, _U64_MAX)


def _i64(value: Any, field: str) -> int:
    return _int(value, field, _I64_MIN, _I64_MAX)


def _float(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CodecError(f"{field}: expected a number, got {value!r}")
    return float(value)


def _opt_float(value: Any, field: str) -> float | None:
    return None if value is None else _float(value, field)


def _opt(msg: Message, field: str) -> float | None:
    """An `optional double` field: None when the sender left it unset."""
    return getattr(msg, field) if msg.HasField(field) else None


# -- enums ---------------------------------------------------------------------------------------------

_ROLE_TO_PB = {Role.UNIFIED: events_pb2.ROLE_UNIFIED, Role.PREFILL: events_pb2.ROLE_PREFILL,
               Role.DECODE: events_pb2.ROLE_DECODE}
_ROLE_FROM_PB = {v: k for k, v in _ROLE_TO_PB.items()}
_STATE_TO_PB = {
    InstanceState.LOADING: events_pb2.INSTANCE_STATE_LOADING,
    InstanceState.READY: events_pb2.INSTANCE_STATE_READY,
    InstanceState.DRAINING: events_pb2.INSTANCE_STATE_DRAINING,
    InstanceState.STOPPED: events_pb2.INSTANCE_STATE_STOPPED,
}
_STATE_FROM_PB = {v: k for k, v in _STATE_TO_PB.items()}


def _enum_out(value: Any, table: dict[Any, int], field: str) -> int:
    try:
        return table[value]
    except (KeyError, TypeError):
        allowed = ", ".join(str(k) for k in table)
        raise CodecError(f"{field}: {value!r} is not one of {allowed}") from None


def _enum_in(number: int, table: dict[int, T], field: str) -> T:
    # proto3 enums are open: a newer peer may send a number this build does not know.
    try:
        return table[number]
    except KeyError:
        raise CodecError(f"{field}: unknown enum number {number}") from None


# -- model types -----------------------------------------------------------------------------------------


def _spec_to_pb(spec: InstanceSpec, field: str = "InstanceSpec") -> events_pb2.InstanceSpec:
    return events_pb2.InstanceSpec(
        instance_id=_str(spec.instance_id, f"{field}.instance_id"),
        model=_str(spec.model, f"{field}.model"),
        sku=_str(spec.sku, f"{field}.sku"),
        tp=_u32(spec.tp, f"{field}.tp"),
        role=_enum_out(spec.role, _ROLE_TO_PB, f"{field}.role"),
    )


def _spec_from_pb(msg: events_pb2.InstanceSpec) -> InstanceSpec:
    return InstanceSpec(instance_id=msg.instance_id, model=msg.model, sku=msg.sku, tp=msg.tp,
                        role=_enum_in(msg.role, _ROLE_FROM_PB, "InstanceSpec.role"))


def _status_to_pb(st: InstanceStatus, field: str = "InstanceStatus") -> events_pb2.InstanceStatus:
    return events_pb2.InstanceStatus(
        instance_id=_str(st.instance_id, f"{field}.instance_id"),
        model=_str(st.model, f"{field}.model"),
        sku=_str(st.sku, f"{field}.sku"),
        tp=_u32(st.tp, f"{field}.tp"),
        role=_enum_out(st.role, _ROLE_TO_PB, f"{field}.role"),
        state=_enum_out(st.state, _STATE_TO_PB, f"{field}.state"),
        endpoint=_str(st.endpoint, f"{field}.endpoint"),
        queued=_u32(st.queued, f"{field}.queued"),
        running=_u32(st.running, f"{field}.running"),
        outstanding_tokens=_u64(st.outstanding_tokens, f"{field}.outstanding_tokens"),
        kv_used_frac=_float(st.kv_used_frac, f"{field}.kv_used_frac"),
        tokens_per_s=_float(st.tokens_per_s, f"{field}.tokens_per_s"),
        busy_frac=_float(st.busy_frac, f"{field}.busy_frac"),
        power_w=_float(st.power_w, f"{field}.power_w"),
    )


def _status_from_pb(msg: events_pb2.InstanceStatus) -> InstanceStatus:
    return InstanceStatus(
        instance_id=msg.instance_id, model=msg.model, sku=msg.sku, tp=msg.tp,
        role=_enum_in(msg.role, _ROLE_FROM_PB, "InstanceStatus.role"),
        state=_enum_in(msg.state, _STATE_FROM_PB, "InstanceStatus.state"),
        endpoint=msg.endpoint, queued=msg.queued, running=msg.running,
        outstanding_tokens=msg.outstanding_tokens, kv_used_frac=msg.kv_used_frac,
        tokens_per_s=msg.tokens_per_s, busy_frac=msg.busy_frac, power_w=msg.power_w,
    )


def _request_to_pb(req: Request, field: str = "Request") -> events_pb2.Request:
    return events_pb2.Request(
        request_id=_str(req.request_id, f"{field}.request_id"),
        model=_str(req.model, f"{field}.model"),
        tier=_str(req.tier, f"{field}.tier"),
        region=_str(req.region, f"{field}.region"),
        arrival_s=_float(req.arrival_s, f"{field}.arrival_s"),
        prompt_tokens=_u32(req.prompt_tokens, f"{field}.prompt_tokens"),
        output_tokens=_u32(req.output_tokens, f"{field}.output_tokens"),
        prefix_hashes=[_i64(h, f"{field}.prefix_hashes[{i}]") for i, h in enumerate(req.prefix_hashes)],
    )


def _request_from_pb(msg: events_pb2.Request) -> Request:
    return Request(request_id=msg.request_id, model=msg.model, tier=msg.tier, region=msg.region,
                   arrival_s=msg.arrival_s, prompt_tokens=msg.prompt_tokens,
                   output_tokens=msg.output_tokens, prefix_hashes=tuple(msg.prefix_hashes))


def _outcome_to_pb(out: RequestOutcome, field: str = "RequestOutcome") -> events_pb2.RequestRecord:
    msg = events_pb2.RequestRecord(
        request_id=_str(out.request_id, f"{field}.request_id"),
        model=_str(out.model, f"{field}.model"),
        tier=_str(out.tier, f"{field}.tier"),
        region=_str(out.region, f"{field}.region"),
        served_region=_str(out.served_region, f"{field}.served_region"),
        instance_id=_str(out.instance_id, f"{field}.instance_id"),
        arrival_s=_float(out.arrival_s, f"{field}.arrival_s"),
        prompt_tokens=_u32(out.prompt_tokens, f"{field}.prompt_tokens"),
        output_tokens=_u32(out.output_tokens, f"{field}.output_tokens"),
        status=_str(out.status, f"{field}.status"),
    )
    first = _opt_float(out.first_token_s, f"{field}.first_token_s")
    if first is not None:
        msg.first_token_s = first
    finish = _opt_float(out.finish_s, f"{field}.finish_s")
    if finish is not None:
        msg.finish_s = finish
    return msg


def _outcome_from_pb(msg: events_pb2.RequestRecord) -> RequestOutcome:
    return RequestOutcome(
        request_id=msg.request_id, model=msg.model, tier=msg.tier, region=msg.region,
        served_region=msg.served_region, instance_id=msg.instance_id, arrival_s=msg.arrival_s,
        first_token_s=_opt(msg, "first_token_s"), finish_s=_opt(msg, "finish_s"),
        prompt_tokens=msg.prompt_tokens, output_tokens=msg.output_tokens, status=msg.status,
    )


def _plan_to_pb(plan: Plan) -> events_pb2.Plan:
    msg = events_pb2.Plan(
        epoch=_u64(plan.epoch, "Plan.epoch"),
        created_s=_float(plan.created_s, "Plan.created_s"),
        reason=_str(plan.reason, "Plan.reason"),
    )
    # Pre-staging travels in the agent's AgentAssignment, so an agent it names must have one.
    strays = sorted(set(plan.prestage) - set(plan.assignments))
    if strays:
        raise CodecError(f"Plan.prestage: agents {strays} have no entry in Plan.assignments")
    for agent_id, specs in plan.assignments.items():
        where = f"Plan.assignments[{agent_id!r}]"
        msg.assignments.append(events_pb2.AgentAssignment(
            agent_id=_str(agent_id, f"{where} agent id"),
            region=_str(plan.agent_regions.get(agent_id, ""), f"Plan.agent_regions[{agent_id!r}]"),
            instances=[_spec_to_pb(s, f"{where}[{i}]") for i, s in enumerate(specs)],
            prestage=[_str(m, f"Plan.prestage[{agent_id!r}][{i}]")
                      for i, m in enumerate(plan.prestage.get(agent_id, ()))],
        ))
    for agent_id, region in plan.agent_regions.items():
        msg.agent_regions[_str(agent_id, "Plan.agent_regions key")] = _str(
            region, f"Plan.agent_regions[{agent_id!r}]")
    for key, weights in plan.routing_weights.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise CodecError(f"Plan.routing_weights: key must be (model, origin_region), got {key!r}")
        model, origin = key
        where = f"Plan.routing_weights[{key!r}]"
        rw = events_pb2.RoutingWeight(model=_str(model, f"{where} model"),
                                      origin_region=_str(origin, f"{where} origin_region"))
        for region, share in weights.items():
            rw.weights[_str(region, f"{where} region")] = _float(share, f"{where}[{region!r}]")
        msg.routing_weights.append(rw)
    for key, count in plan.vm_counts.items():
        if not (isinstance(key, tuple) and len(key) == 3):
            raise CodecError(f"Plan.vm_counts: key must be (region, sku, purchase), got {key!r}")
        region, sku, purchase = key
        where = f"Plan.vm_counts[{key!r}]"
        msg.vm_counts.append(events_pb2.VmCount(
            region=_str(region, f"{where} region"), sku=_str(sku, f"{where} sku"),
            # str() turns a Purchase (StrEnum) into its value; anything else is checked as is.
            purchase=_str(str(purchase) if isinstance(purchase, str) else purchase, f"{where} purchase"),
            count=_u32(count, where)))
    return msg


def _plan_from_pb(msg: events_pb2.Plan) -> Plan:
    assignments: dict[str, tuple[InstanceSpec, ...]] = {}
    prestage: dict[str, tuple[str, ...]] = {}
    agent_regions: dict[str, str] = dict(msg.agent_regions)
    for a in msg.assignments:
        if a.agent_id in assignments:
            raise CodecError(f"Plan.assignments: agent {a.agent_id!r} appears twice")
        assignments[a.agent_id] = tuple(_spec_from_pb(s) for s in a.instances)
        if a.prestage:
            prestage[a.agent_id] = tuple(a.prestage)
        # A producer that only fills AgentAssignment.region still gets its regions across.
        if a.region and a.agent_id not in agent_regions:
            agent_regions[a.agent_id] = a.region
    routing: dict[tuple[str, str], dict[str, float]] = {}
    for rw in msg.routing_weights:
        key = (rw.model, rw.origin_region)
        if key in routing:
            raise CodecError(f"Plan.routing_weights: {key!r} appears twice")
        routing[key] = dict(rw.weights)
    vms: dict[tuple[str, str, str], int] = {}
    for vc in msg.vm_counts:
        cell = (vc.region, vc.sku, vc.purchase)
        if cell in vms:
            raise CodecError(f"Plan.vm_counts: {cell!r} appears twice")
        vms[cell] = vc.count
    return Plan(epoch=msg.epoch, created_s=msg.created_s, assignments=assignments,
                agent_regions=agent_regions, routing_weights=routing, vm_counts=vms, reason=msg.reason,
                prestage=prestage)


# -- events ------------------------------------------------------------------------------------------------


def _heartbeat_to_pb(hb: AgentHeartbeat) -> events_pb2.AgentHeartbeat:
    return events_pb2.AgentHeartbeat(
        agent_id=_str(hb.agent_id, "AgentHeartbeat.agent_id"),
        region=_str(hb.region, "AgentHeartbeat.region"),
        sku=_str(hb.sku, "AgentHeartbeat.sku"),
        gpus_total=_u32(hb.gpus_total, "AgentHeartbeat.gpus_total"),
        address=_str(hb.address, "AgentHeartbeat.address"),
        epoch=_u64(hb.epoch, "AgentHeartbeat.epoch"),
        at_s=_float(hb.at_s, "AgentHeartbeat.at_s"),
        instances=[_status_to_pb(s, f"AgentHeartbeat.instances[{i}]") for i, s in enumerate(hb.instances)],
        terminating_at_s=(None if hb.terminating_at_s is None
                          else _float(hb.terminating_at_s, "AgentHeartbeat.terminating_at_s")),
        warm_models=[_str(m, f"AgentHeartbeat.warm_models[{i}]") for i, m in enumerate(hb.warm_models)],
    )


def _heartbeat_from_pb(msg: events_pb2.AgentHeartbeat) -> AgentHeartbeat:
    return AgentHeartbeat(agent_id=msg.agent_id, region=msg.region, sku=msg.sku, gpus_total=msg.gpus_total,
                          address=msg.address, epoch=msg.epoch, at_s=msg.at_s,
                          instances=tuple(_status_from_pb(s) for s in msg.instances),
                          terminating_at_s=msg.terminating_at_s if msg.HasField("terminating_at_s") else None,
                          warm_models=tuple(msg.warm_models))


_WINDOW_OPTIONAL = ("ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "e2e_p50_s", "e2e_p99_s",
                    "slo_attainment")


def _router_load_to_pb(rl: RouterLoad) -> events_pb2.RouterLoad:
    msg = events_pb2.RouterLoad(
        router_id=_str(rl.router_id, "RouterLoad.router_id"),
        region=_str(rl.region, "RouterLoad.region"),
        at_s=_float(rl.at_s, "RouterLoad.at_s"),
    )
    for model, pending in rl.pending_by_model.items():
        msg.pending_by_model[_str(model, "RouterLoad.pending_by_model key")] = _u32(
            pending, f"RouterLoad.pending_by_model[{model!r}]")
    return msg


def _router_load_from_pb(msg: events_pb2.RouterLoad) -> RouterLoad:
    return RouterLoad(router_id=msg.router_id, region=msg.region, at_s=msg.at_s,
                      pending_by_model=dict(msg.pending_by_model))


def _dispatch_failed_to_pb(e: DispatchFailed) -> events_pb2.DispatchFailed:
    return events_pb2.DispatchFailed(
        request=_request_to_pb(e.request, "DispatchFailed.request"),
        instance_id=_str(e.instance_id, "DispatchFailed.instance_id"),
        reason=_str(e.reason, "DispatchFailed.reason"),
        attempt=_u32(e.attempt, "DispatchFailed.attempt"),
    )


def _dispatch_failed_from_pb(msg: events_pb2.DispatchFailed) -> DispatchFailed:
    if not msg.HasField("request"):
        raise CodecError("DispatchFailed.request is missing")
    return DispatchFailed(request=_request_from_pb(msg.request), instance_id=msg.instance_id,
                          reason=msg.reason, attempt=msg.attempt)


def _window_to_pb(w: WindowStats) -> events_pb2.WindowStats:
    msg = events_pb2.WindowStats(
        model=_str(w.model, "WindowStats.model"),
        region=_str(w.region, "WindowStats.region"),
        tier=_str(w.tier, "WindowStats.tier"),
        window_s=_float(w.window_s, "WindowStats.window_s"),
        end_s=_float(w.end_s, "WindowStats.end_s"),
        requests=_u64(w.requests, "WindowStats.requests"),
        completed=_u64(w.completed, "WindowStats.completed"),
        arrival_rps=_float(w.arrival_rps, "WindowStats.arrival_rps"),
        prompt_tokens_per_s=_float(w.prompt_tokens_per_s, "WindowStats.prompt_tokens_per_s"),
        output_tokens_per_s=_float(w.output_tokens_per_s, "WindowStats.output_tokens_per_s"),
    )
    for name in _WINDOW_OPTIONAL:
        value = _opt_float(getattr(w, name), f"WindowStats.{name}")
        if value is not None:
            setattr(msg, name, value)
    return msg


def _window_from_pb(msg: events_pb2.WindowStats) -> WindowStats:
    optional = {name: _opt(msg, name) for name in _WINDOW_OPTIONAL}
    return WindowStats(model=msg.model, region=msg.region, tier=msg.tier, window_s=msg.window_s,
                       end_s=msg.end_s, requests=msg.requests, completed=msg.completed,
                       arrival_rps=msg.arrival_rps, prompt_tokens_per_s=msg.prompt_tokens_per_s,
                       output_tokens_per_s=msg.output_tokens_per_s, **optional)


def _forecast_to_pb(f: ForecastIssued) -> events_pb2.ForecastIssued:
    return events_pb2.ForecastIssued(
        model=_str(f.model, "ForecastIssued.model"),
        region=_str(f.region, "ForecastIssued.region"),
        tier=_str(f.tier, "ForecastIssued.tier"),
        at_s=_float(f.at_s, "ForecastIssued.at_s"),
        horizon_s=_float(f.horizon_s, "ForecastIssued.horizon_s"),
        mean_rps=_float(f.mean_rps, "ForecastIssued.mean_rps"),
        lo_rps=_float(f.lo_rps, "ForecastIssued.lo_rps"),
        hi_rps=_float(f.hi_rps, "ForecastIssued.hi_rps"),
        method=_str(f.method, "ForecastIssued.method"),
    )


def _forecast_from_pb(msg: events_pb2.ForecastIssued) -> ForecastIssued:
    return ForecastIssued(model=msg.model, region=msg.region, tier=msg.tier, at_s=msg.at_s,
                          horizon_s=msg.horizon_s, mean_rps=msg.mean_rps, lo_rps=msg.lo_rps,
                          hi_rps=msg.hi_rps, method=msg.method)


def _apply_to_pb(cmd: ApplyCommand) -> control_pb2.ApplyRequest:
    return control_pb2.ApplyRequest(
        agent_id=_str(cmd.agent_id, "ApplyCommand.agent_id"),
        epoch=_u64(cmd.epoch, "ApplyCommand.epoch"),
        command_id=_str(cmd.command_id, "ApplyCommand.command_id"),
        instances=[_spec_to_pb(s, f"ApplyCommand.instances[{i}]") for i, s in enumerate(cmd.instances)],
        prestage=[_str(m, f"ApplyCommand.prestage[{i}]") for i, m in enumerate(cmd.prestage)],
    )


def _apply_from_pb(msg: control_pb2.ApplyRequest) -> ApplyCommand:
    return ApplyCommand(agent_id=msg.agent_id, epoch=msg.epoch, command_id=msg.command_id,
                        instances=tuple(_spec_from_pb(s) for s in msg.instances), prestage=tuple(msg.prestage))


def _drain_to_pb(cmd: DrainCommand) -> control_pb2.DrainRequest:
    msg = control_pb2.DrainRequest(
        agent_id=_str(cmd.agent_id, "DrainCommand.agent_id"),
        instance_id=_str(cmd.instance_id, "DrainCommand.instance_id"),
        command_id=_str(cmd.command_id, "DrainCommand.command_id"),
    )
    deadline = _opt_float(cmd.deadline_s, "DrainCommand.deadline_s")
    if deadline is not None:
        msg.deadline_s = deadline
    return msg


def _drain_from_pb(msg: control_pb2.DrainRequest) -> DrainCommand:
    return DrainCommand(agent_id=msg.agent_id, instance_id=msg.instance_id, command_id=msg.command_id,
                        deadline_s=_opt(msg, "deadline_s"))


def _report_to_pb(r: EngineReport) -> events_pb2.EngineReport:
    if not isinstance(r.idle, bool):
        raise CodecError(f"EngineReport.idle: expected a bool, got {r.idle!r}")
    return events_pb2.EngineReport(
        instance_id=_str(r.instance_id, "EngineReport.instance_id"),
        queued=_u32(r.queued, "EngineReport.queued"),
        running=_u32(r.running, "EngineReport.running"),
        outstanding_tokens=_u64(r.outstanding_tokens, "EngineReport.outstanding_tokens"),
        kv_used_frac=_float(r.kv_used_frac, "EngineReport.kv_used_frac"),
        tokens_per_s=_float(r.tokens_per_s, "EngineReport.tokens_per_s"),
        busy_frac=_float(r.busy_frac, "EngineReport.busy_frac"),
        power_w=_float(r.power_w, "EngineReport.power_w"),
        idle=r.idle,
    )


def _report_from_pb(msg: events_pb2.EngineReport) -> EngineReport:
    return EngineReport(instance_id=msg.instance_id, queued=msg.queued, running=msg.running,
                        outstanding_tokens=msg.outstanding_tokens, kv_used_frac=msg.kv_used_frac,
                        tokens_per_s=msg.tokens_per_s, busy_frac=msg.busy_frac, power_w=msg.power_w,
                        idle=msg.idle)


def _batch_to_pb(outcomes: Sequence[Any]) -> events_pb2.RequestRecordBatch:
    records = []
    for i, out in enumerate(outcomes):
        if not isinstance(out, RequestOutcome):
            raise CodecError(f"{BATCH_TYPE}[{i}]: expected a RequestOutcome, got {type(out).__name__}")
        records.append(_outcome_to_pb(out, f"{BATCH_TYPE}[{i}]"))
    return events_pb2.RequestRecordBatch(records=records)


def _batch_from_pb(msg: events_pb2.RequestRecordBatch) -> tuple[RequestOutcome, ...]:
    return tuple(_outcome_from_pb(r) for r in msg.records)


# -- the registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    type_name: str
    message: type[Message]
    to_pb: Callable[[Any], Message]
    from_pb: Callable[[Any], Any]


_BY_NAME: dict[str, _Entry] = {}
_BY_CLASS: dict[type, _Entry] = {}


def _register(cls: type | None, type_name: str, message: type[Message],
              to_pb: Callable[[Any], Message], from_pb: Callable[[Any], Any]) -> None:
    entry = _Entry(type_name, message, to_pb, from_pb)
    _BY_NAME[type_name] = entry
    if cls is not None:
        _BY_CLASS[cls] = entry


_register(InstanceSpec, "InstanceSpec", events_pb2.InstanceSpec, _spec_to_pb, _spec_from_pb)
_register(InstanceStatus, "InstanceStatus", events_pb2.InstanceStatus, _status_to_pb, _status_from_pb)
_register(Request, "Request", events_pb2.Request, _request_to_pb, _request_from_pb)
_register(RequestOutcome, "RequestOutcome", events_pb2.RequestRecord, _outcome_to_pb, _outcome_from_pb)
_register(Plan, "Plan", events_pb2.Plan, _plan_to_pb, _plan_from_pb)
_register(RequestArrived, "RequestArrived", events_pb2.Request,
          lambda e: _request_to_pb(e.request, "RequestArrived.request"),
          lambda m: RequestArrived(_request_from_pb(m)))
_register(RequestFinished, "RequestFinished", events_pb2.RequestRecord,
          lambda e: _outcome_to_pb(e.outcome, "RequestFinished.outcome"),
          lambda m: RequestFinished(_outcome_from_pb(m)))
_register(AgentHeartbeat, "AgentHeartbeat", events_pb2.AgentHeartbeat, _heartbeat_to_pb, _heartbeat_from_pb)
_register(RouterLoad, "RouterLoad", events_pb2.RouterLoad, _router_load_to_pb, _router_load_from_pb)
_register(DispatchFailed, "DispatchFailed", events_pb2.DispatchFailed, _dispatch_failed_to_pb,
          _dispatch_failed_from_pb)
_register(WindowStats, "WindowStats", events_pb2.WindowStats, _window_to_pb, _window_from_pb)
_register(ForecastIssued, "ForecastIssued", events_pb2.ForecastIssued, _forecast_to_pb, _forecast_from_pb)
_register(PlanPublished, "PlanPublished", events_pb2.Plan,
          lambda e: _plan_to_pb(e.plan), lambda m: PlanPublished(_plan_from_pb(m)))
_register(ApplyCommand, "ApplyCommand", control_pb2.ApplyRequest, _apply_to_pb, _apply_from_pb)
_register(DrainCommand, "DrainCommand", control_pb2.DrainRequest, _drain_to_pb, _drain_from_pb)
_register(EngineReport, "EngineReport", events_pb2.EngineReport, _report_to_pb, _report_from_pb)
_register(None, BATCH_TYPE, events_pb2.RequestRecordBatch, _batch_to_pb, _batch_from_pb)

TYPE_NAMES: frozenset[str] = frozenset(_BY_NAME)
"""Every type name `decode` understands."""


def _entry_for(obj: Any) -> _Entry:
    if isinstance(obj, tuple | list):
        return _BY_NAME[BATCH_TYPE]
    try:
        return _BY_CLASS[type(obj)]
    except KeyError:
        raise CodecError(f"no codec for {type(obj).__name__}; known types: {', '.join(sorted(TYPE_NAMES))}") \
            from None


def type_name_of(obj: Any) -> str:
    """The wire type name of `obj` (a tuple or list of RequestOutcome is a `RequestRecordBatch`)."""
    return _entry_for(obj).type_name


def to_message(obj: Any) -> Message:
    """The protobuf message for `obj`. Raises CodecError naming the field that does not fit."""
    entry = _entry_for(obj)
    try:
        return entry.to_pb(obj)
    except CodecError as exc:
        raise CodecError(f"cannot encode {entry.type_name}: {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise CodecError(f"cannot encode {entry.type_name}: {exc}") from None


def from_message(type_name: str, msg: Message) -> Any:
    """Rebuild the dataclass of `type_name` from its protobuf message, validating it."""
    entry = _BY_NAME.get(type_name)
    if entry is None:
        raise CodecError(f"unknown type {type_name!r}; known types: {', '.join(sorted(TYPE_NAMES))}")
    if not isinstance(msg, entry.message):
        raise CodecError(f"{type_name}: expected a {entry.message.__name__} message, got {type(msg).__name__}")
    try:
        return entry.from_pb(msg)
    except CodecError as exc:
        raise CodecError(f"malformed {type_name}: {exc}") from None
    except (TypeError, ValueError) as exc:
        # The dataclasses validate themselves (tp in 1/2/4/8, positive token counts, ...).
        raise CodecError(f"malformed {type_name}: {exc}") from None


def encode(event: Any) -> tuple[str, bytes]:
    """`(type name, protobuf bytes)` for an event, a model object or a batch of RequestOutcome."""
    type_name = type_name_of(event)
    return type_name, to_message(event).SerializeToString(deterministic=True)


def decode(type_name: str, payload: bytes) -> Any:
    """The dataclass that `encode` produced `payload` from. Raises CodecError on malformed input."""
    entry = _BY_NAME.get(type_name)
    if entry is None:
        raise CodecError(f"unknown type {type_name!r}; known types: {', '.join(sorted(TYPE_NAMES))}")
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"malformed {type_name}: payload must be bytes, got {type(payload).__name__}")
    msg = entry.message()
    try:
        msg.ParseFromString(bytes(payload))
    except (DecodeError, ValueError) as exc:
        raise CodecError(f"malformed {type_name}: {len(payload)} bytes do not parse ({exc})") from None
    return from_message(type_name, msg)


def encode_records(outcomes: Iterable[RequestOutcome]) -> bytes:
    """A RequestRecordBatch payload: how the router ships request records, many per message."""
    return encode(tuple(outcomes))[1]


def decode_records(payload: bytes) -> tuple[RequestOutcome, ...]:
    """The records of a RequestRecordBatch payload, in order."""
    result: tuple[RequestOutcome, ...] = decode(BATCH_TYPE, payload)
    return result
