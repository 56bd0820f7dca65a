from edgecloud.v1 import common_pb2 as _common_pb2
from edgecloud.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AcceptanceRule(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCEPTANCE_RULE_UNSPECIFIED: _ClassVar[AcceptanceRule]
    ACCEPTANCE_RULE_EXACT_MATCH: _ClassVar[AcceptanceRule]
    ACCEPTANCE_RULE_TOP_K: _ClassVar[AcceptanceRule]
    ACCEPTANCE_RULE_SPECULATIVE_SAMPLING: _ClassVar[AcceptanceRule]
ACCEPTANCE_RULE_UNSPECIFIED: AcceptanceRule
ACCEPTANCE_RULE_EXACT_MATCH: AcceptanceRule
ACCEPTANCE_RULE_TOP_K: AcceptanceRule
ACCEPTANCE_RULE_SPECULATIVE_SAMPLING: AcceptanceRule

class AcceptanceOptions(_message.Message):
    __slots__ = ("rule", "temperature", "seed", "top_k")
    RULE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    rule: AcceptanceRule
    temperature: float
    seed: int
    top_k: int
    def __init__(self, rule: _Optional[_Union[AcceptanceRule, str]] = ..., temperature: _Optional[float] = ..., seed: _Optional[int] = ..., top_k: _Optional[int] = ...) -> None: ...

class OpenSessionRequest(_message.Message):
    __slots__ = ("model", "prompt_token_ids", "acceptance", "session_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTANCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    acceptance: AcceptanceOptions
    session_id: str
    def __init__(self, model: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., acceptance: _Optional[_Union[AcceptanceOptions, _Mapping]] = ..., session_id: _Optional[str] = ...) -> None: ...

class OpenSessionResponse(_message.Message):
    __slots__ = ("session_id", "session_tokens", "compute_s", "vocab_size", "max_window_tokens", "max_tokens_per_session")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    session_tokens: int
    compute_s: float
    vocab_size: int
    max_window_tokens: int
    max_tokens_per_session: int
    def __init__(self, session_id: _Optional[str] = ..., session_tokens: _Optional[int] = ..., compute_s: _Optional[float] = ..., vocab_size: _Optional[int] = ..., max_window_tokens: _Optional[int] = ..., max_tokens_per_session: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExtendRequest(_message.Message):
    __slots__ = ("session_id", "token_ids")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ExtendResponse(_message.Message):
    __slots__ = ("session_tokens", "compute_s")
    SESSION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    session_tokens: int
    compute_s: float
    def __init__(self, session_tokens: _Optional[int] = ..., compute_s: _Optional[float] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("session_id", "context_token_ids", "draft_token_ids", "want_top_k", "open_with")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    WANT_TOP_K_FIELD_NUMBER: _ClassVar[int]
    OPEN_WITH_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    context_token_ids: _containers.RepeatedScalarFieldContainer[int]
    draft_token_ids: _containers.RepeatedScalarFieldContainer[int]
    want_top_k: int
    open_with: AcceptanceOptions
    def __init__(self, session_id: _Optional[str] = ..., context_token_ids: _Optional[_Iterable[int]] = ..., draft_token_ids: _Optional[_Iterable[int]] = ..., want_top_k: _Optional[int] = ..., open_with: _Optional[_Union[AcceptanceOptions, _Mapping]] = ...) -> None: ...

class TopLogprobs(_message.Message):
    __slots__ = ("token_ids", "logprobs")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("llm_token_ids", "accepted", "next_token_id", "top_logprobs", "compute_s", "session_tokens", "session_id")
    LLM_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    llm_token_ids: _containers.RepeatedScalarFieldContainer[int]
    accepted: int
    next_token_id: int
    top_logprobs: _containers.RepeatedCompositeFieldContainer[TopLogprobs]
    compute_s: float
    session_tokens: int
    session_id: str
    def __init__(self, llm_token_ids: _Optional[_Iterable[int]] = ..., accepted: _Optional[int] = ..., next_token_id: _Optional[int] = ..., top_logprobs: _Optional[_Iterable[_Union[TopLogprobs, _Mapping]]] = ..., compute_s: _Optional[float] = ..., session_tokens: _Optional[int] = ..., session_id: _Optional[str] = ...) -> None: ...

class RunTailRequest(_message.Message):
    __slots__ = ("model", "start_layer", "hidden_states", "last_position_only", "session_id", "past_tokens", "omit_logits", "end_session")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    START_LAYER_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_STATES_FIELD_NUMBER: _ClassVar[int]
    LAST_POSITION_ONLY_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PAST_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OMIT_LOGITS_FIELD_NUMBER: _ClassVar[int]
    END_SESSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    start_layer: int
    hidden_states: _tensor_pb2.Tensor
    last_position_only: bool
    session_id: str
    past_tokens: int
    omit_logits: bool
    end_session: bool
    def __init__(self, model: _Optional[str] = ..., start_layer: _Optional[int] = ..., hidden_states: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., last_position_only: _Optional[bool] = ..., session_id: _Optional[str] = ..., past_tokens: _Optional[int] = ..., omit_logits: _Optional[bool] = ..., end_session: _Optional[bool] = ...) -> None: ...

class RunTailResponse(_message.Message):
    __slots__ = ("logits", "compute_s", "next_token_ids", "session_tokens")
    LOGITS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_S_FIELD_NUMBER: _ClassVar[int]
    NEXT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SESSION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    logits: _tensor_pb2.Tensor
    compute_s: float
    next_token_ids: _containers.RepeatedScalarFieldContainer[int]
    session_tokens: int
    def __init__(self, logits: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., compute_s: _Optional[float] = ..., next_token_ids: _Optional[_Iterable[int]] = ..., session_tokens: _Optional[int] = ...) -> None: ...

class GetCloudStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CloudStatus(_message.Message):
    __slots__ = ("node_id", "models", "sessions", "max_sessions", "kv_bytes", "max_kv_bytes", "max_tokens_per_session", "max_window_tokens", "evictions", "verify_calls", "max_message_bytes", "capabilities", "compute", "uptime_s", "version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    MAX_WINDOW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_CALLS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    models: _containers.RepeatedScalarFieldContainer[str]
    sessions: int
    max_sessions: int
    kv_bytes: int
    max_kv_bytes: int
    max_tokens_per_session: int
    max_window_tokens: int
    evictions: int
    verify_calls: int
    max_message_bytes: int
    capabilities: _containers.RepeatedScalarFieldContainer[_common_pb2.Capability]
    compute: _common_pb2.ComputeProfile
    uptime_s: float
    version: str
    def __init__(self, node_id: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., sessions: _Optional[int] = ..., max_sessions: _Optional[int] = ..., kv_bytes: _Optional[int] = ..., max_kv_bytes: _Optional[int] = ..., max_tokens_per_session: _Optional[int] = ..., max_window_tokens: _Optional[int] = ..., evictions: _Optional[int] = ..., verify_calls: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., capabilities: _Optional[_Iterable[_Union[_common_pb2.Capability, str]]] = ..., compute: _Optional[_Union[_common_pb2.ComputeProfile, _Mapping]] = ..., uptime_s: _Optional[float] = ..., version: _Optional[str] = ...) -> None: ...
