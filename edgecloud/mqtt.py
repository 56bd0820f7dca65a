"""MQTT settings and connections of the telemetry and discovery plane (aiomqtt clients).

``--mqtt-url mqtt://[user:pass@]host:port`` (``mqtts://`` for TLS, verified with the process's
``--tls-ca``, else the system's CAs). Topics live under ``edgecloud/<cluster>/nodes/<node_id>/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt

SCHEMES = {"mqtt": 1883, "mqtts": 8883}
TOPIC_ROOT = "edgecloud"
_CLUSTER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NODE_TOPICS = ("info", "load", "link", "status", "refused")


class MqttUnavailable(ValueError):
    """The broker cannot be reached or refused this client (bad URL, credentials, TLS)."""


@dataclass(frozen=True)
class MqttConfig:
    """Where the broker is and how this process talks to it."""

    url: str
    cluster: str = "default"
    tls_ca_path: str | None = None  # CA bundle for mqtts:// (None: the system's)
    keepalive_s: int = 5  # a client silent 1.5 x this is dropped (its will sent); a closed TCP connection at once
    connect_timeout_s: float = 5.0  # deadline of the connection and of every publish/subscribe
    load_interval_s: float = 1.0  # how often a node publishes its load and link estimates
    probe_timeout_s: float = 2.0  # how long a starting node waits for its id's retained status
    reconnect_max_s: float = 5.0  # the longest pause between reconnection attempts

    def __post_init__(self) -> None:
        parse_url(self.url)
        if not _CLUSTER.fullmatch(self.cluster):
            raise ValueError(f"--cluster {self.cluster!r}: 1-64 letters, digits, '.', '_' or '-'")
        if self.keepalive_s < 1 or self.connect_timeout_s <= 0 or self.load_interval_s <= 0:
            raise ValueError("keepalive_s must be >= 1, connect_timeout_s and load_interval_s > 0")
        if self.probe_timeout_s <= 0 or self.reconnect_max_s <= 0:
            raise ValueError("probe_timeout_s and reconnect_max_s must be > 0")

    @property
    def redacted_url(self) -> str:
        """The URL without its password (for logs and error messages)."""
        return redact(self.url)

    def node_topic(self, node_id: str, kind: str) -> str:
        if kind not in NODE_TOPICS:
            raise ValueError(f"unknown node topic {kind!r}")
        return f"{TOPIC_ROOT}/{self.cluster}/nodes/{node_id}/{kind}"

    @property
    def nodes_filter(self) -> str:
        """Every node topic of this cluster (what the coordinator subscribes to)."""
        return f"{TOPIC_ROOT}/{self.cluster}/nodes/+/+"

    def client(self, identifier: str, will: aiomqtt.Will | None = None) -> aiomqtt.Client:
        """An unconnected client (``async with`` connects it, within ``connect_timeout_s``)."""
        scheme, host, port, user, password = parse_url(self.url)
        tls = ssl.create_default_context(cafile=self.tls_ca_path) if scheme == "mqtts" else None
        return aiomqtt.Client(host, port, username=user, password=password, identifier=identifier, will=will,
                              keepalive=self.keepalive_s, timeout=self.connect_timeout_s, tls_context=tls,
                              max_queued_incoming_messages=1024, max_queued_outgoing_messages=1024)


def parse_url(url: str) -> tuple[str, str, int, str | None, str | None]:
    """(scheme, host, port, user, password) of ``mqtt[s]://[user:pass@]host[:port]``; ValueError if malformed."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"--mqtt-url {redact(url)!r}: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"--mqtt-url {redact(url)!r}: the scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError(f"--mqtt-url {redact(url)!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"--mqtt-url {redact(url)!r}: give only mqtt[s]://[user:pass@]host:port")
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.scheme, parts.hostname, port or SCHEMES[parts.scheme], user, password


def redact(url: str) -> str:
    """``url`` with the password replaced by ``***``."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def connect_error(config: MqttConfig, exc: Exception) -> MqttUnavailable:
    """A clear error for a failed connection (refused credentials read as such)."""
    why = str(exc)
    if isinstance(exc, aiomqtt.MqttCodeError) and getattr(exc.rc, "value", exc.rc) in (4, 5, 134, 135):
        why = f"the broker refused the credentials ({exc}): check the user and password in --mqtt-url"
    return MqttUnavailable(f"MQTT broker {config.redacted_url}: {why}")


# What a broker connection may raise on the way down.
CONNECTION_ERRORS = (aiomqtt.MqttError, OSError, ssl.SSLError, TimeoutError)


async def disconnect(client: aiomqtt.Client | None, timeout_s: float) -> None:
    """Leave ``client``'s connection (None: nothing), whatever state it is in, within ``timeout_s``."""
    if client is not None:
        with contextlib.suppress(*CONNECTION_ERRORS, RuntimeError):
            await asyncio.wait_for(client.__aexit__(None, None, None), timeout_s)
