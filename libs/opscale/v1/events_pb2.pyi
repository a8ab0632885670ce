from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNIFIED: _ClassVar[Role]
    ROLE_PREFILL: _ClassVar[Role]
    ROLE_DECODE: _ClassVar[Role]

class RdmaPriority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RDMA_PRIORITY_LOW: _ClassVar[RdmaPriority]
    RDMA_PRIORITY_MEDIUM: _ClassVar[RdmaPriority]
    RDMA_PRIORITY_HIGH: _ClassVar[RdmaPriority]

class InstanceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_STATE_LOADING: _ClassVar[InstanceState]
    INSTANCE_STATE_READY: _ClassVar[InstanceState]
    INSTANCE_STATE_DRAINING: _ClassVar[InstanceState]
    INSTANCE_STATE_STOPPED: _ClassVar[InstanceState]

class KvEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KV_EVENT_KIND_STORED: _ClassVar[KvEventKind]
    KV_EVENT_KIND_REMOVED: _ClassVar[KvEventKind]
    KV_EVENT_KIND_CLEARED: _ClassVar[KvEventKind]
ROLE_UNIFIED: Role
ROLE_PREFILL: Role
ROLE_DECODE: Role
RDMA_PRIORITY_LOW: RdmaPriority
RDMA_PRIORITY_MEDIUM: RdmaPriority
RDMA_PRIORITY_HIGH: RdmaPriority
INSTANCE_STATE_LOADING: InstanceState
INSTANCE_STATE_READY: InstanceState
INSTANCE_STATE_DRAINING: InstanceState
INSTANCE_STATE_STOPPED: InstanceState
KV_EVENT_KIND_STORED: KvEventKind
KV_EVENT_KIND_REMOVED: KvEventKind
KV_EVENT_KIND_CLEARED: KvEventKind

class OperatorReplicas(_message.Message):
    __slots__ = ("operators", "replicas", "tp", "share", "batch")
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    TP_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    operators: _containers.RepeatedScalarFieldContainer[str]
    replicas: int
    tp: int
    share: float
    batch: int
    def __init__(self, operators: _Optional[_Iterable[str]] = ..., replicas: _Optional[int] = ..., tp: _Optional[int] = ..., share: _Optional[float] = ..., batch: _Optional[int] = ...) -> None: ...

class InstanceSpec(_message.Message):
    __slots__ = ("instance_id", "model", "sku", "tp", "role", "operator_replicas")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    TP_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model: str
    sku: str
    tp: int
    role: Role
    operator_replicas: _containers.RepeatedCompositeFieldContainer[OperatorReplicas]
    def __init__(self, instance_id: _Optional[str] = ..., model: _Optional[str] = ..., sku: _Optional[str] = ..., tp: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., operator_replicas: _Optional[_Iterable[_Union[OperatorReplicas, _Mapping]]] = ...) -> None: ...

class InstanceStatus(_message.Message):
    __slots__ = ("instance_id", "model", "sku", "tp", "role", "state", "endpoint", "queued", "running", "outstanding_tokens", "kv_used_frac", "tokens_per_s", "busy_frac", "power_w", "sm_activity", "decode_tps", "prefill_tps", "prefill_missed_tps", "kv_capacity_tokens")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    TP_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_USED_FRAC_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    BUSY_FRAC_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    SM_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    DECODE_TPS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TPS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MISSED_TPS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model: str
    sku: str
    tp: int
    role: Role
    state: InstanceState
    endpoint: str
    queued: int
    running: int
    outstanding_tokens: int
    kv_used_frac: float
    tokens_per_s: float
    busy_frac: float
    power_w: float
    sm_activity: float
    decode_tps: float
    prefill_tps: float
    prefill_missed_tps: float
    kv_capacity_tokens: int
    def __init__(self, instance_id: _Optional[str] = ..., model: _Optional[str] = ..., sku: _Optional[str] = ..., tp: _Optional[int] = ..., role: _Optional[_Union[Role, str]] = ..., state: _Optional[_Union[InstanceState, str]] = ..., endpoint: _Optional[str] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., outstanding_tokens: _Optional[int] = ..., kv_used_frac: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., busy_frac: _Optional[float] = ..., power_w: _Optional[float] = ..., sm_activity: _Optional[float] = ..., decode_tps: _Optional[float] = ..., prefill_tps: _Optional[float] = ..., prefill_missed_tps: _Optional[float] = ..., kv_capacity_tokens: _Optional[int] = ...) -> None: ...

