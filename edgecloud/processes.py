"""Start edgecloud daemons as real child processes and learn the ports they bound.

Every daemon prints one line ``EDGECLOUD_READY <name> <host:port>`` on stdout once its
server is listening (port 0 allowed). ``DaemonProcess.start`` waits for that line (no
sleeps); lines ``EDGECLOUD_ENDPOINT <kind> <url>`` before it name further listeners (e.g.
the coordinator's OpenAI-compatible HTTP API) and land in ``DaemonProcess.endpoints``.
``close`` stops the whole process group: SIGINT for a graceful stop, then SIGKILL after a
grace period. ``DaemonGroup`` stops every daemon it started, in reverse order, also on Ctrl-C.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

READY_PREFIX = "EDGECLOUD_READY"
ENDPOINT_PREFIX = "EDGECLOUD_ENDPOINT"
MAX_LINE_BYTES = 4096  # of a line on a starting daemon's stdout (the rest is dropped)


def free_port() -> int:
    """A TCP port free on loopback now (another process may take it before it is bound: rare). For a
    daemon whose address must be known before it starts; otherwise pass port 0 and read the READY line."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DaemonStartError(RuntimeError):
    """A daemon exited or stayed silent before announcing its address."""


def announce_ready(name: str, address: str) -> None:
    """Called by a daemon once it listens: the line ``DaemonProcess`` waits for."""
    print(f"{READY_PREFIX} {name} {address}", flush=True)


def announce_endpoint(kind: str, url: str) -> None:
    """Called by a daemon before ``announce_ready`` for each further listener (``kind``: one word)."""
    print(f"{ENDPOINT_PREFIX} {kind} {url}", flush=True)


@dataclass
class DaemonProcess:
    name: str
    process: subprocess.Popen
    address: str
    log_path: Path | None = None
    endpoints: dict[str, str] = field(default_factory=dict)  # kind -> url, from EDGECLOUD_ENDPOINT lines

    @classmethod
    def start(cls, name: str, args: Sequence[str], *, timeout_s: float = 300.0, log_dir: Path | None = None,
              cpus: Sequence[int] | None = None, env: dict[str, str] | None = None) -> DaemonProcess:
        """Run ``python -m <args>`` and wait until it announces its address.

        ``cpus`` pins the process to those cores (one machine standing in for several devices).
        Its stderr goes to ``log_dir/<name>.log`` when given (else inherited).
        """
        command = [sys.executable, *args]
        log_path = None
        stderr = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"{name}.log"
            stderr = log_path.open("wb")
        preexec = (lambda: os.sched_setaffinity(0, set(cpus))) if cpus else None
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True,
                                   env={**os.environ, **(env or {})}, preexec_fn=preexec, text=True)
        if stderr is not None:
            stderr.close()
        endpoints: dict[str, str] = {}
        try:
            address = _wait_for_ready(process, name, timeout_s, endpoints)
        except BaseException:
            _stop(process, grace_s=2.0)
            raise
        return cls(name, process, address, log_path, endpoints)

    def close(self, grace_s: float = 10.0) -> int | None:
        return _stop(self.process, grace_s)

    def kill(self) -> int | None:
        """SIGKILL the daemon (no graceful stop, no deregistration: a crash) and reap it."""
        return _stop(self.process, grace_s=0.0, sig=signal.SIGKILL)


@dataclass
class DaemonGroup:
    """Daemons started together and stopped together (reverse order)."""

    log_dir: Path | None = None
    daemons: list[DaemonProcess] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str], **kwargs) -> DaemonProcess:
        daemon = DaemonProcess.start(name, args, log_dir=self.log_dir, **kwargs)
        self.daemons.append(daemon)
        return daemon

    def close(self) -> None:
        while self.daemons:
            self.daemons.pop().close()

    def __enter__(self) -> DaemonGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_for_ready(process: subprocess.Popen, name: str, timeout_s: float,
                    endpoints: dict[str, str] | None = None) -> str:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout_s
    # Byte by byte from the pipe itself: a buffered readline could swallow the READY line that came
    # in one chunk with an earlier line, and select() would then wait for data already read.
    fd = process.stdout.fileno()
    line = bytearray()
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DaemonStartError(f"{name} did not become ready within {timeout_s:.0f} s")
            if not selector.select(timeout=min(remaining, 1.0)):
                if process.poll() is not None:
                    raise DaemonStartError(f"{name} exited with code {process.returncode} before it was ready")
                continue
            byte = os.read(fd, 1)
            if not byte:
                process.wait(timeout=5)
                raise DaemonStartError(f"{name} exited with code {process.returncode} before it was ready")
            if byte != b"\n":
                line += byte if len(line) < MAX_LINE_BYTES else b""
                continue
            parts = line.decode(errors="replace").split()
            line.clear()
            if len(parts) == 3 and parts[0] == READY_PREFIX:
                return parts[2]
            if len(parts) == 3 and parts[0] == ENDPOINT_PREFIX and endpoints is not None:
                endpoints[parts[1]] = parts[2]


def _stop(process: subprocess.Popen, grace_s: float, sig: signal.Signals = signal.SIGINT) -> int | None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=grace_s if sig != signal.SIGKILL else 5)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        except ProcessLookupError:
            pass
    if process.stdout is not None:
        process.stdout.close()
    return process.returncode
