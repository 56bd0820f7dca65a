"""Child-process daemons: readiness line, failure before ready, clean stop."""

from __future__ import annotations

import pytest

from edgecloud.processes import DaemonGroup, DaemonProcess, DaemonStartError

READY = "from edgecloud.processes import announce_ready; import time; announce_ready('t', '127.0.0.1:4321'); "


def test_start_waits_for_the_ready_line_and_close_stops_it(tmp_path) -> None:
    with DaemonGroup(log_dir=tmp_path) as group:
        daemon = group.start("t", ["-c", READY + "time.sleep(120)"])
        assert daemon.address == "127.0.0.1:4321"
        assert daemon.process.poll() is None
    assert daemon.process.poll() is not None  # stopped by the group


def test_daemon_that_dies_before_ready_raises(tmp_path) -> None:
    with pytest.raises(DaemonStartError, match="exited with code 3"):
        DaemonProcess.start("bad", ["-c", "import sys; sys.exit(3)"], log_dir=tmp_path)


def test_daemon_that_stays_silent_times_out() -> None:
    with pytest.raises(DaemonStartError, match="did not become ready"):
        DaemonProcess.start("slow", ["-c", "import time; time.sleep(60)"], timeout_s=1.0)


def test_sigint_ignored_falls_back_to_kill() -> None:
    code = READY + "import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(120)"
    daemon = DaemonProcess.start("stubborn", ["-c", code])
    assert daemon.close(grace_s=0.5) is not None
