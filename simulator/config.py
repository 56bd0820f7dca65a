"""Link files (``links.toml``): named links, each ``listen`` → ``upstream`` with a profile.

    [links.edge0-cloud]
    listen = "127.0.0.1:7001"
    upstream = "127.0.0.1:50051"
    preset = "4g"
    uplink = { rate_mbps = 5 }
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.profiles import LinkProfile, profile_from_dict
from edgecloud.simulator.proxy import parse_address

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$")


def check_name(name: object, key: str = "name") -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(key, f"must be 1–63 letters, digits, '_', '.', '-' (starting with a letter or digit), "
                          f"got {name!r}")
    return name


@dataclass(frozen=True)
class LinkSpec:
    """A link to serve: ``listen`` and ``upstream`` are ``HOST:PORT``."""

    name: str
    listen: str
    upstream: str
    profile: LinkProfile = field(default_factory=LinkProfile)


def link_spec_from_dict(name: str, data: Mapping[str, Any], *, base_dir: Path | None = None) -> LinkSpec:
    """One ``[links.NAME]`` table (or a POST /links body without its name)."""
    check_name(name)
    if not isinstance(data, Mapping):
        raise ConfigError((), f"link {name!r} must be a table, got {type(data).__name__}")
    for key in ("listen", "upstream"):
        if key not in data:
            raise ConfigError(key, "missing (HOST:PORT)")
        parse_address(data[key], key)
    profile_keys = {k: v for k, v in data.items() if k not in ("listen", "upstream", "name")}
    return LinkSpec(name, data["listen"], data["upstream"], profile_from_dict(profile_keys, base_dir=base_dir))


def links_from_dict(data: Mapping[str, Any], *, base_dir: Path | None = None) -> list[LinkSpec]:
    """The whole file: only a ``links`` table of named links."""
    for key in data:
        if key != "links":
            raise ConfigError(key, "unknown key; a links file holds only [links.NAME] tables")
    links = data.get("links", {})
    if not isinstance(links, Mapping):
        raise ConfigError("links", "must be a table of named links")
    specs = []
    for name, table in links.items():
        try:
            specs.append(link_spec_from_dict(name, table, base_dir=base_dir))
        except ConfigError as exc:
            raise exc.prefixed(("links", name)) from None
    return specs


def load_toml(path: str | Path) -> tuple[dict[str, Any], str]:
    """Parse a TOML file; syntax errors become ConfigError with the file's line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError((), f"cannot read: {exc.strerror or exc}", source=str(path)) from exc
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        raise ConfigError((), f"invalid TOML: {exc}", source=str(path),
                          line=int(match.group(1)) if match else None) from exc


def load_links(path: str | Path) -> list[LinkSpec]:
    """Read a links file; errors name the file, line (best effort) and key."""
    data, text = load_toml(path)
    try:
        return links_from_dict(data, base_dir=Path(path).parent)
    except ConfigError as exc:
        raise exc.located(str(path), text) from None
