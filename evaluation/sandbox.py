"""Run untrusted generated code (HumanEval completions) in a separate, limited process.

Each program runs in its own interpreter (``python -I -S -B``: no site-packages, no environment
variables, no bytecode written), in a fresh temporary directory that is removed afterwards, in its
own session and process group (the whole group is SIGKILLed on timeout and after every run, so
stray children die too), with stdin at /dev/null and a minimal environment. A small bootstrap runs
in the child before the program and

- moves the process into a new, empty network namespace (``unshare(CLONE_NEWNET)`` through libc;
  it works as root or with CAP_SYS_ADMIN; elsewhere it silently fails and the result says
  ``netns=False``),
- sets resource limits: address space (``memory_mb``), CPU seconds (ceil(timeout) + 1, hard limit
  one more), open files (64), file size (16 MiB), core files (0). RLIMIT_NPROC is not set: it counts
  all processes of the user, so a useful value cannot be chosen for a non-root user, and root
  ignores it,
- replaces ``socket.socket``, ``socket.SocketType``, ``socket.create_connection``,
  ``socket.create_server``, ``socket.socketpair``, ``socket.fromfd`` and ``_socket.socket`` /
  ``_socket.socketpair`` with callables that raise ``PermissionError`` (the socket classes are
  replaced by subclasses whose constructor raises, so that stdlib modules that subclass them still
  import). This is a guard against accidents, not a security boundary: the network namespace is.

The program is passed through a file, never on the command line, and never executed in this
process. "passed" requires exit status 0 within the timeout *and* that the program ran to its end:
the bootstrap writes a random nonce (which the program is not given) after the program returns, so
a completion that calls ``sys.exit(0)`` or ``os._exit(0)`` before the tests run does not pass.

Not covered: a process that calls ``setsid()`` escapes the group kill, and the file system is not
isolated (the program runs as the calling user). Run it on machines where that is acceptable.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

STATUSES = ("passed", "failed", "timeout", "error")
DETAIL_CHARS = 500
OPEN_FILES = 64
FILE_SIZE_BYTES = 16 << 20
_STDERR_TAIL_BYTES = 8192

# Runs in the child before the program. argv: program memory_bytes cpu_s done_path nonce_path.
BOOTSTRAP = r'''
import sys


def _isolate_network():
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0  # CLONE_NEWNET
    except (OSError, AttributeError):
        return False


def _limit(name, soft, hard):
    import resource
    kind = getattr(resource, name)
    _, current_hard = resource.getrlimit(kind)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(kind, (soft, hard))


def _block_network():
    import _socket
    import socket
    message = "network access is disabled in the sandbox"

    def refuse(*args, **kwargs):
        raise PermissionError(message)

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError(message)

    class NoRawSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError(message)

    socket.socket = NoSocket
    socket.SocketType = _socket.socket = _socket.SocketType = NoRawSocket
    for name in ("create_connection", "create_server", "socketpair", "fromfd"):
        setattr(socket, name, refuse)
    if hasattr(_socket, "socketpair"):
        _socket.socketpair = refuse


def _main():
    import builtins
    import os
    program, memory_bytes, cpu_s, done_path, nonce_path = sys.argv[1:6]
    with open(nonce_path) as handle:
        nonce = handle.read()
    os.unlink(nonce_path)
    done = open(done_path, "w")
    done.write(f"netns={int(_isolate_network())}\n")
    done.flush()
    _limit("RLIMIT_AS", int(memory_bytes), int(memory_bytes))
    _limit("RLIMIT_CPU", int(cpu_s), int(cpu_s) + 1)
    _limit("RLIMIT_NOFILE", OPEN_FILES, OPEN_FILES)
    _limit("RLIMIT_FSIZE", FILE_SIZE_BYTES, FILE_SIZE_BYTES)
    _limit("RLIMIT_CORE", 0, 0)
    _block_network()
    with open(program, encoding="utf-8") as handle:
        source = handle.read()
    sys.argv = [program]
    code = compile(source, program, "exec")
    exec(code, {"__name__": "__main__", "__file__": program, "__builtins__": builtins})
    done.write(nonce + "\n")
    done.close()


_main()
'''.replace("OPEN_FILES", str(OPEN_FILES)).replace("FILE_SIZE_BYTES", str(FILE_SIZE_BYTES))


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one program. ``netns``: whether the child got its own (empty) network namespace."""

    passed: bool
    status: str  # one of STATUSES
    detail: str  # last lines of stderr, or why the run ended; at most DETAIL_CHARS
    wall_s: float
    netns: bool = False


