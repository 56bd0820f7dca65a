"""Crash and restart a daemon behind a stable address: the simulator's shaping proxy stands in front of it.

``RestartableDaemon`` runs a node daemon on a free port behind a ``ShapingProxy`` whose address
never changes (the daemon advertises it), so that peers keep dialling one address while the process
behind it is killed with SIGKILL (a crash: no deregistration, connections reset) and started again
on a new port; the proxy then forwards new connections to the new process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from edgecloud.loop_thread import LoopThread
from edgecloud.processes import DaemonProcess, free_port
from edgecloud.simulator.profiles import LinkProfile
from edgecloud.simulator.proxy import ShapingProxy


class RestartableDaemon:
    """``python -m <args> --listen 127.0.0.1:<free port> --advertise <proxy>``, killable and restartable.

    ``args`` are the daemon's own arguments without ``--listen``/``--advertise``; ``profile`` shapes
    the link to it (default: none); ``advertise=False`` for a daemon that has no such flag (the
    coordinator: nodes are told its address).
    """

    def __init__(self, name: str, args: Sequence[str], loop: LoopThread, *, profile: LinkProfile | None = None,
                 log_dir: Path | None = None, start_timeout_s: float = 120.0, advertise: bool = True) -> None:
        self.name = name
        self.args = list(args)
        self.loop = loop
        self.profile = profile
        self.log_dir = log_dir
        self.start_timeout_s = start_timeout_s
        self.advertise = advertise
        self.proxy: ShapingProxy | None = None
        self.daemon: DaemonProcess | None = None
        self.restarts = 0

    @property
    def address(self) -> str:
        """The stable address peers dial (the proxy's)."""
        assert self.proxy is not None, "start() first"
        return f"127.0.0.1:{self.proxy.port}"

    @property
    def alive(self) -> bool:
        return self.daemon is not None and self.daemon.process.poll() is None

    def start(self) -> float:
        """Open the proxy (first time) and start the daemon behind it; returns ``time.monotonic()`` at READY."""
        if self.proxy is None:
            # The upstream is set once the daemon's port is known; until then connections are refused.
            self.proxy = self.loop.run(ShapingProxy.create(upstream=("127.0.0.1", 9), profile=self.profile,
                                                           name=self.name))
        log_name = self.name if not self.restarts else f"{self.name}-{self.restarts}"
        # The READY line names the advertised address (the proxy's), so the daemon's own port is chosen here.
        port = free_port()
        self.loop.run(self._point_at(("127.0.0.1", port)))
        advertise = ["--advertise", self.address] if self.advertise else []
        self.daemon = DaemonProcess.start(log_name, [*self.args, "--listen", f"127.0.0.1:{port}", *advertise],
                                          log_dir=self.log_dir, timeout_s=self.start_timeout_s)
        return time.monotonic()

    async def _point_at(self, upstream: tuple[str, int]) -> None:
        assert self.proxy is not None
        self.proxy.upstream = upstream

    def kill(self) -> float:
        """SIGKILL the daemon (its connections through the proxy reset); returns ``time.monotonic()``."""
        if self.daemon is not None:
            self.daemon.kill()
        return time.monotonic()

    def restart(self) -> float:
        """Start the daemon again (kill it first if it still runs); ``time.monotonic()`` when it is READY."""
        if self.alive:
            self.kill()
        self.restarts += 1
        return self.start()

    def close(self) -> None:
        if self.daemon is not None:
            self.daemon.close()
        if self.proxy is not None:
            self.loop.run(self.proxy.close())
            self.proxy = None
