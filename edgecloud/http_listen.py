"""HTTP listeners beside the gRPC one (the OpenAI-compatible API, Prometheus metrics): address
parsing, the daemon's TLS certificate, bearer-token checks, bind and close."""

from __future__ import annotations

import hmac
import logging
import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from edgecloud.errors import clip

if TYPE_CHECKING:
    from edgecloud import rpc

log = logging.getLogger(__name__)


def split_listen(listen: str, what: str = "listen") -> tuple[str, int]:
    """(host, port) of ``host:port`` (``[v6]:port`` too); ValueError naming ``what`` when malformed."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} address {clip(listen)} is not host:port (port 0..65535)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return host or "127.0.0.1", int(port)


def server_ssl(security: rpc.SecurityConfig, what: str = "HTTP listener", *,
               client_certificates: bool = False) -> ssl.SSLContext | None:
    """The HTTPS context of the daemon's TLS certificate and key (None without TLS); with
    ``client_certificates``, mutual TLS as on the gRPC listener when ``tls_client_ca_path`` is set."""
    if not security.server_tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(security.tls_cert_path), str(security.tls_key_path))
        if client_certificates and security.tls_client_ca_path:
            context.load_verify_locations(str(security.tls_client_ca_path))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate, key or client CA for the {what}: {exc}") from exc
    return context


def bearer_ok(header: str | None, token: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (constant time; no token: always)."""
    if not token:
        return True
    return header is not None and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


class HttpListener:
    """Serves an aiohttp ``app`` on ``listen`` (port 0 = any), HTTPS with the daemon's certificate."""

    def __init__(self, app: web.Application, listen: str, security: rpc.SecurityConfig, *, what: str,
                 client_certificates: bool = False) -> None:
        self.app = app
        self.client_certificates = client_certificates
        self.listen = listen
        self.security = security
        self.what = what
        split_listen(listen, what)  # a malformed address fails at construction, before anything binds
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        """Bind; returns the base URL (``http(s)://host:port``, the real port)."""
        host, port = split_listen(self.listen, self.what)
        context = server_ssl(self.security, self.what, client_certificates=self.client_certificates)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port, ssl_context=context).start()
        except OSError as exc:
            await self.close()
            raise OSError(f"cannot listen on {self.listen!r} for the {self.what}: {exc.strerror}") from exc
        bound = self._runner.addresses[0][1]
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else (f"[{host}]" if ":" in host else host)
        return f"{'https' if context else 'http'}://{shown}:{bound}"

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
