from opscale.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ApplyRequest(_message.Message):
    __slots__ = ("epoch", "command_id", "agent_id", "instances", "prestage", "fencing_token")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    PRESTAGE_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    command_id: str
    agent_id: str
    instances: _containers.RepeatedCompositeFieldContainer[_events_pb2.InstanceSpec]
    prestage: _containers.RepeatedScalarFieldContainer[str]
    fencing_token: int
    def __init__(self, epoch: _Optional[int] = ..., command_id: _Optional[str] = ..., agent_id: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[_events_pb2.InstanceSpec, _Mapping]]] = ..., prestage: _Optional[_Iterable[str]] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("accepted", "applied_epoch", "reason", "instances")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_EPOCH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    applied_epoch: int
    reason: str
    instances: _containers.RepeatedCompositeFieldContainer[_events_pb2.InstanceStatus]
    def __init__(self, accepted: _Optional[bool] = ..., applied_epoch: _Optional[int] = ..., reason: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[_events_pb2.InstanceStatus, _Mapping]]] = ...) -> None: ...

class DrainRequest(_message.Message):
    __slots__ = ("command_id", "instance_id", "deadline_s", "agent_id")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_S_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    instance_id: str
    deadline_s: float
    agent_id: str
    def __init__(self, command_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., deadline_s: _Optional[float] = ..., agent_id: _Optional[str] = ...) -> None: ...

class DrainResponse(_message.Message):
    __slots__ = ("accepted", "reason")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class OperatorGroup(_message.Message):
    __slots__ = ("name", "operators", "replicas", "max_batch", "gpus")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPERATORS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    operators: _containers.RepeatedScalarFieldContainer[str]
    replicas: int
    max_batch: int
    gpus: int
    def __init__(self, name: _Optional[str] = ..., operators: _Optional[_Iterable[str]] = ..., replicas: _Optional[int] = ..., max_batch: _Optional[int] = ..., gpus: _Optional[int] = ...) -> None: ...

class OperatorPlacement(_message.Message):
    __slots__ = ("instance_id", "groups")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    groups: _containers.RepeatedCompositeFieldContainer[OperatorGroup]
    def __init__(self, instance_id: _Optional[str] = ..., groups: _Optional[_Iterable[_Union[OperatorGroup, _Mapping]]] = ...) -> None: ...

class RouteRequest(_message.Message):
    __slots__ = ("model", "tier", "region", "prompt_tokens", "max_tokens")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    model: str
    tier: str
    region: str
    prompt_tokens: int
    max_tokens: int
    def __init__(self, model: _Optional[str] = ..., tier: _Optional[str] = ..., region: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., max_tokens: _Optional[int] = ...) -> None: ...

class RouteResponse(_message.Message):
    __slots__ = ("instance_id", "region", "endpoint", "reason")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    region: str
    endpoint: str
    reason: str
    def __init__(self, instance_id: _Optional[str] = ..., region: _Optional[str] = ..., endpoint: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
