"""An MQTT broker inside the coordinator (amqtt), for one machine without a Mosquitto.

Bound to a loopback address only, anonymous access (anyone on this machine can publish): for
demos and development. Production points every process at a real broker with ``--mqtt-url``.
If the asked port is taken (another broker, another coordinator), a free port is bound instead
and logged: nodes need that URL.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging

from amqtt.broker import Broker
from amqtt.errors import BrokerError

log = logging.getLogger(__name__)


def _loopback_host(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdecimal() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--mqtt-listen {listen!r}: give host:port (port 0 = any free port)")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"--mqtt-listen {listen!r}: the embedded broker binds loopback addresses only (no "
                         "authentication); use --mqtt-url with a real broker for other machines")
    return host, int(port)


class EmbeddedBroker:
    """``await start()`` returns the URL nodes use; ``await close()`` stops it."""

    def __init__(self, listen: str = "127.0.0.1:1883") -> None:
        self.host, self.port = _loopback_host(listen)
        self._broker: Broker | None = None
        self.url = ""

    async def start(self) -> str:
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        try:
            await self._start(self.port)
        except BrokerError as exc:
            if self.port == 0:
                raise ValueError(f"embedded MQTT broker: {exc}") from None
            log.warning("embedded MQTT broker: %s:%d is taken (%s); binding a free port", self.host, self.port, exc)
            await self._start(0)
        return self.url

    async def _start(self, port: int) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
                         "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}})
        await broker.start()
        self._broker = broker
        bound = broker._servers["default"].instance.sockets[0].getsockname()[1]  # amqtt keeps no public handle
        self.url = f"mqtt://{host}:{bound}"
        log.info("embedded MQTT broker at %s (nodes: --mqtt-url %s)", self.url, self.url)

    async def close(self) -> None:
        if self._broker is not None:
            with contextlib.suppress(BrokerError, OSError):
                await self._broker.shutdown()
            self._broker = None
