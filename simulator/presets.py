"""Named link presets. Each number is a typical value with its source in the comment beside it;
they are starting points for experiments, not measurements of any particular network."""

from __future__ import annotations

from edgecloud.simulator.errors import ConfigError
from edgecloud.simulator.profiles import DirectionProfile, LinkProfile

PRESETS: dict[str, LinkProfile] = {
    # Wired gigabit Ethernet, one switch. Rate: TCP payload over 1000BASE-T is
    # 1000 Mbit/s × 1448/1538 (payload per frame incl. headers, preamble, gap) ≈ 941 Mbit/s.
    # Latency: switched LAN round trips are ~0.1–0.3 ms (ping on any GbE LAN).
    "lan": LinkProfile.symmetric(latency_ms=0.1, jitter_ms=0.02, rate_mbps=941.0, burst_bytes=64_000),
    # Home Wi-Fi 5 (802.11ac) with good signal: first-hop RTT of a few ms with a long tail
    # (Sui et al., "Characterizing and Improving WiFi Latency in Large-Scale Operational
    # Networks", MobiSys 2016: WiFi hop latency medians of a few ms, heavy tail); TCP goodput
    # of ~100–300 Mbit/s is the usual range for 2×2 80 MHz clients; we take 150 / 100 Mbit/s.
    "wifi": LinkProfile(
        uplink=DirectionProfile(latency_ms=2.0, jitter_ms=1.0, jitter_distribution="pareto", rate_mbps=100.0,
                                burst_bytes=30_000, loss_pct=0.1),
        downlink=DirectionProfile(latency_ms=2.0, jitter_ms=1.0, jitter_distribution="pareto",
                                  rate_mbps=150.0, burst_bytes=30_000, loss_pct=0.1)),
    # LTE: Opensignal's country reports (2021–2023) put typical 4G download speeds at ~20–40
    # Mbit/s, upload ~5–10 Mbit/s and latency ~40–60 ms RTT; WebPageTest's "LTE" profile uses
    # 12 Mbit/s and 70 ms RTT. We take 25 / 8 Mbit/s, 25 ms one way. Link-layer HARQ/RLC
    # retransmissions hide most radio loss from TCP, so it shows as jitter, not loss.
    "4g": LinkProfile(
        uplink=DirectionProfile(latency_ms=25.0, jitter_ms=5.0, rate_mbps=8.0, burst_bytes=15_000),
        downlink=DirectionProfile(latency_ms=25.0, jitter_ms=5.0, rate_mbps=25.0, burst_bytes=30_000)),
    # 5G non-standalone (mid-band): Opensignal reports typical 5G downloads of ~100–300 Mbit/s,
    # uploads ~15–30 Mbit/s and RTTs of ~20–30 ms (the 4G core still in the path).
    "5g": LinkProfile(
        uplink=DirectionProfile(latency_ms=12.0, jitter_ms=3.0, rate_mbps=20.0, burst_bytes=30_000),
        downlink=DirectionProfile(latency_ms=12.0, jitter_ms=3.0, rate_mbps=150.0, burst_bytes=60_000)),
    # Poor 3G: WebPageTest's "3G Slow" connectivity profile (400 kbit/s each way, 400 ms RTT);
    # the 1% loss, 20 ms jitter and the small (~0.6 s) buffer are our choice for a cell edge.
    "3g-poor": LinkProfile.symmetric(latency_ms=200.0, jitter_ms=20.0, rate_mbps=0.4, burst_bytes=3_000,
                                     queue_bytes=32_000, loss_pct=1.0),
    # Geostationary satellite broadband. Latency from geometry: user → satellite → gateway is
    # 2 × 35,786 km ≈ 239 ms at the speed of light, so ≥ 477 ms RTT; with processing the FCC's
    # Measuring Broadband America reports measured ~600 ms for satellite ISPs. Rates: typical
    # GEO consumer plans (25 Mbit/s down, 3 Mbit/s up), 0.1% loss.
    "satellite": LinkProfile(
        uplink=DirectionProfile(latency_ms=300.0, jitter_ms=10.0, rate_mbps=3.0, burst_bytes=15_000,
                                loss_pct=0.1),
        downlink=DirectionProfile(latency_ms=300.0, jitter_ms=10.0, rate_mbps=25.0, burst_bytes=30_000,
                                  loss_pct=0.1, queue_bytes=1_048_576)),
}


def preset(name: object) -> LinkProfile:
    """The named preset; ConfigError listing the known names otherwise."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]
