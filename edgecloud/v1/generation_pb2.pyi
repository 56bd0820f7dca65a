from edgecloud.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_EOS: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_EOS: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_CANCELLED: FinishReason

class ChatMessage(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "messages", "max_tokens", "temperature", "seed", "policy", "threshold", "target_cloud_share", "session_id", "stop", "chat", "assistant_prefix", "edge_model", "cloud_model", "edge_node_id", "cloud_address", "draft_window", "cloud_prefetch", "batched_events")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_CLOUD_SHARE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    ASSISTANT_PREFIX_FIELD_NUMBER: _ClassVar[int]
    EDGE_MODEL_FIELD_NUMBER: _ClassVar[int]
    CLOUD_MODEL_FIELD_NUMBER: _ClassVar[int]
    EDGE_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    CLOUD_PREFETCH_FIELD_NUMBER: _ClassVar[int]
    BATCHED_EVENTS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    max_tokens: int
    temperature: float
    seed: int
    policy: str
    threshold: float
    target_cloud_share: float
    session_id: str
    stop: _containers.RepeatedScalarFieldContainer[str]
    chat: bool
    assistant_prefix: str
    edge_model: str
    cloud_model: str
    edge_node_id: str
    cloud_address: str
    draft_window: int
    cloud_prefetch: bool
    batched_events: bool
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., policy: _Optional[str] = ..., threshold: _Optional[float] = ..., target_cloud_share: _Optional[float] = ..., session_id: _Optional[str] = ..., stop: _Optional[_Iterable[str]] = ..., chat: _Optional[bool] = ..., assistant_prefix: _Optional[str] = ..., edge_model: _Optional[str] = ..., cloud_model: _Optional[str] = ..., edge_node_id: _Optional[str] = ..., cloud_address: _Optional[str] = ..., draft_window: _Optional[int] = ..., cloud_prefetch: _Optional[bool] = ..., batched_events: _Optional[bool] = ...) -> None: ...

class GenerationSummary(_message.Message):
    __slots__ = ("edge_tokens", "cloud_tokens", "checked_tokens", "drafted_tokens", "cloud_round_trips", "bytes_up", "bytes_down", "edge_compute_s", "cloud_compute_s", "network_s", "wall_s", "cloud_share", "finish_reason", "prompt_tokens", "policy", "threshold", "window_sizes", "edge_node_id", "cloud_node_id", "cloud_background_calls", "time_to_first_token_s", "split_cut", "split_codec", "split_plan", "degraded_tokens", "cloud_failures", "cloud_switches")
    EDGE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHECKED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_ROUND_TRIPS_FIELD_NUMBER: _ClassVar[int]
    BYTES_UP_FIELD_NUMBER: _ClassVar[int]
    BYTES_DOWN_FIELD_NUMBER: _ClassVar[int]
    EDGE_COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    CLOUD_COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    NETWORK_S_FIELD_NUMBER: _ClassVar[int]
    WALL_S_FIELD_NUMBER: _ClassVar[int]
    CLOUD_SHARE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    WINDOW_SIZES_FIELD_NUMBER: _ClassVar[int]
    EDGE_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLOUD_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CLOUD_BACKGROUND_CALLS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_S_FIELD_NUMBER: _ClassVar[int]
    SPLIT_CUT_FIELD_NUMBER: _ClassVar[int]
    SPLIT_CODEC_FIELD_NUMBER: _ClassVar[int]
    SPLIT_PLAN_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CLOUD_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CLOUD_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    edge_tokens: int
    cloud_tokens: int
    checked_tokens: int
    drafted_tokens: int
    cloud_round_trips: int
    bytes_up: int
    bytes_down: int
    edge_compute_s: float
    cloud_compute_s: float
    network_s: float
    wall_s: float
    cloud_share: float
    finish_reason: FinishReason
    prompt_tokens: int
    policy: str
    threshold: float
    window_sizes: _containers.RepeatedScalarFieldContainer[int]
    edge_node_id: str
    cloud_node_id: str
    cloud_background_calls: int
    time_to_first_token_s: float
    split_cut: int
    split_codec: str
    split_plan: str
    degraded_tokens: int
    cloud_failures: int
    cloud_switches: int
    def __init__(self, edge_tokens: _Optional[int] = ..., cloud_tokens: _Optional[int] = ..., checked_tokens: _Optional[int] = ..., drafted_tokens: _Optional[int] = ..., cloud_round_trips: _Optional[int] = ..., bytes_up: _Optional[int] = ..., bytes_down: _Optional[int] = ..., edge_compute_s: _Optional[float] = ..., cloud_compute_s: _Optional[float] = ..., network_s: _Optional[float] = ..., wall_s: _Optional[float] = ..., cloud_share: _Optional[float] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., policy: _Optional[str] = ..., threshold: _Optional[float] = ..., window_sizes: _Optional[_Iterable[int]] = ..., edge_node_id: _Optional[str] = ..., cloud_node_id: _Optional[str] = ..., cloud_background_calls: _Optional[int] = ..., time_to_first_token_s: _Optional[float] = ..., split_cut: _Optional[int] = ..., split_codec: _Optional[str] = ..., split_plan: _Optional[str] = ..., degraded_tokens: _Optional[int] = ..., cloud_failures: _Optional[int] = ..., cloud_switches: _Optional[int] = ...) -> None: ...

class GenerateEvent(_message.Message):
    __slots__ = ("text", "token_id", "source", "checked", "index", "summary", "more")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_id: int
    source: _common_pb2.Source
    checked: bool
    index: int
    summary: GenerationSummary
    more: _containers.RepeatedCompositeFieldContainer[GenerateEvent]
    def __init__(self, text: _Optional[str] = ..., token_id: _Optional[int] = ..., source: _Optional[_Union[_common_pb2.Source, str]] = ..., checked: _Optional[bool] = ..., index: _Optional[int] = ..., summary: _Optional[_Union[GenerationSummary, _Mapping]] = ..., more: _Optional[_Iterable[_Union[GenerateEvent, _Mapping]]] = ...) -> None: ...
