"""Kernel backend: the tc/ip command plan (anywhere) and a real rate limit (root with tc only)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from edgecloud.simulator.netns import NetnsLink, plan, qdisc_args, unavailable_reason
from edgecloud.simulator.profiles import DirectionProfile, LinkProfile

RECEIVER = """
import socket, sys, time
server = socket.create_server((sys.argv[1], 0))
print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
first = None; total = 0; first_bytes = 0
while True:
    data = conn.recv(1 << 16)
    if not data:
        break
    now = time.perf_counter()
    if first is None:
        first, first_bytes = now, len(data)
    total += len(data); last = now
print((total - first_bytes) * 8 / (last - first) / 1e6, flush=True)
"""
SENDER = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
sock.sendall(bytes(int(sys.argv[3])))
sock.close()
"""


def test_netem_arguments() -> None:
    direction = DirectionProfile(latency_ms=20, jitter_ms=2, jitter_distribution="uniform", rate_mbps=10, loss_pct=1)
    assert qdisc_args(direction, netem=True) == ["netem", "limit", "1000", "delay", "20ms", "3.464ms",
                                                 "loss", "random", "1%", "rate", "10456kbit"]
    ge = DirectionProfile(jitter_ms=1, jitter_correlation=0.5, loss_model="gilbert-elliott", ge_good_to_bad_pct=1,
                          ge_bad_to_good_pct=20)
    assert qdisc_args(ge, netem=True)[3:] == ["delay", "0ms", "1ms", "50%", "distribution", "normal", "loss",
                                              "gemodel", "1%", "20%", "100%", "100%"]
    assert qdisc_args(DirectionProfile(rate_mbps=10, burst_bytes=15000), netem=False)[:3] == ["tbf", "rate",
                                                                                               "10456kbit"]


def test_plan_without_netem_drops_with_iptables() -> None:
    steps = plan("edge0", LinkProfile.symmetric(rate_mbps=5, loss_pct=2), index=7, netem=False)
    assert steps.address_a == "10.231.0.29" and steps.address_b == "10.231.0.30"
    commands = [" ".join(step) for step in steps.setup]
    assert any("tbf rate 5228kbit" in c for c in commands)
    assert sum("--probability 0.02 -j DROP" in c for c in commands) == 2
    assert all(len(name) <= 15 for name in (steps.dev_a, steps.dev_b))
    assert steps.teardown == (("ip", "netns", "del", steps.ns_a), ("ip", "netns", "del", steps.ns_b))


def test_kernel_rate_limit() -> None:
    profile = LinkProfile.symmetric(rate_mbps=10.0, burst_bytes=15_000)
    reason = unavailable_reason(profile)
    if reason is not None:
        pytest.skip(f"kernel backend not available: {reason}")

    async def main() -> float:
        async with NetnsLink.create("t", profile) as link:
            receiver = subprocess.Popen(link.exec_argv("b", [sys.executable, "-c", RECEIVER, link.address("b")]),
                                        stdout=subprocess.PIPE, text=True)
            try:
                assert receiver.stdout is not None
                port = receiver.stdout.readline().strip()
                sender = subprocess.run(link.exec_argv("a", [sys.executable, "-c", SENDER, link.address("b"), port,
                                                             "3000000"]), timeout=30, check=False)
                assert sender.returncode == 0
                return float(receiver.stdout.readline())
            finally:
                if receiver.poll() is None:
                    receiver.kill()
                receiver.wait()

    assert asyncio.run(main()) == pytest.approx(10.0, rel=0.05)
