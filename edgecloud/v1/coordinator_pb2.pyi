from edgecloud.v1 import common_pb2 as _common_pb2
from edgecloud.v1 import generation_pb2 as _generation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetClusterStatusRequest(_message.Message):
    __slots__ = ("include_stale",)
    INCLUDE_STALE_FIELD_NUMBER: _ClassVar[int]
    include_stale: bool
    def __init__(self, include_stale: _Optional[bool] = ...) -> None: ...

class NodeStatus(_message.Message):
    __slots__ = ("info", "load", "last_seen_s_ago", "live", "suspect")
    INFO_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_S_AGO_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    SUSPECT_FIELD_NUMBER: _ClassVar[int]
    info: _common_pb2.NodeInfo
    load: _common_pb2.NodeLoad
    last_seen_s_ago: float
    live: bool
    suspect: bool
    def __init__(self, info: _Optional[_Union[_common_pb2.NodeInfo, _Mapping]] = ..., load: _Optional[_Union[_common_pb2.NodeLoad, _Mapping]] = ..., last_seen_s_ago: _Optional[float] = ..., live: _Optional[bool] = ..., suspect: _Optional[bool] = ...) -> None: ...

class ClusterStatus(_message.Message):
    __slots__ = ("nodes", "active_requests", "uptime_s", "version", "requests_served", "cloud_round_trips", "output_tokens")
    NODES_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_SERVED_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ROUND_TRIPS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeStatus]
    active_requests: int
    uptime_s: float
    version: str
    requests_served: int
    cloud_round_trips: int
    output_tokens: int
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeStatus, _Mapping]]] = ..., active_requests: _Optional[int] = ..., uptime_s: _Optional[float] = ..., version: _Optional[str] = ..., requests_served: _Optional[int] = ..., cloud_round_trips: _Optional[int] = ..., output_tokens: _Optional[int] = ...) -> None: ...

class RegisterNodeRequest(_message.Message):
    __slots__ = ("node", "load", "lease")
    NODE_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    node: _common_pb2.NodeInfo
    load: _common_pb2.NodeLoad
    lease: str
    def __init__(self, node: _Optional[_Union[_common_pb2.NodeInfo, _Mapping]] = ..., load: _Optional[_Union[_common_pb2.NodeLoad, _Mapping]] = ..., lease: _Optional[str] = ...) -> None: ...

class RegisterNodeResponse(_message.Message):
    __slots__ = ("heartbeat_interval_s", "node_ttl_s", "lease", "cloud_addresses")
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    NODE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    node_ttl_s: float
    lease: str
    cloud_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, heartbeat_interval_s: _Optional[float] = ..., node_ttl_s: _Optional[float] = ..., lease: _Optional[str] = ..., cloud_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_id", "load", "lease")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LOAD_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    load: _common_pb2.NodeLoad
    lease: str
    def __init__(self, node_id: _Optional[str] = ..., load: _Optional[_Union[_common_pb2.NodeLoad, _Mapping]] = ..., lease: _Optional[str] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("heartbeat_interval_s", "cloud_addresses")
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_s: float
    cloud_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, heartbeat_interval_s: _Optional[float] = ..., cloud_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class DeregisterNodeRequest(_message.Message):
    __slots__ = ("node_id", "lease")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    lease: str
    def __init__(self, node_id: _Optional[str] = ..., lease: _Optional[str] = ...) -> None: ...

class DeregisterNodeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