class AgentHeartbeat(_message.Message):
    __slots__ = ("agent_id", "region", "sku", "gpus_total", "address", "epoch", "at_s", "instances", "terminating_at_s", "warm_models", "s0", "s1", "s2", "rdma_priority", "fencing_token")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    GPUS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    TERMINATING_AT_S_FIELD_NUMBER: _ClassVar[int]
    WARM_MODELS_FIELD_NUMBER: _ClassVar[int]
    S0_FIELD_NUMBER: _ClassVar[int]
    S1_FIELD_NUMBER: _ClassVar[int]
    S2_FIELD_NUMBER: _ClassVar[int]
    RDMA_PRIORITY_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    region: str
    sku: str
    gpus_total: int
    address: str
    epoch: int
    at_s: float
    instances: _containers.RepeatedCompositeFieldContainer[InstanceStatus]
    terminating_at_s: float
    warm_models: _containers.RepeatedScalarFieldContainer[str]
    s0: str
    s1: str
    s2: str
    rdma_priority: RdmaPriority
    fencing_token: int
    def __init__(self, agent_id: _Optional[str] = ..., region: _Optional[str] = ..., sku: _Optional[str] = ..., gpus_total: _Optional[int] = ..., address: _Optional[str] = ..., epoch: _Optional[int] = ..., at_s: _Optional[float] = ..., instances: _Optional[_Iterable[_Union[InstanceStatus, _Mapping]]] = ..., terminating_at_s: _Optional[float] = ..., warm_models: _Optional[_Iterable[str]] = ..., s0: _Optional[str] = ..., s1: _Optional[str] = ..., s2: _Optional[str] = ..., rdma_priority: _Optional[_Union[RdmaPriority, str]] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class RequestRecord(_message.Message):
    __slots__ = ("request_id", "model", "tier", "region", "served_region", "instance_id", "arrival_s", "first_token_s", "finish_s", "prompt_tokens", "output_tokens", "status", "prefill_instance_id", "tenant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    SERVED_REGION_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_S_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    FINISH_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    tier: str
    region: str
    served_region: str
    instance_id: str
    arrival_s: float
    first_token_s: float
    finish_s: float
    prompt_tokens: int
    output_tokens: int
    status: str
    prefill_instance_id: str
    tenant: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., tier: _Optional[str] = ..., region: _Optional[str] = ..., served_region: _Optional[str] = ..., instance_id: _Optional[str] = ..., arrival_s: _Optional[float] = ..., first_token_s: _Optional[float] = ..., finish_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., status: _Optional[str] = ..., prefill_instance_id: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class RequestRecordBatch(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[RequestRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[RequestRecord, _Mapping]]] = ...) -> None: ...

class RouterLoad(_message.Message):
    __slots__ = ("router_id", "region", "at_s", "pending_by_model", "interval_s", "arrivals_by_model", "prompt_tokens_by_model", "output_tokens_by_model")
    class PendingByModelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ArrivalsByModelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class PromptTokensByModelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class OutputTokensByModelEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    PENDING_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    ARRIVALS_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_BY_MODEL_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    region: str
    at_s: float
    pending_by_model: _containers.ScalarMap[str, int]
    interval_s: float
    arrivals_by_model: _containers.ScalarMap[str, int]
    prompt_tokens_by_model: _containers.ScalarMap[str, int]
    output_tokens_by_model: _containers.ScalarMap[str, int]
    def __init__(self, router_id: _Optional[str] = ..., region: _Optional[str] = ..., at_s: _Optional[float] = ..., pending_by_model: _Optional[_Mapping[str, int]] = ..., interval_s: _Optional[float] = ..., arrivals_by_model: _Optional[_Mapping[str, int]] = ..., prompt_tokens_by_model: _Optional[_Mapping[str, int]] = ..., output_tokens_by_model: _Optional[_Mapping[str, int]] = ...) -> None: ...

class WindowStats(_message.Message):
    __slots__ = ("model", "region", "tier", "window_s", "end_s", "requests", "completed", "arrival_rps", "prompt_tokens_per_s", "output_tokens_per_s", "ttft_p50_s", "ttft_p99_s", "tbt_p50_s", "tbt_p99_s", "e2e_p50_s", "e2e_p99_s", "slo_attainment")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_RPS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_P50_S_FIELD_NUMBER: _ClassVar[int]
    TTFT_P99_S_FIELD_NUMBER: _ClassVar[int]
    TBT_P50_S_FIELD_NUMBER: _ClassVar[int]
    TBT_P99_S_FIELD_NUMBER: _ClassVar[int]
    E2E_P50_S_FIELD_NUMBER: _ClassVar[int]
    E2E_P99_S_FIELD_NUMBER: _ClassVar[int]
    SLO_ATTAINMENT_FIELD_NUMBER: _ClassVar[int]
    model: str
    region: str
    tier: str
    window_s: float
    end_s: float
    requests: int
    completed: int
    arrival_rps: float
    prompt_tokens_per_s: float
    output_tokens_per_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    tbt_p50_s: float
    tbt_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    slo_attainment: float
    def __init__(self, model: _Optional[str] = ..., region: _Optional[str] = ..., tier: _Optional[str] = ..., window_s: _Optional[float] = ..., end_s: _Optional[float] = ..., requests: _Optional[int] = ..., completed: _Optional[int] = ..., arrival_rps: _Optional[float] = ..., prompt_tokens_per_s: _Optional[float] = ..., output_tokens_per_s: _Optional[float] = ..., ttft_p50_s: _Optional[float] = ..., ttft_p99_s: _Optional[float] = ..., tbt_p50_s: _Optional[float] = ..., tbt_p99_s: _Optional[float] = ..., e2e_p50_s: _Optional[float] = ..., e2e_p99_s: _Optional[float] = ..., slo_attainment: _Optional[float] = ...) -> None: ...

class PoolUtilisation(_message.Message):
    __slots__ = ("model", "region", "role", "window_s", "end_s", "instances", "gpu_util", "sm_activity", "decode_tps", "prefill_tps", "prefill_missed_tps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_S_FIELD_NUMBER: _ClassVar[int]
    END_S_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    GPU_UTIL_FIELD_NUMBER: _ClassVar[int]
    SM_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    DECODE_TPS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TPS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MISSED_TPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    region: str
    role: Role
    window_s: float
    end_s: float
    instances: float
    gpu_util: float
    sm_activity: float
    decode_tps: float
    prefill_tps: float
    prefill_missed_tps: float
    def __init__(self, model: _Optional[str] = ..., region: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., window_s: _Optional[float] = ..., end_s: _Optional[float] = ..., instances: _Optional[float] = ..., gpu_util: _Optional[float] = ..., sm_activity: _Optional[float] = ..., decode_tps: _Optional[float] = ..., prefill_tps: _Optional[float] = ..., prefill_missed_tps: _Optional[float] = ...) -> None: ...

class ForecastIssued(_message.Message):
    __slots__ = ("model", "region", "tier", "at_s", "horizon_s", "mean_rps", "lo_rps", "hi_rps", "method")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    HORIZON_S_FIELD_NUMBER: _ClassVar[int]
    MEAN_RPS_FIELD_NUMBER: _ClassVar[int]
    LO_RPS_FIELD_NUMBER: _ClassVar[int]
    HI_RPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    model: str
    region: str
    tier: str
    at_s: float
    horizon_s: float
    mean_rps: float
    lo_rps: float
    hi_rps: float
    method: str
    def __init__(self, model: _Optional[str] = ..., region: _Optional[str] = ..., tier: _Optional[str] = ..., at_s: _Optional[float] = ..., horizon_s: _Optional[float] = ..., mean_rps: _Optional[float] = ..., lo_rps: _Optional[float] = ..., hi_rps: _Optional[float] = ..., method: _Optional[str] = ...) -> None: ...

class AgentAssignment(_message.Message):
    __slots__ = ("agent_id", "region", "instances", "prestage")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PRESTAGE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    region: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceSpec]
    prestage: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., region: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceSpec, _Mapping]]] = ..., prestage: _Optional[_Iterable[str]] = ...) -> None: ...

