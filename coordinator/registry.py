"""The coordinator's view of the cluster: which nodes exist, what they run, how busy they are."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum


class Role(StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"


class NoNodeAvailable(LookupError):
    """No live node of the needed role (and model) is registered."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    role: Role
    address: str  # host:port of the node's gRPC server
    models: tuple[str, ...] = ()
    active_sessions: int = 0
    max_sessions: int = 0
    tokens_per_s: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)


class NodeRegistry:
    """Registered nodes with heartbeats; a node silent for ``ttl_s`` is considered gone."""

    def __init__(self, ttl_s: float = 15.0) -> None:
        self.ttl_s = ttl_s
        self._nodes: dict[str, NodeInfo] = {}
        self._lock = threading.Lock()

    def register(self, info: NodeInfo) -> None:
        if not info.node_id:
            raise ValueError("node_id is empty")
        if not info.address:
            raise ValueError(f"node {info.node_id!r} gave no address")
        with self._lock:
            self._nodes[info.node_id] = replace(info, last_seen=time.monotonic())

    def heartbeat(self, node_id: str, *, active_sessions: int, tokens_per_s: float = 0.0) -> bool:
        """Refresh a node's load; False when the node is unknown (it should register again)."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None:
                return False
            self._nodes[node_id] = replace(node, active_sessions=active_sessions, tokens_per_s=tokens_per_s,
                                           last_seen=time.monotonic())
            return True

    def remove(self, node_id: str) -> None:
        with self._lock:
            self._nodes.pop(node_id, None)

    def live(self, role: Role | None = None) -> list[NodeInfo]:
        now = time.monotonic()
        with self._lock:
            return [n for n in self._nodes.values()
                    if now - n.last_seen <= self.ttl_s and (role is None or n.role == role)]

    def place(self, role: Role, model: str | None = None) -> NodeInfo:
        """The least-loaded live node of ``role`` (running ``model`` if given)."""
        nodes = [n for n in self.live(role) if model is None or model in n.models]
        if not nodes:
            wanted = f" running {model!r}" if model else ""
            raise NoNodeAvailable(f"no live {role.value} node{wanted} is registered")
        return min(nodes, key=lambda n: (n.active_sessions / max(1, n.max_sessions), n.node_id))
