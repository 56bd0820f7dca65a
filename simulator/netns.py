"""Kernel backend (root only): two network namespaces joined by a veth pair, shaped by ``tc``.

Side ``a`` sends the uplink, side ``b`` the downlink; each side's egress gets the direction's
profile: ``netem`` (delay, jitter, loss, rate) where the kernel has it, otherwise ``tbf`` for
the rate with ``iptables -m statistic`` drops for Bernoulli loss. Traces and outages are left
to the proxy backend. ``unavailable_reason`` says, in words, why a profile cannot run here
(not root, no ``ip``/``tc``, namespaces not permitted, no ``sch_netem``), and ``NetnsLink``
raises ``NetnsUnavailable`` with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import subprocess
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from edgecloud.simulator.profiles import DirectionProfile, LinkProfile

SUBNET = "10.231"
# The proxy's rates count payload; tc counts whole frames. A full TCP segment carries 1448
# payload bytes in a 1514-byte frame (Ethernet 14 + IPv4 20 + TCP with timestamps 32), so kernel
# rates are scaled by this factor to give the same goodput.
FRAME_OVERHEAD = 1514 / 1448


class NetnsUnavailable(RuntimeError):
    """The kernel backend cannot run this profile on this machine; the message says why."""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)


def _needs_netem(direction: DirectionProfile) -> bool:
    return bool(direction.latency_ms or direction.jitter_ms or direction.loss_model != "bernoulli")


def _probe_qdisc(kind: list[str]) -> str | None:
    """Try a qdisc on a throw-away veth in a throw-away namespace; None if it works."""
    ns, dev = f"ecprobe{os.getpid()}", f"ecp{os.getpid() % 100000}"
    try:
        for argv in (["ip", "netns", "add", ns], ["ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name",
                                                  f"{dev}b"], ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root",
                                                              *kind]):
            result = _run(argv)
            if result.returncode:
                return f"`{' '.join(argv)}` failed: {result.stderr.strip() or result.returncode}"
        return None
    finally:
        _run(["ip", "netns", "del", ns])


def unavailable_reason(profile: LinkProfile | None = None) -> str | None:
    """Why the kernel backend cannot run ``profile`` here, or None when it can."""
    if os.name != "posix" or os.geteuid() != 0:
        return "the kernel backend needs root (CAP_NET_ADMIN); use the shaping proxy instead"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: apt-get install iproute2)"
    problem = _probe_qdisc(["tbf", "rate", "1mbit", "burst", "1600", "limit", "3000"])
    if problem:
        return f"network namespaces or tc are not permitted here: {problem}"
    if profile is None:
        return None
    if profile.outages.any or profile.uplink.trace or profile.downlink.trace:
        return "outages and trace replay are only in the proxy backend"
    directions = (profile.uplink, profile.downlink)
    if any(_needs_netem(d) for d in directions) and _probe_qdisc(["netem", "delay", "1ms"]):
        return "this kernel has no `netem` qdisc (sch_netem), needed for latency, jitter and Gilbert–Elliott loss"
    if any(d.loss_pct for d in directions) and not has_netem() and shutil.which("iptables") is None:
        return "loss without netem needs iptables with the statistic match (apt-get install iptables)"
    return None


def has_netem() -> bool:
    return _probe_qdisc(["netem", "delay", "1ms"]) is None


def _kbit(rate_mbps: float) -> str:
    return f"{round(rate_mbps * 1000 * FRAME_OVERHEAD)}kbit"


def qdisc_args(direction: DirectionProfile, *, netem: bool) -> list[str]:
    """The ``tc qdisc replace dev X root ...`` arguments for one direction."""
    if netem:
        args = ["netem", "limit", str(max(1000, direction.queue_bytes // 1500))]
        if direction.latency_ms or direction.jitter_ms:
            args += ["delay", f"{direction.latency_ms:g}ms"]
            if direction.jitter_ms:
                if direction.jitter_distribution == "uniform":  # netem's plain jitter: uniform ±j; ours is the std
                    args += [f"{direction.jitter_ms * math.sqrt(3):.3f}ms"]
                else:
                    args += [f"{direction.jitter_ms:g}ms"]
                if direction.jitter_correlation:
                    args += [f"{100 * direction.jitter_correlation:g}%"]
                if direction.jitter_distribution != "uniform":
                    args += ["distribution", direction.jitter_distribution]
        if direction.loss_model == "gilbert-elliott":
            args += ["loss", "gemodel", f"{direction.ge_good_to_bad_pct:g}%", f"{direction.ge_bad_to_good_pct:g}%",
                     f"{direction.ge_loss_in_bad_pct:g}%", f"{100 - direction.ge_loss_in_good_pct:g}%"]
        elif direction.loss_pct:
            args += ["loss", "random", f"{direction.loss_pct:g}%"]
        if direction.rate_mbps:
            args += ["rate", _kbit(direction.rate_mbps)]
        return args
    if direction.rate_mbps:
        return ["tbf", "rate", _kbit(direction.rate_mbps), "burst", str(max(1600, direction.burst_bytes)),
                "limit", str(direction.queue_bytes)]
    return ["pfifo_fast"]


@dataclass(frozen=True)
class NetnsPlan:
    """Names, addresses and the commands that build and remove one kernel link."""

    ns_a: str
    ns_b: str
    dev_a: str
    dev_b: str
    address_a: str
    address_b: str
    setup: tuple[tuple[str, ...], ...]
    teardown: tuple[tuple[str, ...], ...]


def plan(name: str, profile: LinkProfile, *, index: int, netem: bool) -> NetnsPlan:
    """Commands for link ``name`` (``index`` picks its /30 subnet, 0..16383)."""
    tag = f"ec{name[:6]}{index}"
    ns_a, ns_b, dev_a, dev_b = f"{tag}a", f"{tag}b", f"{tag[:12]}a", f"{tag[:12]}b"
    base = 4 * index
    address_a = f"{SUBNET}.{base // 256}.{base % 256 + 1}"
    address_b = f"{SUBNET}.{base // 256}.{base % 256 + 2}"
    setup: list[tuple[str, ...]] = [
        ("ip", "netns", "add", ns_a), ("ip", "netns", "add", ns_b),
        ("ip", "-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b, "netns", ns_b),
        ("ip", "-n", ns_a, "addr", "add", f"{address_a}/30", "dev", dev_a),
        ("ip", "-n", ns_b, "addr", "add", f"{address_b}/30", "dev", dev_b),
    ]
    for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
        setup += [("ip", "-n", ns, "link", "set", "lo", "up"), ("ip", "-n", ns, "link", "set", dev, "up")]
    for ns, dev, direction in ((ns_a, dev_a, profile.uplink), (ns_b, dev_b, profile.downlink)):
        setup.append(("tc", "-n", ns, "qdisc", "replace", "dev", dev, "root", *qdisc_args(direction, netem=netem)))
        if not netem and direction.loss_pct:
            setup.append(("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-o", dev, "-m", "statistic",
                          "--mode", "random", "--probability", f"{direction.loss_pct / 100:g}", "-j", "DROP"))
    return NetnsPlan(ns_a, ns_b, dev_a, dev_b, address_a, address_b, tuple(setup),
                     (("ip", "netns", "del", ns_a), ("ip", "netns", "del", ns_b)))


class _Opening:
    def __init__(self, link: NetnsLink) -> None:
        self.link = link

    def __await__(self) -> Generator[Any, None, NetnsLink]:
        return self.link.start().__await__()

    async def __aenter__(self) -> NetnsLink:
        return await self.link.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.link.close()


class NetnsLink:
    """A kernel-shaped link: run processes on side ``a`` or ``b`` with ``exec_argv``."""

    def __init__(self, name: str, profile: LinkProfile, *, index: int | None = None) -> None:
        self.name = name
        self.profile = profile
        self.index = os.getpid() % 16384 if index is None else index
        self.plan: NetnsPlan | None = None
        self.netem = False

    @classmethod
    def create(cls, name: str, profile: LinkProfile, *, index: int | None = None) -> _Opening:
        return _Opening(cls(name, profile, index=index))

    async def _sh(self, argv: tuple[str, ...]) -> None:
        process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        _, err = await process.communicate()
        if process.returncode:
            raise NetnsUnavailable(f"`{' '.join(argv)}` failed: {err.decode().strip()}")

    async def start(self) -> NetnsLink:
        reason = await asyncio.to_thread(unavailable_reason, self.profile)
        if reason is not None:
            raise NetnsUnavailable(reason)
        self.netem = await asyncio.to_thread(has_netem)
        self.plan = plan(self.name, self.profile, index=self.index, netem=self.netem)
        try:
            for argv in self.plan.setup:
                await self._sh(argv)
        except BaseException:
            await self.close()
            raise
        return self

    async def close(self) -> None:
        if self.plan is not None:
            for argv in self.plan.teardown:
                with contextlib.suppress(NetnsUnavailable):
                    await self._sh(argv)

    def exec_argv(self, side: str, argv: list[str]) -> list[str]:
        """``argv`` run inside side ``a`` (uplink sender) or ``b``."""
        assert self.plan is not None
        return ["ip", "netns", "exec", self.plan.ns_a if side == "a" else self.plan.ns_b, *argv]

    def address(self, side: str) -> str:
        assert self.plan is not None
        return self.plan.address_a if side == "a" else self.plan.address_b