class RoutingWeight(_message.Message):
    __slots__ = ("model", "origin_region", "weights")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_REGION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: str
    origin_region: str
    weights: _containers.ScalarMap[str, float]
    def __init__(self, model: _Optional[str] = ..., origin_region: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ...) -> None: ...

class VmCount(_message.Message):
    __slots__ = ("region", "sku", "purchase", "count")
    REGION_FIELD_NUMBER: _ClassVar[int]
    SKU_FIELD_NUMBER: _ClassVar[int]
    PURCHASE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    region: str
    sku: str
    purchase: str
    count: int
    def __init__(self, region: _Optional[str] = ..., sku: _Optional[str] = ..., purchase: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class Plan(_message.Message):
    __slots__ = ("epoch", "created_s", "assignments", "routing_weights", "reason", "vm_counts", "agent_regions", "withdrawn", "ready_ratio_tolerance")
    class AgentRegionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class WithdrawnEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ReadyRatioToleranceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    CREATED_S_FIELD_NUMBER: _ClassVar[int]
    ASSIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VM_COUNTS_FIELD_NUMBER: _ClassVar[int]
    AGENT_REGIONS_FIELD_NUMBER: _ClassVar[int]
    WITHDRAWN_FIELD_NUMBER: _ClassVar[int]
    READY_RATIO_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    created_s: float
    assignments: _containers.RepeatedCompositeFieldContainer[AgentAssignment]
    routing_weights: _containers.RepeatedCompositeFieldContainer[RoutingWeight]
    reason: str
    vm_counts: _containers.RepeatedCompositeFieldContainer[VmCount]
    agent_regions: _containers.ScalarMap[str, str]
    withdrawn: _containers.ScalarMap[str, float]
    ready_ratio_tolerance: _containers.ScalarMap[str, float]
    def __init__(self, epoch: _Optional[int] = ..., created_s: _Optional[float] = ..., assignments: _Optional[_Iterable[_Union[AgentAssignment, _Mapping]]] = ..., routing_weights: _Optional[_Iterable[_Union[RoutingWeight, _Mapping]]] = ..., reason: _Optional[str] = ..., vm_counts: _Optional[_Iterable[_Union[VmCount, _Mapping]]] = ..., agent_regions: _Optional[_Mapping[str, str]] = ..., withdrawn: _Optional[_Mapping[str, float]] = ..., ready_ratio_tolerance: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Request(_message.Message):
    __slots__ = ("request_id", "model", "tier", "region", "arrival_s", "prompt_tokens", "output_tokens", "prefix_hashes", "tenant")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ARRIVAL_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_HASHES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model: str
    tier: str
    region: str
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    prefix_hashes: _containers.RepeatedScalarFieldContainer[int]
    tenant: str
    def __init__(self, request_id: _Optional[str] = ..., model: _Optional[str] = ..., tier: _Optional[str] = ..., region: _Optional[str] = ..., arrival_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., prefix_hashes: _Optional[_Iterable[int]] = ..., tenant: _Optional[str] = ...) -> None: ...

class DispatchFailed(_message.Message):
    __slots__ = ("request", "instance_id", "reason", "attempt")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    request: Request
    instance_id: str
    reason: str
    attempt: int
    def __init__(self, request: _Optional[_Union[Request, _Mapping]] = ..., instance_id: _Optional[str] = ..., reason: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class PrefillHandedOff(_message.Message):
    __slots__ = ("request_id", "prefill_instance_id", "decode_instance_id", "at_s")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DECODE_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prefill_instance_id: str
    decode_instance_id: str
    at_s: float
    def __init__(self, request_id: _Optional[str] = ..., prefill_instance_id: _Optional[str] = ..., decode_instance_id: _Optional[str] = ..., at_s: _Optional[float] = ...) -> None: ...

class KvBlockEvent(_message.Message):
    __slots__ = ("kind", "block_hashes", "parent_block_hash", "token_ids", "block_size", "medium")
    KIND_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    PARENT_BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    MEDIUM_FIELD_NUMBER: _ClassVar[int]
    kind: KvEventKind
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    parent_block_hash: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    block_size: int
    medium: str
    def __init__(self, kind: _Optional[_Union[KvEventKind, str]] = ..., block_hashes: _Optional[_Iterable[int]] = ..., parent_block_hash: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., block_size: _Optional[int] = ..., medium: _Optional[str] = ...) -> None: ...

class KvEventBatch(_message.Message):
    __slots__ = ("instance_id", "model", "at_s", "seq", "events")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    model: str
    at_s: float
    seq: int
    events: _containers.RepeatedCompositeFieldContainer[KvBlockEvent]
    def __init__(self, instance_id: _Optional[str] = ..., model: _Optional[str] = ..., at_s: _Optional[float] = ..., seq: _Optional[int] = ..., events: _Optional[_Iterable[_Union[KvBlockEvent, _Mapping]]] = ...) -> None: ...

class EngineReport(_message.Message):
    __slots__ = ("instance_id", "queued", "running", "outstanding_tokens", "kv_used_frac", "tokens_per_s", "busy_frac", "power_w", "idle", "sm_activity", "decode_tps", "prefill_tps", "prefill_missed_tps", "kv_capacity_tokens")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    OUTSTANDING_TOKENS_FIELD_NUMBER: _ClassVar[int]
    KV_USED_FRAC_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    BUSY_FRAC_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    SM_ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    DECODE_TPS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TPS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_MISSED_TPS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    queued: int
    running: int
    outstanding_tokens: int
    kv_used_frac: float
    tokens_per_s: float
    busy_frac: float
    power_w: float
    idle: bool
    sm_activity: float
    decode_tps: float
    prefill_tps: float
    prefill_missed_tps: float
    kv_capacity_tokens: int
    def __init__(self, instance_id: _Optional[str] = ..., queued: _Optional[int] = ..., running: _Optional[int] = ..., outstanding_tokens: _Optional[int] = ..., kv_used_frac: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., busy_frac: _Optional[float] = ..., power_w: _Optional[float] = ..., idle: _Optional[bool] = ..., sm_activity: _Optional[float] = ..., decode_tps: _Optional[float] = ..., prefill_tps: _Optional[float] = ..., prefill_missed_tps: _Optional[float] = ..., kv_capacity_tokens: _Optional[int] = ...) -> None: ...
