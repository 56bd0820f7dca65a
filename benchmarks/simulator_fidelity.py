"""Fidelity of the shaping proxy: configured vs measured latency, jitter and rate per preset.

For each named preset a proxy runs on loopback in front of an echo server (sequential pings
per TCP connection, several connections on long-RTT links: one-way latency = median RTT / 2,
jitter = spread of the RTT) and a bulk server (goodput each way after the first read, so
neither latency nor the first burst counts). On lossy presets each lost segment delays the
stream by a retransmission timeout, and one near the end of a transfer stretches it, so the
rate is also measured with loss off.

    python benchmarks/simulator_fidelity.py --json benchmarks/results/simulator_fidelity.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

from edgecloud.simulator.measure import BulkServer, Pinger, measure_rate_mbps, start_echo_server
from edgecloud.simulator.presets import PRESETS
from edgecloud.simulator.profiles import LinkProfile
from edgecloud.simulator.proxy import ShapingProxy

HOST = "127.0.0.1"
TARGET_PINGS = 100


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average_1m": os.getloadavg()[0]}


def _pct(measured: float, configured: float) -> float | None:
    return None if not configured else round(100 * (measured - configured) / configured, 2)


async def measure_preset(name: str, profile: LinkProfile, echo_port: int, bulk: BulkServer,
                         ping_budget_s: float, rate_seconds: float) -> dict:
    up, down = profile.uplink, profile.downlink
    configured_rtt = up.latency_ms + down.latency_ms
    # Sequential pings on one connection; on long-RTT links several connections ping side by side
    # so that about TARGET_PINGS samples fit in the time budget.
    per_connection = int(max(8, min(TARGET_PINGS, ping_budget_s * 1e3 / configured_rtt)))
    connections = min(10, math.ceil(TARGET_PINGS / per_connection))
    async with ShapingProxy.create(upstream=(HOST, echo_port), profile=profile, name=name) as link:
        pingers = [await Pinger.connect(HOST, link.port) for _ in range(connections)]
        await asyncio.gather(*(p.rtts_ms(2) for p in pingers))
        rtts = [rtt for batch in await asyncio.gather(*(p.rtts_ms(per_connection) for p in pingers))
                for rtt in batch]
        for pinger in pingers:
            pinger.close()
    rates = {}
    lossless = replace(profile, uplink=replace(up, loss_pct=0.0), downlink=replace(down, loss_pct=0.0))
    for direction, d in (("uplink", up), ("downlink", down)):
        assert d.rate_mbps is not None
        size = int(min(64e6, d.rate_mbps * 1e6 / 8 * rate_seconds))
        async with ShapingProxy.create(upstream=(HOST, bulk.port), profile=profile, name=name) as link:
            start = time.perf_counter()
            rate = await measure_rate_mbps(bulk, HOST, link.port, size, direction=direction, timeout_s=60)
            rates[direction] = {"configured_mbps": d.rate_mbps, "measured_mbps": round(rate, 3),
                                "error_pct": _pct(rate, d.rate_mbps), "bytes": size,
                                "wall_s": round(time.perf_counter() - start, 2),
                                "lost_segments": link.stats.direction(direction).lost_segments}
        if d.lossy:  # loss delays the stream by retransmission timeouts; the rate itself, without them:
            async with ShapingProxy.create(upstream=(HOST, bulk.port), profile=lossless, name=name) as link:
                rate = await measure_rate_mbps(bulk, HOST, link.port, size, direction=direction, timeout_s=60)
            rates[direction]["measured_without_loss_mbps"] = round(rate, 3)
            rates[direction]["error_without_loss_pct"] = _pct(rate, d.rate_mbps)
    q1, _, q3 = statistics.quantiles(rtts, n=4)
    configured_jitter = math.hypot(up.jitter_ms, down.jitter_ms)
    one_way = statistics.median(rtts) / 2
    return {
        "configured": {"one_way_latency_ms": configured_rtt / 2, "rtt_jitter_ms": round(configured_jitter, 3),
                       "jitter_distribution": [up.jitter_distribution, down.jitter_distribution],
                       "loss_pct": [up.loss_pct, down.loss_pct]},
        "measured": {"one_way_latency_ms": round(one_way, 3), "pings": len(rtts), "ping_connections": connections,
                     "rtt_p10_ms": round(statistics.quantiles(rtts, n=10)[0], 3),
                     "rtt_p90_ms": round(statistics.quantiles(rtts, n=10)[-1], 3),
                     "rtt_stdev_ms": round(statistics.stdev(rtts), 3),
                     "rtt_robust_sigma_ms": round((q3 - q1) / 1.349, 3)},
        "latency_error_pct": _pct(one_way, configured_rtt / 2),
        "latency_error_ms": round(one_way - configured_rtt / 2, 3),
        "rate": rates,
    }


async def run(seed: int, presets: list[str], ping_budget_s: float, rate_seconds: float) -> dict:
    echo = await start_echo_server()
    echo_port = echo.sockets[0].getsockname()[1]
    bulk = await BulkServer.start()
    results = {}
    for name in presets:
        start = time.perf_counter()
        results[name] = await measure_preset(name, replace(PRESETS[name], seed=seed), echo_port, bulk,
                                             ping_budget_s, rate_seconds)
        results[name]["wall_s"] = round(time.perf_counter() - start, 2)
        r = results[name]
        print(f"{name:10s} one-way {r['configured']['one_way_latency_ms']:7.2f} → "
              f"{r['measured']['one_way_latency_ms']:7.2f} ms ({r['latency_error_pct']:+.1f}%)  "
              f"jitter {r['configured']['rtt_jitter_ms']:5.2f} → {r['measured']['rtt_robust_sigma_ms']:5.2f} ms  "
              + "  ".join(f"{d} {v['configured_mbps']:g} → {v['measured_mbps']:.2f} Mbit/s ({v['error_pct']:+.1f}%)"
                          for d, v in r["rate"].items()), flush=True)
    echo.close()
    await bulk.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--seed", type=int, default=1, help="seed of every link's random draws")
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--ping-budget-s", type=float, default=5.0, help="time for pings per preset")
    parser.add_argument("--rate-seconds", type=float, default=2.0, help="seconds of data per rate transfer")
    args = parser.parse_args()
    start = time.perf_counter()
    results = asyncio.run(run(args.seed, args.presets, args.ping_budget_s, args.rate_seconds))
    report = {
        "benchmark": "simulator_fidelity",
        "what": "configured vs measured one-way latency (median RTT/2), RTT jitter and goodput per direction, "
                "through edgecloud's shaping proxy on loopback",
        "machine": machine_info(), "seed": args.seed, "link": "ShapingProxy on 127.0.0.1 (named presets)",
        "model": None, "ping_budget_s": args.ping_budget_s, "rate_seconds": args.rate_seconds,
        "presets": results, "wall_s": round(time.perf_counter() - start, 1),
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
