"""Link profiles: what a link does to the bytes of each direction. Frozen, validated, units in names.

``uplink`` is the direction from the proxy's clients to its upstream (edge → cloud),
``downlink`` the way back. Dict/TOML form (``profile_from_dict``): direction keys at the top
apply to both directions, ``uplink``/``downlink`` tables override them, ``preset`` starts from
a named preset. For example::

    preset = "4g"
    latency_ms = 30
    uplink = { rate_mbps = 5 }
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.traces import Trace, load_trace

JITTER_DISTRIBUTIONS = ("uniform", "normal", "pareto")
LOSS_MODELS = ("bernoulli", "gilbert-elliott")
OUTAGE_MODES = ("stall", "reset")


def _check_number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf,
                  low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if value < low or (low_open and value == low) or value > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        if high != math.inf:
            bound += f" and <= {high:g}"
        raise ConfigError(name, f"must be {bound}, got {value!r}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True)
class DirectionProfile:
    """One direction of a link.

    Delay: ``latency_ms`` one way, plus jitter with standard deviation ``jitter_ms`` drawn from
    ``jitter_distribution`` (uniform: ±jitter·√3; normal; pareto: shape 3, shifted to mean 0,
    heavy upper tail), AR(1)-correlated with ``jitter_correlation`` (0..1, the marginal spread
    stays ``jitter_ms``). Rate: a token bucket of ``rate_mbps`` (payload bits; None = no limit)
    holding ``burst_bytes``; or a Mahimahi ``trace`` instead. At most ``queue_bytes`` wait for
    the rate limiter before the proxy stops reading (TCP backpressure). Loss per 1500-byte
    segment, Bernoulli (``loss_pct``) or Gilbert–Elliott (``ge_*``: per-segment transition
    chances and loss chance in each state); on a TCP stream a lost segment shows up as
    ``rto_ms`` of added delay (doubling when the retransmission is lost too).
    """

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    jitter_distribution: str = "normal"
    jitter_correlation: float = 0.0
    rate_mbps: float | None = None
    burst_bytes: int = 15_000
    queue_bytes: int = 262_144
    trace: Trace | None = None
    loss_model: str = "bernoulli"
    loss_pct: float = 0.0
    ge_good_to_bad_pct: float = 0.0
    ge_bad_to_good_pct: float = 100.0
    ge_loss_in_bad_pct: float = 100.0
    ge_loss_in_good_pct: float = 0.0
    rto_ms: float = 200.0

    def __post_init__(self) -> None:
        _check_number("latency_ms", self.latency_ms)
        _check_number("jitter_ms", self.jitter_ms)
        _check_choice("jitter_distribution", self.jitter_distribution, JITTER_DISTRIBUTIONS)
        _check_number("jitter_correlation", self.jitter_correlation, high=0.999)
        if self.rate_mbps is not None:
            _check_number("rate_mbps", self.rate_mbps, low_open=True)
        if isinstance(self.burst_bytes, bool) or not isinstance(self.burst_bytes, int) or self.burst_bytes < 1:
            raise ConfigError("burst_bytes", f"must be an integer >= 1, got {self.burst_bytes!r}")
        if isinstance(self.queue_bytes, bool) or not isinstance(self.queue_bytes, int) or self.queue_bytes < 1500:
            raise ConfigError("queue_bytes", f"must be an integer >= 1500, got {self.queue_bytes!r}")
        if self.trace is not None and self.rate_mbps is not None:
            raise ConfigError("trace", "a trace and rate_mbps are mutually exclusive (the trace sets the rate)")
        _check_choice("loss_model", self.loss_model, LOSS_MODELS)
        for name in ("loss_pct", "ge_good_to_bad_pct", "ge_bad_to_good_pct", "ge_loss_in_bad_pct",
                     "ge_loss_in_good_pct"):
            _check_number(name, getattr(self, name), high=100.0)
        if self.loss_pct >= 100.0:
            raise ConfigError("loss_pct", "must be < 100 (a link losing everything is an outage)")
        _check_number("rto_ms", self.rto_ms, low_open=True)

    @property
    def lossy(self) -> bool:
        if self.loss_model == "bernoulli":
            return self.loss_pct > 0
        return (self.ge_good_to_bad_pct > 0 and self.ge_loss_in_bad_pct > 0) or self.ge_loss_in_good_pct > 0

    @property
    def shaped(self) -> bool:
        """Whether this direction changes anything at all."""
        return bool(self.latency_ms or self.jitter_ms or self.rate_mbps or self.trace or self.lossy)


@dataclass(frozen=True)
class Outages:
    """When the whole link is down: scheduled ``(start_s, end_s)`` intervals, counted from the
    moment the profile takes effect, and/or an on/off process with exponential up and down
    times of the given means. ``mode``: ``stall`` holds bytes until the link is back (connections
    hang, calls hit their deadlines); ``reset`` resets open connections at the outage's start and
    refuses new ones while it lasts."""

    scheduled_s: tuple[tuple[float, float], ...] = ()
    mean_up_s: float | None = None
    mean_down_s: float | None = None
    mode: str = "stall"

    def __post_init__(self) -> None:
        for index, interval in enumerate(self.scheduled_s):
            if not isinstance(interval, tuple) or len(interval) != 2:
                raise ConfigError(("outages_s", index), f"must be a [start_s, end_s] pair, got {interval!r}")
            start, end = interval
            _check_number(f"outages_s[{index}] start", start)
            _check_number(f"outages_s[{index}] end", end)
            if end <= start:
                raise ConfigError(("outages_s", index), f"end {end} s must come after start {start} s")
        if (self.mean_up_s is None) != (self.mean_down_s is None):
            raise ConfigError("outage_mean_up_s", "outage_mean_up_s and outage_mean_down_s go together")
        if self.mean_up_s is not None:
            _check_number("outage_mean_up_s", self.mean_up_s, low_open=True)
            _check_number("outage_mean_down_s", self.mean_down_s, low_open=True)
        _check_choice("outage_mode", self.mode, OUTAGE_MODES)

    @property
    def any(self) -> bool:
        return bool(self.scheduled_s) or self.mean_up_s is not None


@dataclass(frozen=True)
class LinkProfile:
    """A whole link: both directions, its outages, the seed of every random draw, and whether the
    rate limit is one bucket shared by all connections (a real link) or one per connection."""

    uplink: DirectionProfile = field(default_factory=DirectionProfile)
    downlink: DirectionProfile = field(default_factory=DirectionProfile)
    outages: Outages = field(default_factory=Outages)
    seed: int = 0
    rate_shared: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError("seed", f"must be an integer, got {self.seed!r}")
        if not isinstance(self.rate_shared, bool):
            raise ConfigError("rate_shared", f"must be true or false, got {self.rate_shared!r}")

    @classmethod
    def symmetric(cls, *, seed: int = 0, outages: Outages | None = None, rate_shared: bool = True,
                  **direction: Any) -> LinkProfile:
        """The same ``DirectionProfile(**direction)`` both ways."""
        try:
            both = DirectionProfile(**direction)
        except TypeError as exc:
            raise ConfigError((), str(exc)) from exc
        return cls(both, both, outages or Outages(), seed, rate_shared)

    @property
    def shaped(self) -> bool:
        return self.uplink.shaped or self.downlink.shaped or self.outages.any

    def direction(self, name: str) -> DirectionProfile:
        return {"uplink": self.uplink, "downlink": self.downlink}[name]


# ---- dict / TOML form -------------------------------------------------------------------------

_DIRECTION_KEYS = {f.name for f in fields(DirectionProfile)} - {"trace"} | {"trace_file", "trace_ms"}
_LINK_KEYS = {"preset", "seed", "rate_shared", "uplink", "downlink", "outages_s", "outage_mean_up_s",
              "outage_mean_down_s", "outage_mode"}
PROFILE_KEYS = frozenset(_DIRECTION_KEYS | _LINK_KEYS)


def _direction_updates(data: Mapping[str, Any], base: DirectionProfile, base_dir: Path | None,
                       allowed_extra: set[str]) -> DirectionProfile:
    updates: dict[str, Any] = {}
    for key, value in data.items():
        if key in allowed_extra:
            continue
        if key not in _DIRECTION_KEYS:
            known = sorted(_DIRECTION_KEYS | allowed_extra)
            raise ConfigError(key, f"unknown key; expected one of {', '.join(known)}")
        if key == "trace_file":
            if not isinstance(value, str):
                raise ConfigError(key, f"must be a path string, got {value!r}")
            path = Path(value)
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            try:
                updates["trace"] = load_trace(path)
            except ConfigError as exc:
                raise ConfigError(key, f"{exc}") from exc
        elif key == "trace_ms":
            if not isinstance(value, list | tuple):
                raise ConfigError(key, f"must be a list of integer ms, got {value!r}")
            try:
                updates["trace"] = Trace(tuple(value), source=None)
            except ConfigError as exc:
                raise ConfigError(key, exc.message) from exc
        elif key == "rate_mbps" and value in (None, "none", "unlimited"):
            updates[key] = None
        else:
            updates[key] = value
    if "trace" in updates and "rate_mbps" in updates:
        raise ConfigError("rate_mbps", "give either rate_mbps or a trace, not both")
    if "trace" in updates:
        updates["rate_mbps"] = None
    elif "rate_mbps" in updates:
        updates["trace"] = None
    for key in ("burst_bytes", "queue_bytes"):
        if isinstance(updates.get(key), float) and updates[key].is_integer():
            updates[key] = int(updates[key])
    return replace(base, **updates)


def _outages(data: Mapping[str, Any], base: Outages) -> Outages:
    updates: dict[str, Any] = {}
    if "outages_s" in data:
        value = data["outages_s"]
        if not isinstance(value, list | tuple):
            raise ConfigError("outages_s", f"must be a list of [start_s, end_s] pairs, got {value!r}")
        pairs = []
        for index, pair in enumerate(value):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigError(("outages_s", index), f"must be a [start_s, end_s] pair, got {pair!r}")
            pairs.append((pair[0], pair[1]))
        updates["scheduled_s"] = tuple(pairs)
    for key, name in (("outage_mean_up_s", "mean_up_s"), ("outage_mean_down_s", "mean_down_s"),
                      ("outage_mode", "mode")):
        if key in data:
            updates[name] = data[key]
    return replace(base, **updates)


def profile_from_dict(data: Mapping[str, Any], *, base: LinkProfile | None = None,
                      base_dir: Path | None = None) -> LinkProfile:
    """Build (or, given ``base``, update) a profile from its dict/TOML form.

    Layers, later wins: ``base`` (default: no shaping) → ``preset`` → top-level direction keys
    (both directions) → ``uplink``/``downlink`` tables. Setting a trace clears ``rate_mbps`` of the
    same direction and vice versa. Raises ConfigError naming the offending key.
    """
    if not isinstance(data, Mapping):
        raise ConfigError((), f"a profile must be a table/object, got {type(data).__name__}")
    profile = base or LinkProfile()
    if "preset" in data:
        from edgecloud.simulator.presets import preset

        profile = preset(data["preset"])
    try:
        up = _direction_updates(data, profile.uplink, base_dir, _LINK_KEYS)
        down = _direction_updates(data, profile.downlink, base_dir, _LINK_KEYS)
    except ConfigError:
        raise
    for name in ("uplink", "downlink"):
        if name in data:
            table = data[name]
            if not isinstance(table, Mapping):
                raise ConfigError(name, f"must be a table of direction keys, got {table!r}")
            try:
                updated = _direction_updates(table, up if name == "uplink" else down, base_dir, set())
            except ConfigError as exc:
                raise exc.prefixed((name,)) from None
            if name == "uplink":
                up = updated
            else:
                down = updated
    outages = _outages(data, profile.outages)
    seed = data.get("seed", profile.seed)
    rate_shared = data.get("rate_shared", profile.rate_shared)
    return LinkProfile(up, down, outages, seed, rate_shared)


def _direction_to_dict(direction: DirectionProfile) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(DirectionProfile):
        value = getattr(direction, f.name)
        if f.name == "trace":
            if value is not None:
                if value.source:
                    out["trace_file"] = value.source
                else:
                    out["trace_ms"] = list(value.opportunities_ms)
        elif value is not None:
            out[f.name] = value
    return out


def profile_to_dict(profile: LinkProfile) -> dict[str, Any]:
    """The canonical dict form (JSON/TOML-ready); ``profile_from_dict`` reads it back."""
    out: dict[str, Any] = {"seed": profile.seed, "rate_shared": profile.rate_shared,
                           "outage_mode": profile.outages.mode,
                           "outages_s": [list(pair) for pair in profile.outages.scheduled_s]}
    if profile.outages.mean_up_s is not None:
        out["outage_mean_up_s"] = profile.outages.mean_up_s
        out["outage_mean_down_s"] = profile.outages.mean_down_s
    out["uplink"] = _direction_to_dict(profile.uplink)
    out["downlink"] = _direction_to_dict(profile.downlink)
    return out
