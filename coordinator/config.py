"""Coordinator configuration (frozen; units in field names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecloud.mqtt import MqttConfig
from edgecloud.rpc import SecurityConfig

NODE_STATUS_OVERHEAD_BYTES = 512  # per node in GetClusterStatus, beyond its text (numbers, tags, load)


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = "127.0.0.1:50051"
    node_ttl_s: float = 15.0  # a node silent this long is considered gone (not placed, listed as stale)
    node_expiry_s: float = 300.0  # a node silent this long is forgotten entirely
    max_nodes: int = 256  # registrations beyond this are refused with RESOURCE_EXHAUSTED
    heartbeat_interval_s: float = 5.0  # what nodes are told to use
    request_timeout_s: float = 3600.0  # deadline of one forwarded generation stream
    max_message_mib: float = 4.0  # largest gRPC message sent or received
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics_listen: str | None = None  # host:port of GET /metrics (Prometheus; None: off; port 0 = any)
    mqtt: MqttConfig | None = None  # the telemetry broker (None: the embedded one, unless mqtt_listen is None)
    mqtt_listen: str | None = "127.0.0.1:1883"  # the embedded broker's loopback address (None: no telemetry)
    cluster: str = "default"  # topic namespace when the broker is the embedded one
    openai_listen: str | None = None  # host:port of the OpenAI-compatible HTTP API (None: off; port 0 = any)

    def __post_init__(self) -> None:
        if self.security.auth_token and not self.security.node_token:
            raise ValueError("an auth token without a node token would let every client register and remove "
                             "nodes: give --node-token (or $EDGECLOUD_NODE_TOKEN) too, a different secret")
        if self.node_ttl_s <= 0 or self.heartbeat_interval_s <= 0:
            raise ValueError("node_ttl_s and heartbeat_interval_s must be > 0")
        if self.heartbeat_interval_s >= self.node_ttl_s:
            raise ValueError(f"heartbeat_interval_s ({self.heartbeat_interval_s:g}) must be below "
                             f"node_ttl_s ({self.node_ttl_s:g})")
        if self.node_expiry_s < self.node_ttl_s:
            raise ValueError(f"node_expiry_s ({self.node_expiry_s:g}) must be >= node_ttl_s ({self.node_ttl_s:g})")
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {self.max_nodes}")
        if self.max_message_mib <= 0:
            raise ValueError(f"max_message_mib must be > 0, got {self.max_message_mib:g}")
        if self.openai_listen is not None:
            _host, sep, port = self.openai_listen.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ValueError(f"openai_listen {self.openai_listen[:80]!r} is not host:port (port 0..65535)")

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mib * 2**20)
