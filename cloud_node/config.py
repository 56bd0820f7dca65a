"""Cloud node configuration (frozen; units in field names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecloud.mqtt import MqttConfig
from edgecloud.rpc import SecurityConfig


@dataclass(frozen=True)
class CloudConfig:
    model: str  # zoo name, HF folder or .gguf
    listen: str = "127.0.0.1:50052"
    advertise: str | None = None  # address others dial (default: the bound listen address)
    node_id: str = "cloud-0"
    dtype: str = "bfloat16"
    threads: int = 0  # torch intra-op threads (0: torch's default, one per core)
    max_sessions: int = 64
    max_kv_mib: int = 4096
    max_tokens_per_session: int = 32768
    max_window_tokens: int = 4096
    session_idle_ttl_s: float = 600.0
    split_tail: bool = True  # serve RunTail (split computing), with tail sessions under the same limits
    coordinator: str | None = None  # register and heartbeat there when given
    heartbeat_interval_s: float = 5.0
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics_listen: str | None = None  # host:port of GET /metrics (Prometheus; None: off; port 0 = any)
    mqtt: MqttConfig | None = None  # telemetry and discovery broker (None: no telemetry)
