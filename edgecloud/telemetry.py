"""Telemetry payloads: JSON with a schema version, size-limited, checked field by field on receipt.

One message type per node topic (``edgecloud/<cluster>/nodes/<node_id>/<kind>``):

- ``info`` (retained): what the node is — role, models, address, capabilities, compute profile.
- ``status`` (retained): ``online``, or ``offline`` (the last will, and a clean shutdown).
- ``load`` (retained, every ``load_interval_s``): sessions, requests, tokens/s, memory.
- ``link`` (retained, with the load): RTT and bandwidth estimates to peers from real transfers.
- ``refused`` (not retained, coordinator → node): this instance's id is held by another instance.

Every payload names the sending process's random ``instance`` id, so that two processes that
use one node id (a copied state folder) are told apart. Nothing received is trusted: a payload
over ``MAX_PAYLOAD_BYTES``, of another schema version, with a missing field, a wrong type or an
out-of-bounds value raises ``BadPayload``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any, ClassVar

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 8192
MAX_TEXT_CHARS = 255
MAX_LIST_ITEMS = 16
MAX_COUNT = 2**53  # the largest integer JSON carries exactly
_INSTANCE = re.compile(r"[0-9a-f]{8,64}")
INSTANCE_LABEL = "edgecloud.instance"  # a gRPC registration's label naming its process's telemetry instance


class BadPayload(ValueError):
    """A received telemetry payload that does not follow the schema."""


@dataclass(frozen=True)
class Message:
    """A telemetry payload: the sending process's ``instance`` id, then the kind's fields."""

    kind: ClassVar[str] = ""
    instance: str

    def encode(self) -> bytes:
        """The JSON bytes; ValueError if they would exceed ``MAX_PAYLOAD_BYTES``."""
        data = json.dumps({"v": SCHEMA_VERSION, "kind": self.kind, **asdict(self)}, separators=(",", ":"),
                          allow_nan=False).encode()
        if len(data) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"{self.kind} payload of {len(data)} bytes exceeds {MAX_PAYLOAD_BYTES}")
        return data


@dataclass(frozen=True)
class StatusMsg(Message):
    kind: ClassVar[str] = "status"
    state: str  # "online" | "offline"
    address: str = ""

    @property
    def online(self) -> bool:
        return self.state == "online"


@dataclass(frozen=True)
class InfoMsg(Message):
    kind: ClassVar[str] = "info"
    node_id: str
    role: str  # "edge" | "cloud"
    address: str  # host:port of the node's gRPC server
    models: tuple[str, ...] = ()
    capabilities: tuple[int, ...] = ()  # common.proto's Capability numbers
    version: str = ""
    device: str = ""
    cpu_cores: int = 0
    memory_bytes: int = 0  # physical memory of the machine
    accelerator: str = ""
    tokens_per_s: float = 0.0
    gflops: float = 0.0


@dataclass(frozen=True)
class LoadMsg(Message):
    kind: ClassVar[str] = "load"
    active_sessions: int = 0
    max_sessions: int = 0
    active_requests: int = 0
    tokens_per_s: float = 0.0
    kv_bytes: int = 0
    cpu_utilization: float = 0.0  # 1-minute load average over cores (approximate)
    memory_used_bytes: int = 0  # resident set of the daemon


@dataclass(frozen=True)
class PeerLink:
    """What a node measured of its link to one peer (from its real calls, not from probes)."""

    address: str
    rtt_ms: float  # the latest fit: network time of a call minus its transfer time
    bandwidth_mbps: float  # least-squares fit over calls of different sizes; a lower bound otherwise
    samples: int  # calls behind the estimate
    age_s: float  # since the latest call


@dataclass(frozen=True)
class LinkMsg(Message):
    kind: ClassVar[str] = "link"
    peers: tuple[PeerLink, ...] = ()


@dataclass(frozen=True)
class RefusedMsg(Message):
    """The coordinator to the instance ``instance``: its node id is held by ``holder_instance``."""

    kind: ClassVar[str] = "refused"
    holder_instance: str
    holder_address: str
    reason: str


KINDS: dict[str, type[Message]] = {m.kind: m for m in (StatusMsg, InfoMsg, LoadMsg, LinkMsg, RefusedMsg)}
_STATES = ("online", "offline")
_ROLES = ("edge", "cloud")


def decode(kind: str, payload: bytes) -> Message:
    """The message of ``kind`` in ``payload``; BadPayload saying what is wrong."""
    cls = KINDS.get(kind)
    if cls is None:
        raise BadPayload(f"unknown topic kind {kind[:32]!r}")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise BadPayload(f"{kind} payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        data = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise BadPayload(f"{kind} payload is not JSON: {str(exc)[:80]}") from None
    if not isinstance(data, dict):
        raise BadPayload(f"{kind} payload is not a JSON object")
    if data.get("v") != SCHEMA_VERSION:
        raise BadPayload(f"{kind} payload has schema version {str(data.get('v'))[:16]!r}, not {SCHEMA_VERSION}")
    if data.get("kind") != kind:
        raise BadPayload(f"{kind} topic carries a payload of kind {str(data.get('kind'))[:16]!r}")
    message = _build(cls, data, kind)
    if not _INSTANCE.fullmatch(message.instance):
        raise BadPayload(f"{kind}: instance must be 8-64 lowercase hex digits")
    if isinstance(message, StatusMsg) and message.state not in _STATES:
        raise BadPayload(f"status: state must be one of {_STATES}")
    if isinstance(message, InfoMsg) and message.role not in _ROLES:
        raise BadPayload(f"info: role must be one of {_ROLES}")
    return message


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    values = {}
    for f in fields(cls):
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:  # a required field
                raise BadPayload(f"{where}: field {f.name!r} is missing")
            continue
        values[f.name] = _check(f.type, data[f.name], f"{where}.{f.name}")
    return cls(**values)


def _check(kind: str, value: Any, where: str) -> Any:
    if kind == "str":
        if not isinstance(value, str) or len(value) > MAX_TEXT_CHARS or not value.isprintable():
            raise BadPayload(f"{where} must be printable text of at most {MAX_TEXT_CHARS} characters")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNT:
            raise BadPayload(f"{where} must be an integer in [0, 2**53]")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value)
                                                                               and 0 <= value <= 1e15):
            raise BadPayload(f"{where} must be a finite number >= 0")
        return float(value)
    if kind.startswith("tuple["):
        item = kind[len("tuple["):].split(",")[0]
        if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS:
            raise BadPayload(f"{where} must be a list of at most {MAX_LIST_ITEMS} items")
        if item == "PeerLink":
            return tuple(_peer(v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_check(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    raise AssertionError(f"no check for field type {kind}")  # a schema bug, not bad input


def _peer(value: Any, where: str) -> PeerLink:
    if not isinstance(value, dict):
        raise BadPayload(f"{where} must be an object")
    return _build(PeerLink, value, where)
