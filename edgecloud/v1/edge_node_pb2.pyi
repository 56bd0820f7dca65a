from edgecloud.v1 import common_pb2 as _common_pb2
from edgecloud.v1 import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetEdgeStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EdgeStatus(_message.Message):
    __slots__ = ("node_id", "models", "capabilities", "compute", "load", "policies", "max_tokens_limit", "default_cloud_address", "uptime_s", "version", "split_plan", "clouds_down")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CLOUD_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SPLIT_PLAN_FIELD_NUMBER: _ClassVar[int]
    CLOUDS_DOWN_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    capabilities: _containers.RepeatedScalarFieldContainer[_common_pb2.Capability]
    compute: _common_pb2.ComputeProfile
    load: _common_pb2.NodeLoad
    policies: _containers.RepeatedScalarFieldContainer[str]
    max_tokens_limit: int
    default_cloud_address: str
    uptime_s: float
    version: str
    split_plan: str
    clouds_down: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., capabilities: _Optional[_Iterable[_Union[_common_pb2.Capability, str]]] = ..., compute: _Optional[_Union[_common_pb2.ComputeProfile, _Mapping]] = ..., load: _Optional[_Union[_common_pb2.NodeLoad, _Mapping]] = ..., policies: _Optional[_Iterable[str]] = ..., max_tokens_limit: _Optional[int] = ..., default_cloud_address: _Optional[str] = ..., uptime_s: _Optional[float] = ..., version: _Optional[str] = ..., split_plan: _Optional[str] = ..., clouds_down: _Optional[_Iterable[str]] = ...) -> None: ...