def run_program(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> SandboxResult:
    """Run ``source`` as ``__main__`` in a sandboxed child process; see the module docstring."""
    if not timeout_s > 0 or memory_mb <= 0:
        raise ValueError(f"timeout_s and memory_mb must be > 0, got {timeout_s}, {memory_mb}")
    root = Path(tempfile.mkdtemp(prefix="edgecloud-sandbox-"))
    try:
        return _run_in(root, source, timeout_s, memory_mb)
    finally:
        _remove_tree(root)


def run_many(sources: Sequence[str], *, timeout_s: float = 10.0, memory_mb: int = 1024,
             workers: int = 2) -> list[SandboxResult]:
    """``run_program`` on each source, ``workers`` at a time; results in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    run = functools.partial(run_program, timeout_s=timeout_s, memory_mb=memory_mb)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sandbox") as pool:
        return list(pool.map(run, sources))


def _run_in(root: Path, source: str, timeout_s: float, memory_mb: int) -> SandboxResult:
    work = root / "work"
    work.mkdir()
    (root / "boot.py").write_text(BOOTSTRAP, encoding="utf-8")
    (root / "program.py").write_text(source, encoding="utf-8")
    nonce = secrets.token_hex(16)
    (root / "nonce").write_text(nonce, encoding="utf-8")
    command = [sys.executable, "-I", "-S", "-B", str(root / "boot.py"), str(root / "program.py"),
               str(memory_mb << 20), str(math.ceil(timeout_s) + 1), str(root / "done"), str(root / "nonce")]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
    started = time.perf_counter()
    with open(root / "stderr", "wb") as stderr:
        try:
            proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        except OSError as exc:
            return SandboxResult(False, "error", f"could not start the sandbox: {exc}"[:DETAIL_CHARS], 0.0)
        exited = _wait_exit(proc, timeout_s)
        _kill_group(proc.pid)  # the leader is at most a zombie here, so its group id is still ours
        returncode = proc.wait()
    wall_s = time.perf_counter() - started
    done = _read_text(root / "done").splitlines()
    status, detail = _classify(exited, returncode, nonce in done, _stderr_tail(root / "stderr"), timeout_s)
    return SandboxResult(status == "passed", status, detail, wall_s, netns="netns=1" in done)


def _wait_exit(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait until ``proc`` exits, without reaping it where the OS allows; True if it exited in time."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout_s * 1000))
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _classify(exited: bool, returncode: int, finished: bool, stderr: str, timeout_s: float) -> tuple[str, str]:
    if not exited:
        return "timeout", _detail(f"killed: no exit within {timeout_s:g} s", stderr)
    if returncode == 0:
        if finished:
            return "passed", _truncate(stderr)
        return "failed", _detail("the program exited before its end (sys.exit or os._exit)", stderr)
    if returncode > 0:
        return "failed", _truncate(stderr)
    name = _signal_name(-returncode)
    if -returncode == signal.SIGXCPU:
        return "timeout", _detail(f"killed by {name}: CPU time limit", stderr)
    return "error", _detail(f"killed by {name}", stderr)


def _detail(reason: str, stderr: str) -> str:
    """``reason``, then as much of the end of ``stderr`` as fits in DETAIL_CHARS."""
    tail = _truncate(stderr, DETAIL_CHARS - len(reason) - 1)
    return f"{reason}\n{tail}" if tail else reason


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _stderr_tail(path: Path) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - _STDERR_TAIL_BYTES))
        return handle.read().decode("utf-8", errors="replace")


def _truncate(text: str, limit: int = DETAIL_CHARS) -> str:
    """The last whole lines of ``text`` that fit in ``limit`` chars (the end of the last line if none)."""
    lines = text.strip().splitlines()
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    if not kept and lines and limit > 0:
        return lines[-1][-limit:]
    return "\n".join(reversed(kept))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _remove_tree(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():  # the program may have removed permissions: restore them and retry
        for folder, _, _ in os.walk(root):
            os.chmod(folder, 0o700)
        shutil.rmtree(root, ignore_errors=True)
