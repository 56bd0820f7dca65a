"""The coordinator's domain: which nodes exist (registry and leases), where a request goes
(placement), and what the cluster served (accounting totals). No gRPC, no protos.

Every node is held under a lease, a random secret handed out at registration: a heartbeat or a
deregistration must present it, and a live node id moves to another address only when the
holder of its lease registers again. A node silent for ``ttl_s`` stops being placed (it is
listed as not live); one silent for ``expiry_s`` is forgotten, so the table never holds more
than ``max_nodes`` entries of bounded size. A node that a request found unreachable is
*suspect* (not placed) until its next heartbeat.

Nodes announced over MQTT (coordinator/telemetry.py) are held the same way, by their process's
random *instance* id instead of a lease: their periodic ``load`` messages are their heartbeats,
and their ``offline`` status (a clean stop, or the broker's last will when the connection drops)
takes them out of placement at once. A gRPC registration that names the same instance (label
``edgecloud.instance``) is the same process and shares the entry.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from edgecloud.errors import (
    AlreadyExists,
    InvalidInput,
    LimitExceeded,
    NotFound,
    PermissionDenied,
    Unavailable,
    clip,
)
from edgecloud.telemetry import INSTANCE_LABEL


class DuplicateInstance(AlreadyExists):
    """A second process announced a live node's id; ``holder_*`` name the first one."""

    def __init__(self, message: str, *, holder_instance: str, holder_address: str) -> None:
        super().__init__(message)
        self.holder_instance = holder_instance
        self.holder_address = holder_address


class Role(StrEnum):
    EDGE = "edge"
    CLOUD = "cloud"


@dataclass(frozen=True)
class ClusterLimits:
    """Bounds on what one node may register (each checked before anything is stored)."""

    max_nodes: int = 256
    max_id_chars: int = 128
    max_address_chars: int = 255
    max_models: int = 8
    max_model_chars: int = 128
    max_labels: int = 8
    max_label_key_chars: int = 64
    max_label_value_chars: int = 128
    max_capabilities: int = 16
    max_text_chars: int = 64  # version, device, accelerator

    def __post_init__(self) -> None:
        if self.max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {self.max_nodes}")

    @property
    def max_node_chars(self) -> int:
        """An upper bound on the text one registered node holds (for sizing the status reply)."""
        return (self.max_id_chars + self.max_address_chars + self.max_models * self.max_model_chars
                + self.max_labels * (self.max_label_key_chars + self.max_label_value_chars)
                + 3 * self.max_text_chars + self.max_capabilities)


@dataclass(frozen=True)
class Compute:
    device: str = ""
    cpu_cores: int = 0
    memory_bytes: int = 0
    accelerator: str = ""
    tokens_per_s: float = 0.0
    gflops: float = 0.0


@dataclass(frozen=True)
class Load:
    active_sessions: int = 0
    max_sessions: int = 0
    active_requests: int = 0
    tokens_per_s: float = 0.0
    kv_bytes: int = 0
    cpu_utilization: float = 0.0
    memory_used_bytes: int = 0


