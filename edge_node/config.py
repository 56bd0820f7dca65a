"""Edge node configuration (frozen; units in field names)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecloud.mqtt import MqttConfig
from edgecloud.rpc import SecurityConfig


@dataclass(frozen=True)
class EdgeConfig:
    model: str  # zoo name, HF folder or .gguf
    listen: str = "127.0.0.1:50053"
    advertise: str | None = None
    node_id: str = "edge-0"
    dtype: str = "bfloat16"
    threads: int = 0  # torch intra-op threads (0: torch's default, one per core)
    cloud: str | None = None  # default cloud node when a request names none
    coordinator: str | None = None
    heartbeat_interval_s: float = 5.0
    max_tokens_limit: int = 4096  # new tokens per request
    max_prompt_tokens: int = 8192
    max_active_requests: int = 16  # more are refused with RESOURCE_EXHAUSTED
    allowed_clouds: tuple[str, ...] = ()  # cloud addresses requests may name, besides --cloud and registered ones
    cloud_timeout_s: float = 60.0  # deadline of one verification round trip
    cloud_prefetch: bool = False  # default for requests that do not say
    reward_head: str | None = None  # safetensors file of a trained reward head
    split_model: str | None = None  # serve policy "split": this model's head here, its tail on the cloud
    split_cuts: tuple[int, ...] = ()  # candidate cuts (layers run here); () = every quarter of the layers
    split_codecs: tuple[str, ...] = ("fp16",)  # candidate activation codecs at the cut (edgecloud.activations)
    split_cloud_speedup: float = 1.0  # the cloud's speed over this node's, until the cloud's compute is measured
    security: SecurityConfig = field(default_factory=SecurityConfig)
    metrics_listen: str | None = None  # host:port of GET /metrics (Prometheus; None: off; port 0 = any)
    mqtt: MqttConfig | None = None  # telemetry and discovery broker (None: no telemetry)
