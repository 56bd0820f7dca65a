"""One error type for every bad simulator input: it names the key (and, when known, file and line)."""

from __future__ import annotations

import re
from collections.abc import Sequence

KeyPath = tuple[str | int, ...]


def render_key(path: Sequence[str | int]) -> str:
    """``("links", "a-b", "rate_mbps")`` → ``links.a-b.rate_mbps``; ints become ``[i]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


class ConfigError(ValueError):
    """Bad profile, link file, trace or experiment. ``str()`` reads ``file:line: key: message``."""

    def __init__(self, key: Sequence[str | int] | str, message: str, *, source: str | None = None,
                 line: int | None = None) -> None:
        self.key_path: KeyPath = (key,) if isinstance(key, str) else tuple(key)
        self.message = message
        self.source = source
        self.line = line
        super().__init__(str(self))

    @property
    def key(self) -> str:
        return render_key(self.key_path)

    def __str__(self) -> str:
        where = ""
        if self.source:
            where = f"{self.source}:{self.line}: " if self.line else f"{self.source}: "
        elif self.line:
            where = f"line {self.line}: "
        return f"{where}{self.key}: {self.message}" if self.key_path else f"{where}{self.message}"

    def prefixed(self, prefix: Sequence[str | int]) -> ConfigError:
        """The same error, its key placed under ``prefix``."""
        return ConfigError((*prefix, *self.key_path), self.message, source=self.source, line=self.line)

    def located(self, source: str, text: str) -> ConfigError:
        """The same error with the TOML ``text``'s line of its key, best effort."""
        line = self.line or find_toml_line(text, self.key_path)
        return ConfigError(self.key_path, self.message, source=self.source or source, line=line)


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")


def _split_dotted(key: str) -> list[str]:
    return [part.strip().strip("\"'") for part in key.split(".")]


def find_toml_line(text: str, path: Sequence[str | int]) -> int | None:
    """The 1-based line where ``path`` is set in TOML ``text`` (tables, arrays of tables); None if unsure.

    A scanner, not a parser: it follows ``[table]`` and ``[[array]]`` headers and ``key =`` lines,
    and falls back to the deepest enclosing table or key it found.
    """
    best: int | None = None
    table: list[str | int] = []
    counts: dict[tuple[str, ...], int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(raw)
        if header:
            names = _split_dotted(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(tuple(names), -1) + 1
                counts[tuple(names)] = index
                table = [*names, index]
            else:
                table = list(names)
            if list(path[: len(table)]) == table:
                best = number
            continue
        key = _KEY.match(raw)
        if not key:
            continue
        full = [*table, *_split_dotted(key.group(1))]
        if list(path[: len(full)]) == full:
            best = number
            if len(full) >= len(path):
                return number
        elif full and len(path) > len(table) and path[: len(table)] == tuple(table) and \
                full[len(table)] == path[len(table)] and len(path) > len(table) + 1:
            best = number  # an inline table or array holding the key: point at its first line
    return best