@dataclass(frozen=True)
class NodeInfo:
    """A node as it describes itself at registration."""

    node_id: str
    role: Role
    address: str  # host:port of the node's gRPC server
    models: tuple[str, ...] = ()
    capabilities: tuple[int, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    compute: Compute = field(default_factory=Compute)


@dataclass(frozen=True)
class NodeState:
    """One registry entry: what the node said, its load, when it was last heard from."""

    info: NodeInfo
    load: Load
    lease: str
    last_seen: float
    suspect: bool = False
    instance: str = ""  # the process's random id (MQTT telemetry), "" if unknown
    offline: bool = False  # its telemetry said offline (will or clean stop): not live until it is heard again
    rtt_ms: Mapping[str, float] = field(default_factory=dict)  # measured RTT to peers, by address (link topic)

    @property
    def node_id(self) -> str:
        return self.info.node_id

    @property
    def address(self) -> str:
        return self.info.address


@dataclass(frozen=True)
class NodeView:
    """A registry entry as reported (no lease)."""

    info: NodeInfo
    load: Load
    last_seen_s_ago: float
    live: bool
    suspect: bool


@dataclass
class Totals:
    """What this coordinator served, for accounting checks."""

    requests: int = 0
    round_trips: int = 0
    tokens: int = 0
    active_requests: int = 0


_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")
_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")


def validate_address(address: str, max_chars: int = 255) -> str:
    """``host:port`` (host a name, IPv4 or ``[IPv6]``; port 1–65535); InvalidInput saying what is wrong."""
    if not address:
        raise InvalidInput("address is empty")
    if len(address) > max_chars:
        raise InvalidInput(f"address {clip(address)} is longer than {max_chars} characters")
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise InvalidInput(f"address {clip(address)} is not host:port")
    if not port.isdecimal() or not 1 <= int(port) <= 65535:
        raise InvalidInput(f"address {clip(address)}: port must be in 1..65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidInput(f"address {clip(address)}: {clip(host)} is not an IPv6 address") from None
    elif not _HOST_NAME.fullmatch(host):
        raise InvalidInput(f"address {clip(address)}: {clip(host)} is not a host name or IPv4 address")
    return address


def _check_text(what: str, text: str, max_chars: int, *, empty_ok: bool = True) -> None:
    if not text and not empty_ok:
        raise InvalidInput(f"{what} is empty")
    if len(text) > max_chars:
        raise InvalidInput(f"{what} {clip(text)} is longer than {max_chars} characters")
    if not text.isprintable():
        raise InvalidInput(f"{what} {clip(text)} has control characters")


def validate_node(info: NodeInfo, limits: ClusterLimits) -> None:
    """InvalidInput for an id, address, model name, label or text field out of its bounds."""
    _check_text("node_id", info.node_id, limits.max_id_chars, empty_ok=False)
    if not _NODE_ID.fullmatch(info.node_id):
        raise InvalidInput(f"node_id {clip(info.node_id)}: use letters, digits and . _ : @ - only")
    if not isinstance(info.role, Role):
        raise InvalidInput("node role must be EDGE or CLOUD")
    validate_address(info.address, limits.max_address_chars)
    if len(info.models) > limits.max_models:
        raise InvalidInput(f"{len(info.models)} models; at most {limits.max_models}")
    for model in info.models:
        _check_text("model name", model, limits.max_model_chars, empty_ok=False)
    if len(info.labels) > limits.max_labels:
        raise InvalidInput(f"{len(info.labels)} labels; at most {limits.max_labels}")
    for key, value in info.labels.items():
        _check_text("label key", key, limits.max_label_key_chars, empty_ok=False)
        _check_text(f"label {clip(key)}", value, limits.max_label_value_chars)
    if len(info.capabilities) > limits.max_capabilities:
        raise InvalidInput(f"{len(info.capabilities)} capabilities; at most {limits.max_capabilities}")
    for what, text in (("version", info.version), ("compute.device", info.compute.device),
                       ("compute.accelerator", info.compute.accelerator)):
        _check_text(what, text, limits.max_text_chars)


class Cluster:
    """Registry (with leases and expiry), placement and accounting of one cluster.

    Thread-safe; ``clock`` (monotonic seconds) is injectable for tests.
    """

    def __init__(self, *, ttl_s: float = 15.0, expiry_s: float = 300.0, limits: ClusterLimits | None = None,
                 restart_after_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0, got {ttl_s}")
        if expiry_s < ttl_s:
            raise ValueError(f"expiry_s ({expiry_s}) must be >= ttl_s ({ttl_s})")
        self.ttl_s = ttl_s
        self.expiry_s = expiry_s
        # A node silent this long that registers again at the same address under a new lease is the
        # same node restarted (a live process would have sent a heartbeat by then): it takes the entry
        # over at once instead of waiting out ``ttl_s``. None: a third of the TTL.
        self.restart_after_s = ttl_s / 3 if restart_after_s is None else restart_after_s
        self.limits = limits or ClusterLimits()
        self.totals = Totals()
        self._clock = clock
        self._nodes: dict[str, NodeState] = {}
        self._lock = threading.Lock()

    # Registry -------------------------------------------------------------------------------------------

    def register(self, info: NodeInfo, load: Load | None = None, *, lease: str = "", instance: str = "") -> str:
        """Add or refresh a node; returns its lease.

        A live id under another lease is not replaced (AlreadyExists): only the holder of the lease
        moves or refreshes it (the same process, by ``instance``, only at the entry's address) —
        except a registration of the same role and models at the entry's own address after
        ``restart_after_s`` of silence (the node restarted in place). A stale or offline entry is
        replaced by whoever registers the id next.
        """
        validate_node(info, self.limits)
        instance = instance or info.labels.get(INSTANCE_LABEL, "")
        with self._lock:
            now = self._clock()
            self._expire(now)
            old = self._nodes.get(info.node_id)
            if old is not None:
                # The instance label is not a secret (status replies and MQTT payloads carry it): it makes
                # a registration the entry's own process only at the entry's address; moving takes the lease.
                same_place = info.address == old.address and info.role == old.info.role
                holder = ((bool(lease) and hmac.compare_digest(lease.encode(), old.lease.encode()))
                          or (bool(instance) and instance == old.instance and same_place))
                restarted = (same_place and tuple(info.models) == tuple(old.info.models)
                             and now - old.last_seen >= self.restart_after_s)
                if not holder and not restarted and self._live(old, now):
                    raise AlreadyExists(f"node {clip(info.node_id)} is registered (at {clip(old.address)}) under "
                                        "another lease; register with its lease, or wait until it has been "
                                        f"silent for {self.ttl_s:g} s ({self.restart_after_s:g} s when "
                                        "registering at its address)")
                new_lease = old.lease if holder else secrets.token_urlsafe(24)
                rtt = old.rtt_ms if holder else {}
            else:
                self._check_room()
                new_lease, rtt = secrets.token_urlsafe(24), {}
            self._nodes[info.node_id] = NodeState(info, load or Load(), new_lease, now, instance=instance,
                                                  rtt_ms=rtt)
            return new_lease

    def _check_room(self) -> None:
        if len(self._nodes) >= self.limits.max_nodes:
            raise LimitExceeded(f"the registry is full ({self.limits.max_nodes} nodes)")

    def _live(self, node: NodeState, now: float) -> bool:
        return not node.offline and now - node.last_seen <= self.ttl_s

    # Telemetry (MQTT) -----------------------------------------------------------------------------------

    def announce(self, info: NodeInfo, instance: str, load: Load | None = None) -> None:
        """A node that announced itself online over MQTT. A live id held by another instance (or
        lease) is kept: DuplicateInstance names the holder."""
        validate_node(info, self.limits)
        with self._lock:
            now = self._clock()
            self._expire(now)
            old = self._nodes.get(info.node_id)
            if old is not None and old.instance != instance and self._live(old, now):
                raise DuplicateInstance(f"node {clip(info.node_id)} is live at {clip(old.address)} (instance "
                                        f"{old.instance or 'registered over gRPC'}); this instance is refused",
                                        holder_instance=old.instance, holder_address=old.address)
            if old is None:
                self._check_room()
            same = old is not None and old.instance == instance
            self._nodes[info.node_id] = NodeState(
                info, load or (old.load if same else Load()), old.lease if same else secrets.token_urlsafe(24),
                now, instance=instance, rtt_ms=old.rtt_ms if same else {})

    def report_load(self, node_id: str, instance: str, load: Load) -> bool:
        """A load message (the MQTT heartbeat); False unless ``instance`` holds the live node."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or node.instance != instance or node.offline:
                return False
            self._nodes[node_id] = replace(node, load=load, last_seen=self._clock(), suspect=False)
            return True

    def report_links(self, node_id: str, instance: str, rtt_ms: Mapping[str, float]) -> bool:
        """RTTs the node measured to peers (by address); False unless ``instance`` holds the node."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or node.instance != instance:
                return False
            self._nodes[node_id] = replace(node, rtt_ms=dict(list(rtt_ms.items())[:self.limits.max_nodes]))
            return True

    def went_offline(self, node_id: str, instance: str) -> bool:
        """The node's telemetry said offline: not placed, listed as not live. False for another instance."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or node.instance != instance or node.offline:
                return False
            self._nodes[node_id] = replace(node, offline=True)
            return True

    def holder(self, node_id: str) -> tuple[str, str] | None:
        """(instance, address) of the live node ``node_id``, None if there is none."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is None or not self._live(node, self._clock()):
                return None
            return node.instance, node.address

    def heartbeat(self, node_id: str, lease: str, load: Load) -> None:
        """Refresh a node's load and clear its suspicion; NotFound: register again."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            node = self._holder(node_id, lease)
            self._nodes[node_id] = replace(node, load=load, last_seen=now, suspect=False, offline=False)

    def deregister(self, node_id: str, lease: str) -> None:
        """Remove a node; only the holder of its lease may (an unknown id is already gone)."""
        with self._lock:
            if node_id not in self._nodes:
                return
            self._holder(node_id, lease)
            del self._nodes[node_id]

    def _holder(self, node_id: str, lease: str) -> NodeState:
        node = self._nodes.get(node_id)
        if node is None:
            raise NotFound(f"node {clip(node_id)} is not registered")
        if not lease or not hmac.compare_digest(lease.encode(), node.lease.encode()):
            raise PermissionDenied(f"node {clip(node_id)}: the lease is not this node's (register again)")
        return node

    def _expire(self, now: float) -> None:
        """Forget nodes silent for ``expiry_s`` (lock held)."""
        for node_id in [n.node_id for n in self._nodes.values() if now - n.last_seen > self.expiry_s]:
            del self._nodes[node_id]

    def mark_suspect(self, node_id: str) -> None:
        """A request found the node unreachable: place nothing on it until its next heartbeat."""
        with self._lock:
            node = self._nodes.get(node_id)
            if node is not None:
                self._nodes[node_id] = replace(node, suspect=True)

    def nodes(self, *, include_stale: bool = False) -> list[NodeView]:
        """Registered nodes sorted by id (live only, unless ``include_stale``)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            views = [NodeView(n.info, n.load, now - n.last_seen, self._live(n, now), n.suspect)
                     for n in self._nodes.values()]
        return sorted((v for v in views if v.live or include_stale), key=lambda v: v.info.node_id)

    def live(self, role: Role | None = None) -> list[NodeInfo]:
        """Nodes that may be placed: heard from within ``ttl_s`` and not suspect."""
        return [v.info for v in self.nodes() if not v.suspect and (role is None or v.info.role == role)]

    def cloud_addresses(self) -> list[str]:
        """Addresses of the registered cloud nodes, live or not yet forgotten (what an edge may let
        requests name: a cloud that is down is still one this cluster registered)."""
        return sorted({v.info.address for v in self.nodes(include_stale=True) if v.info.role == Role.CLOUD})

    def last_known(self, role: Role, model: str | None = None) -> NodeInfo | None:
        """The most recently heard node of ``role`` (live or not, not yet forgotten) that runs ``model``:
        where a request goes when no such node is live, to be served degraded until it is back."""
        with self._lock:
            self._expire(self._clock())
            candidates = [n for n in self._nodes.values()
                          if n.info.role == role and (model is None or model in n.info.models)]
        return max(candidates, key=lambda n: n.last_seen).info if candidates else None

    # Placement ------------------------------------------------------------------------------------------

    def place(self, role: Role, model: str | None = None, *, exclude: Iterable[str] = (),
              capability: int | None = None) -> NodeInfo:
        """The least-loaded placeable node of ``role`` (running ``model`` and having ``capability`` if given,
        not in ``exclude``). Ties go to the lowest RTT that live nodes measured to it (link telemetry),
        unmeasured nodes first (so that they get measured), then to the lowest id."""
        excluded = set(exclude)
        with self._lock:
            now = self._clock()
            candidates = [n for n in self._nodes.values()
                          if n.info.role == role and not n.suspect and self._live(n, now)
                          and n.node_id not in excluded and (model is None or model in n.info.models)
                          and (capability is None or capability in n.info.capabilities)]
            rtt = self._measured_rtt_ms(now)
        if not candidates:
            wanted = f" running {clip(model)}" if model else ""
            wanted += f" with capability {capability} (see common.proto's Capability)" if capability is not None else ""
            others = " other than the ones that just failed" if excluded else ""
            raise Unavailable(f"no live {role.value} node{wanted}{others} is registered")
        best = min(candidates, key=lambda n: (_busy(n.load), rtt.get(n.address, 0.0), n.node_id))
        return best.info

    def _measured_rtt_ms(self, now: float) -> dict[str, float]:
        """The lowest RTT any live node measured to each address (lock held)."""
        best: dict[str, float] = {}
        for node in self._nodes.values():
            if self._live(node, now):
                for address, rtt in node.rtt_ms.items():
                    best[address] = min(rtt, best.get(address, rtt))
        return best

    def get_live(self, node_id: str, role: Role) -> NodeInfo:
        """The named node if it can be placed; Unavailable otherwise."""
        with self._lock:
            node = self._nodes.get(node_id)
            ok = (node is not None and node.info.role == role and not node.suspect
                  and self._live(node, self._clock()))
        if not ok:
            raise Unavailable(f"{role.value} node {clip(node_id)} is not live")
        assert node is not None
        return node.info

    # Accounting -----------------------------------------------------------------------------------------

    def request_started(self) -> None:
        with self._lock:
            self.totals.active_requests += 1

    def request_finished(self) -> None:
        with self._lock:
            self.totals.active_requests -= 1

    def account(self, *, round_trips: int, tokens: int) -> None:
        """One served request's figures, added to the totals."""
        with self._lock:
            self.totals.requests += 1
            self.totals.round_trips += round_trips
            self.totals.tokens += tokens


def check_request(*, prompt: str, has_messages: bool, max_tokens: int, policy: str, policies: Iterable[str],
                  max_tokens_limit: int) -> None:
    """InvalidInput for what is wrong with a generation request, before any node is bothered."""
    if not prompt.strip() and not has_messages:
        raise InvalidInput("prompt is empty")
    if not 0 < max_tokens <= max_tokens_limit:
        raise InvalidInput(f"max_tokens must be in [1, {max_tokens_limit}], got {max_tokens}")
    known = list(policies)
    if policy and policy not in known:
        raise InvalidInput(f"unknown policy {clip(policy)}; known: {', '.join(known)}")


def _busy(load: Load) -> float:
    return (load.active_sessions + load.active_requests) / max(1, load.max_sessions)
