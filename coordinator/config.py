"""Coordinator configuration (frozen; units in field names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecloud.rpc import SecurityConfig


@dataclass(frozen=True)
class CoordinatorConfig:
    listen: str = "127.0.0.1:50051"
    node_ttl_s: float = 15.0  # a node silent this long is considered gone
    heartbeat_interval_s: float = 5.0  # what nodes are told to use
    request_timeout_s: float = 3600.0  # deadline of one forwarded generation stream
    security: SecurityConfig = field(default_factory=SecurityConfig)
