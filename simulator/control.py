"""The netem server: shaped links plus an HTTP+JSON control API (after toxiproxy's) and /metrics.

    GET    /links            every link: name, listen, upstream, profile, stats
    POST   /links            {"name", "listen", "upstream", ...profile keys}    → 201
    GET    /links/{name}
    PATCH  /links/{name}     profile keys to change, e.g. {"rate_mbps": 1}     → 200
    DELETE /links/{name}                                                        → 204
    POST   /reset            every link back to the profile it was created with → 204
    GET    /presets          the named presets' profiles
    GET    /metrics          Prometheus text format

Errors answer ``{"error": "...", "key": "..."}`` with 400 (bad input), 404 (no such link) or
409 (name taken, port in use).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Generator, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from edgecloud.simulator.config import LinkSpec, check_name, link_spec_from_dict
from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.metrics import metrics_registry, render
from edgecloud.simulator.presets import PRESETS
from edgecloud.simulator.profiles import profile_from_dict, profile_to_dict
from edgecloud.simulator.proxy import ShapingProxy, parse_address

log = logging.getLogger(__name__)


def _error(status: int, message: str, key: str = "") -> web.Response:
    return web.json_response({"error": message, "key": key}, status=status)


class _Opening:
    def __init__(self, server: NetemServer) -> None:
        self.server = server

    def __await__(self) -> Generator[Any, None, NetemServer]:
        return self.server.start().__await__()

    async def __aenter__(self) -> NetemServer:
        return await self.server.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.server.close()


class NetemServer:
    """Links by name and the control API. ``create`` starts it; ``control_port`` is the bound port."""

    def __init__(self, *, control: str | tuple[str, int] = ("127.0.0.1", 0), links: Iterable[LinkSpec] = ()) -> None:
        self.control = parse_address(control, "control")
        self.initial_links = list(links)
        self.links: dict[str, ShapingProxy] = {}
        self.registry = metrics_registry(lambda: list(self.links.values()))
        self.control_port = 0
        self._runner: web.AppRunner | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def create(cls, *, control: str | tuple[str, int] = ("127.0.0.1", 0), links: Iterable[LinkSpec] = ()) -> _Opening:
        return _Opening(cls(control=control, links=links))

    @property
    def control_url(self) -> str:
        return f"http://{self.control[0]}:{self.control_port}"

    async def start(self) -> NetemServer:
        for spec in self.initial_links:
            await self.add_link(spec)
        app = web.Application()
        app.add_routes([
            web.get("/links", self._list), web.post("/links", self._create),
            web.get("/links/{name}", self._get), web.patch("/links/{name}", self._patch),
            web.delete("/links/{name}", self._delete), web.post("/reset", self._reset),
            web.get("/presets", self._presets), web.get("/metrics", self._metrics),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.control[0], self.control[1])
        await site.start()
        self.control_port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for link in list(self.links.values()):
            await link.close()
        self.links.clear()

    async def add_link(self, spec: LinkSpec) -> ShapingProxy:
        """Start serving a link; ConfigError if the name is taken."""
        if spec.name in self.links:
            raise ConfigError("name", f"a link named {spec.name!r} exists already")
        link = await ShapingProxy.create(listen=spec.listen, upstream=spec.upstream, profile=spec.profile,
                                         name=spec.name)
        self.links[spec.name] = link
        log.info("link %s: %s -> %s:%d", spec.name, link.address, *link.upstream)
        return link

    async def remove_link(self, name: str) -> None:
        link = self.links.pop(name)
        await link.close()

    # ---- handlers -----------------------------------------------------------------------------

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError((), f"body is not JSON: {exc}") from exc
        if not isinstance(body, dict):
            raise ConfigError((), "body must be a JSON object")
        return body

    async def _list(self, request: web.Request) -> web.Response:
        return web.json_response({name: link.describe() for name, link in self.links.items()})

    async def _create(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            name = check_name(body.get("name"))
            spec = link_spec_from_dict(name, body)
            async with self._lock:
                if name in self.links:
                    return _error(409, f"a link named {name!r} exists already", "name")
                link = await self.add_link(spec)
        except ConfigError as exc:
            return _error(400, str(exc), exc.key)
        except OSError as exc:
            return _error(409, f"cannot listen on {body.get('listen')}: {exc.strerror or exc}", "listen")
        return web.json_response(link.describe(), status=201)

    def _link(self, request: web.Request) -> ShapingProxy | None:
        return self.links.get(request.match_info["name"])

    async def _get(self, request: web.Request) -> web.Response:
        link = self._link(request)
        if link is None:
            return _error(404, f"no link named {request.match_info['name']!r}", "name")
        return web.json_response(link.describe())

    async def _patch(self, request: web.Request) -> web.Response:
        link = self._link(request)
        if link is None:
            return _error(404, f"no link named {request.match_info['name']!r}", "name")
        try:
            body = await self._body(request)
            for key in ("listen", "upstream", "name"):
                if key in body:
                    raise ConfigError(key, "cannot be changed; delete the link and create it again")
            link.set_profile(profile_from_dict(body, base=link.profile))
        except ConfigError as exc:
            return _error(400, str(exc), exc.key)
        return web.json_response(link.describe())

    async def _delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.links:
            return _error(404, f"no link named {name!r}", "name")
        await self.remove_link(name)
        return web.Response(status=204)

    async def _reset(self, request: web.Request) -> web.Response:
        for link in self.links.values():
            link.set_profile(link.initial_profile)
        return web.Response(status=204)

    async def _presets(self, request: web.Request) -> web.Response:
        return web.json_response({name: profile_to_dict(p) for name, p in PRESETS.items()})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=render(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST})
