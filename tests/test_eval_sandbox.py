"""The sandbox for generated code, and the HumanEval problems and programs it runs."""

from __future__ import annotations

import os
import re
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud import humaneval
from edgecloud.evaluation.sandbox import run_many, run_program
from edgecloud.routing.prompts import CODE_FENCE

GOOD = """
def add(a, b):
    return a + b


def check(candidate):
    assert candidate(2, 3) == 5
    assert candidate(-1, 1) == 0


check(add)
"""
SLEEPER_THEN = """
import os, sys, time
pid = os.fork()
if pid == 0:
    time.sleep(600)
    os._exit(0)
sys.stderr.write(f"sleeper={{pid}}\\n")
sys.stderr.flush()
{then}
"""


@pytest.fixture
def server() -> Iterator[socket.socket]:
    """A listening TCP socket on 127.0.0.1, port 0."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener


def _pending_connection(listener: socket.socket) -> bool:
    readable, _, _ = select.select([listener], [], [], 0)
    return bool(readable)


def _gone_or_zombie(pid: int, deadline_s: float = 3.0) -> bool:
    """Wait (bounded) until ``pid`` no longer runs: it no longer exists or is a zombie."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def test_correct_program_passes() -> None:
    result = run_program(GOOD)
    assert result.passed and result.status == "passed", result
    assert result.wall_s < 5


def test_failing_assert_fails() -> None:
    result = run_program(GOOD.replace("== 5", "== 6"))
    assert not result.passed and result.status == "failed"
    assert "AssertionError" in result.detail
    assert len(result.detail) <= 500


def test_early_exit_zero_does_not_pass() -> None:
    for exit_call in ("import sys; sys.exit(0)", "import os; os._exit(0)"):
        result = run_program(exit_call + "\n" + GOOD.replace("== 5", "== 6"))
        assert result.status == "failed" and "before its end" in result.detail, result


def test_infinite_loop_times_out_and_evaluation_continues() -> None:
    started = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout_s=1.0)
    assert result.status == "timeout" and not result.passed
    assert time.monotonic() - started < 1.0 + 2.0
    assert run_program(GOOD, timeout_s=1.0).passed


def test_timeout_kills_forked_children() -> None:
    result = run_program(SLEEPER_THEN.format(then="while True:\n    pass"), timeout_s=1.0)
    assert result.status == "timeout"
    pid = int(re.search(r"sleeper=(\d+)", result.detail).group(1))
    assert _gone_or_zombie(pid)


def test_children_left_behind_by_a_passing_program_are_killed() -> None:
    result = run_program(SLEEPER_THEN.format(then="pass"), timeout_s=5.0)
    assert result.passed, result
    pid = int(re.search(r"sleeper=(\d+)", result.detail).group(1))
    assert _gone_or_zombie(pid)


@pytest.mark.parametrize("attempt", [
    's = socket.create_connection(("127.0.0.1", PORT), timeout=2)',
    's = socket.socket()\ns.settimeout(2)\ns.connect(("127.0.0.1", PORT))',
    's = _socket.socket()\ns.settimeout(2)\ns.connect(("127.0.0.1", PORT))',
])
def test_sockets_are_refused(server: socket.socket, attempt: str) -> None:
    port = server.getsockname()[1]
    source = "import socket, _socket\n" + attempt.replace("PORT", str(port)) + "\ns.close()\n"
    result = run_program(source, timeout_s=5.0)
    assert not result.passed and result.status == "failed"
    assert "network access is disabled in the sandbox" in result.detail
    assert not _pending_connection(server)


def test_network_namespace_blocks_a_bypass_of_the_socket_guard(server: socket.socket) -> None:
    # Re-importing the _socket extension module restores its original socket class: only the
    # network namespace stands between that and the host's loopback.
    port = server.getsockname()[1]
    source = ("import sys\ndel sys.modules['_socket']\nimport _socket\n"
              f"s = _socket.socket()\ns.settimeout(2)\ns.connect(('127.0.0.1', {port}))\n")
    result = run_program(source, timeout_s=5.0)
    if not result.netns:
        pytest.skip("no network namespace here (needs root or CAP_SYS_ADMIN); the bypass would connect")
    assert not result.passed
    assert "unreachable" in result.detail.lower() or "refused" in result.detail.lower(), result.detail
    assert not _pending_connection(server)


def test_memory_bomb_does_not_pass() -> None:
    result = run_program("b = bytearray(4 * 1024**3)\n", memory_mb=1024)
    assert not result.passed
    assert result.status in ("failed", "error")


def test_temp_dir_is_removed() -> None:
    result = run_program("import os\nopen('scratch.txt', 'w').write('x')\nraise SystemExit('cwd=' + os.getcwd())\n")
    assert result.status == "failed"
    cwd = Path(re.search(r"cwd=(\S+)", result.detail).group(1))
    assert cwd.name == "work" and cwd.parent.name.startswith("edgecloud-sandbox-")
    assert not cwd.parent.exists()


def test_environment_is_minimal() -> None:
    os.environ["EDGECLOUD_SANDBOX_SECRET"] = "leak"
    try:
        result = run_program("import os\nassert 'EDGECLOUD_SANDBOX_SECRET' not in os.environ\n"
                             "import sys\nassert not any('site-packages' in p for p in sys.path)\n")
    finally:
        del os.environ["EDGECLOUD_SANDBOX_SECRET"]
    assert result.passed, result


def test_run_many_keeps_input_order() -> None:
    sources = [GOOD, GOOD.replace("== 5", "== 6"), GOOD, "raise ValueError('x')\n"]
    assert [r.status for r in run_many(sources, timeout_s=5.0)] == ["passed", "failed", "passed", "failed"]


def test_humaneval_problems() -> None:
    problems = humaneval.load_problems()
    assert len(problems) == 164
    assert problems[0].task_id == "HumanEval/0" and problems[0].entry_point == "has_close_elements"
    assert [p.task_id for p in humaneval.load_problems(limit=2, offset=10)] == ["HumanEval/10", "HumanEval/11"]
    assert humaneval.load_problems(limit=0) == []


def test_chat_request_is_the_recorded_traces_prompt() -> None:
    from edgecloud.simulator.des.record import humaneval_requests

    problems = humaneval.load_problems(limit=3)
    assert [humaneval.chat_request(p) for p in problems] == humaneval_requests(3)
    user, prefix = humaneval.chat_request(problems[0])
    assert prefix == CODE_FENCE + problems[0].prompt
    assert user.startswith("Complete the following Python function.\n\n```python\n") and user.endswith("```")
    assert user == "Complete the following Python function.\n\n```python\n" + problems[0].prompt + "```"


def test_completion_code_cuts_at_the_closing_fence() -> None:
    assert humaneval.completion_code("    return x\n```\n\nThis works because ...") == "    return x\n"
    assert humaneval.completion_code("    return x\n") == "    return x\n"
    assert humaneval.completion_code("    return 1\n```\n```python\nprint(2)\n```") == "    return 1\n"


def test_canonical_solutions_pass_and_pass_fails() -> None:
    problems = humaneval.load_problems(limit=3)
    canonical = [humaneval.program(p, humaneval.completion_code(p.canonical_solution + "```\nDone."))
                 for p in problems]
    stubs = [humaneval.program(p, "    pass\n") for p in problems]
    results = run_many(canonical + stubs, timeout_s=10.0)
    assert [r.passed for r in results] == [True] * 3 + [False] * 3, [r.detail for r in results]
