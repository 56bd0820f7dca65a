"""Profiles, presets, traces and links files: valid input loads, bad input names the key or line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.simulator.config import load_links
from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.presets import PRESETS, preset
from edgecloud.simulator.profiles import DirectionProfile, LinkProfile, profile_from_dict, profile_to_dict
from edgecloud.simulator.traces import Trace, load_trace, write_trace


def test_layers_and_round_trip(tmp_path: Path) -> None:
    trace = write_trace(Trace((1, 1, 2)), tmp_path / "link.trace")
    profile = profile_from_dict({"preset": "4g", "latency_ms": 30, "seed": 5,
                                 "uplink": {"rate_mbps": 2, "jitter_distribution": "pareto"},
                                 "downlink": {"trace_file": str(trace)}, "outages_s": [[1, 2.5]],
                                 "outage_mode": "reset"})
    assert profile.uplink.latency_ms == profile.downlink.latency_ms == 30
    assert profile.uplink.rate_mbps == 2 and profile.uplink.jitter_ms == PRESETS["4g"].uplink.jitter_ms
    assert profile.downlink.rate_mbps is None and profile.downlink.trace == Trace((1, 1, 2), str(trace))
    assert profile.outages.scheduled_s == ((1, 2.5),) and profile.outages.mode == "reset"
    assert profile_from_dict(profile_to_dict(profile)) == profile
    patched = profile_from_dict({"rate_mbps": 1}, base=profile)  # a rate replaces the trace
    assert patched.downlink.rate_mbps == 1 and patched.downlink.trace is None
    assert patched.uplink.latency_ms == 30 and patched.seed == 5


def test_presets_are_valid_and_distinct() -> None:
    assert set(PRESETS) == {"lan", "wifi", "4g", "5g", "3g-poor", "satellite"}
    for name, profile in PRESETS.items():
        assert profile_from_dict({"preset": name}) == profile
        assert profile.uplink.latency_ms > 0 and profile.downlink.rate_mbps
    assert PRESETS["satellite"].uplink.latency_ms > PRESETS["4g"].uplink.latency_ms > PRESETS["lan"].uplink.latency_ms


@pytest.mark.parametrize(("data", "key", "words"), [
    ({"latency_ms": 10, "bandwidth": 5}, "bandwidth", "unknown key"),
    ({"rate_mbps": -1}, "rate_mbps", "must be > 0"),
    ({"uplink": {"rate_mbps": -3}}, "uplink.rate_mbps", "got -3"),
    ({"downlink": {"latency": 3}}, "downlink.latency", "unknown key"),
    ({"latency_ms": "fast"}, "latency_ms", "must be a number"),
    ({"jitter_distribution": "cauchy"}, "jitter_distribution", "uniform, normal, pareto"),
    ({"loss_pct": 100}, "loss_pct", "outage"),
    ({"jitter_correlation": 1.5}, "jitter_correlation", "<= 0.999"),
    ({"preset": "6g"}, "preset", "known: lan"),
    ({"outages_s": [[3, 1]]}, "outages_s[0]", "must come after"),
    ({"outage_mean_up_s": 5}, "outage_mean_up_s", "go together"),
    ({"outage_mode": "explode"}, "outage_mode", "stall, reset"),
    ({"rate_mbps": 5, "trace_ms": [1]}, "rate_mbps", "not both"),
    ({"seed": 1.5}, "seed", "integer"),
])
def test_bad_profiles_name_the_key(data: dict, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        profile_from_dict(data)
    assert info.value.key == key
    assert words in str(info.value)


def test_dataclass_validation() -> None:
    with pytest.raises(ConfigError, match="burst_bytes"):
        DirectionProfile(rate_mbps=1.0, burst_bytes=0)
    with pytest.raises(ConfigError, match="latency_ms"):
        LinkProfile.symmetric(latency_ms=-1.0)
    with pytest.raises(ConfigError, match="unexpected keyword"):
        LinkProfile.symmetric(latency=1.0)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("1\n2\nabc\n", 3, "'abc' is not a non-negative integer"),
    ("5\n3\n", 2, "comes before"),
    ("1\n-4\n", 2, "not a non-negative integer"),
    ("\n\n", None, "empty trace"),
    ("0\n0\n", 2, "must be > 0"),
])
def test_bad_traces_name_the_line(tmp_path: Path, text: str, line: int | None, words: str) -> None:
    path = tmp_path / "bad.trace"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_trace(path)
    assert info.value.line == line and words in str(info.value)
    if line:
        assert f"bad.trace:{line}:" in str(info.value)


def test_binary_file_is_not_a_trace(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"12\n\x89PNG\x00\xff")
    with pytest.raises(ConfigError, match=r"model.bin:2: not a Mahimahi trace"):
        load_trace(path)
    with pytest.raises(ConfigError, match=r"trace_file: .*model.bin:2"):
        profile_from_dict({"trace_file": str(path)})


def test_trace_constant_helper() -> None:
    assert Trace.constant(12.0).mean_rate_mbps == pytest.approx(12.0)
    assert Trace.constant(3.0).mean_rate_mbps == pytest.approx(3.0)


LINKS = """\
[links.edge0-cloud]
listen = "127.0.0.1:7001"
upstream = "127.0.0.1:50051"
preset = "4g"

[links.edge0-cloud.uplink]
latency_ms = 12
rate_mbps = {rate}

[links.lan]
listen = "127.0.0.1:7002"
upstream = "127.0.0.1:50052"
trace_file = "{trace}"
"""


def test_links_file_loads(tmp_path: Path) -> None:
    write_trace(Trace((1,)), tmp_path / "const.trace")
    path = tmp_path / "links.toml"
    path.write_text(LINKS.format(rate=5, trace="const.trace"))  # relative to the file
    edge, lan = load_links(path)
    assert edge.name == "edge0-cloud" and edge.profile.uplink.rate_mbps == 5
    assert edge.profile.uplink.latency_ms == 12 and edge.profile.downlink.latency_ms == 25
    assert lan.profile.uplink.trace is not None and lan.profile.uplink.trace.mean_rate_mbps == pytest.approx(12)


def test_links_file_errors_name_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "links.toml"
    path.write_text(LINKS.format(rate=-5, trace="const.trace"))
    with pytest.raises(ConfigError) as info:
        load_links(path)
    assert str(info.value).startswith(f"{path}:8: links.edge0-cloud.uplink.rate_mbps: must be > 0")
    path.write_text(LINKS.format(rate=5, trace="missing.trace"))
    with pytest.raises(ConfigError, match=r"links.toml:13: links.lan.trace_file: .*cannot read"):
        load_links(path)
    path.write_text(LINKS.format(rate=5, trace="x").replace('listen = "127.0.0.1:7002"', 'listen = "nowhere"'))
    with pytest.raises(ConfigError, match=r"links.toml:11: links.lan.listen: must be HOST:PORT"):
        load_links(path)
    path.write_text("[links.a]\nlisten = \n")
    with pytest.raises(ConfigError, match=r"links.toml:2: invalid TOML"):
        load_links(path)
    path.write_text('[links.a]\nlisten = "127.0.0.1:1"\nupstream = "127.0.0.1:2"\nrate_mbs = 3\n')
    with pytest.raises(ConfigError, match=r"links.toml:4: links.a.rate_mbs: unknown key"):
        load_links(path)


def test_preset_lookup() -> None:
    assert preset("lan") is PRESETS["lan"]
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("dialup")
