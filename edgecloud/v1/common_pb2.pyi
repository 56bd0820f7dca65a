from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Source(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_UNSPECIFIED: _ClassVar[Source]
    SOURCE_EDGE: _ClassVar[Source]
    SOURCE_CLOUD: _ClassVar[Source]
    SOURCE_EDGE_DEGRADED: _ClassVar[Source]

class NodeRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_ROLE_UNSPECIFIED: _ClassVar[NodeRole]
    NODE_ROLE_EDGE: _ClassVar[NodeRole]
    NODE_ROLE_CLOUD: _ClassVar[NodeRole]

class Capability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CAPABILITY_UNSPECIFIED: _ClassVar[Capability]
    CAPABILITY_HYBRID_ROUTING: _ClassVar[Capability]
    CAPABILITY_VERIFY: _ClassVar[Capability]
    CAPABILITY_SPLIT_HEAD: _ClassVar[Capability]
    CAPABILITY_SPLIT_TAIL: _ClassVar[Capability]
    CAPABILITY_TENSOR_PARALLEL: _ClassVar[Capability]
SOURCE_UNSPECIFIED: Source
SOURCE_EDGE: Source
SOURCE_CLOUD: Source
SOURCE_EDGE_DEGRADED: Source
NODE_ROLE_UNSPECIFIED: NodeRole
NODE_ROLE_EDGE: NodeRole
NODE_ROLE_CLOUD: NodeRole
CAPABILITY_UNSPECIFIED: Capability
CAPABILITY_HYBRID_ROUTING: Capability
CAPABILITY_VERIFY: Capability
CAPABILITY_SPLIT_HEAD: Capability
CAPABILITY_SPLIT_TAIL: Capability
CAPABILITY_TENSOR_PARALLEL: Capability

class ComputeProfile(_message.Message):
    __slots__ = ("device", "cpu_cores", "memory_bytes", "accelerator", "tokens_per_s", "gflops")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    CPU_CORES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    GFLOPS_FIELD_NUMBER: _ClassVar[int]
    device: str
    cpu_cores: int
    memory_bytes: int
    accelerator: str
    tokens_per_s: float
    gflops: float
    def __init__(self, device: _Optional[str] = ..., cpu_cores: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., accelerator: _Optional[str] = ..., tokens_per_s: _Optional[float] = ..., gflops: _Optional[float] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "role", "address", "models", "capabilities", "compute", "version", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: NodeRole
    address: str
    models: _containers.RepeatedScalarFieldContainer[str]
    capabilities: _containers.RepeatedScalarFieldContainer[Capability]
    compute: ComputeProfile
    version: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[_Union[NodeRole, str]] = ..., address: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., capabilities: _Optional[_Iterable[_Union[Capability, str]]] = ..., compute: _Optional[_Union[ComputeProfile, _Mapping]] = ..., version: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class NodeLoad(_message.Message):
    __slots__ = ("active_sessions", "max_sessions", "active_requests", "tokens_per_s", "kv_bytes", "cpu_utilization", "memory_used_bytes")
    ACTIVE_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    CPU_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    active_sessions: int
    max_sessions: int
    active_requests: int
    tokens_per_s: float
    kv_bytes: int
    cpu_utilization: float
    memory_used_bytes: int
    def __init__(self, active_sessions: _Optional[int] = ..., max_sessions: _Optional[int] = ..., active_requests: _Optional[int] = ..., tokens_per_s: _Optional[float] = ..., kv_bytes: _Optional[int] = ..., cpu_utilization: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ...) -> None: ...
