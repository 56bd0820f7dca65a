"""``edgecloud status`` against real daemons: the coordinator's view of the nodes, and each edge's own
report (the clouds it serves degraded)."""

from __future__ import annotations

import os
import subprocess
import sys

from edgecloud.client import Summary


def status(coordinator: str, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgecloud", "status", "--coordinator", coordinator, *flags],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})


def test_status_lists_the_nodes_and_the_clouds_an_edge_serves_degraded(tiny_cluster) -> None:
    coordinator, cloud, client = tiny_cluster["coordinator"], tiny_cluster["cloud"], tiny_cluster["client"]
    healthy = status(coordinator.address)
    assert healthy.returncode == 0, healthy.stderr
    rows = {line.split("│")[1].strip(): line for line in healthy.stdout.splitlines() if line.count("│") > 5}
    assert set(rows) >= {"edge-0", "cloud-0"}
    assert "live" in rows["edge-0"] and "live" in rows["cloud-0"] and cloud.address in rows["cloud-0"]
    assert "edge-0: clouds down: none" in healthy.stdout
    cloud.kill()
    events = list(client.generate("def fib(n):", max_tokens=8, policy="llm-only"))
    assert isinstance(events[-1], Summary) and events[-1].degraded_tokens == events[-1].total_tokens
    degraded = status(coordinator.address)
    assert degraded.returncode == 0, degraded.stderr
    assert f"edge-0: clouds down: {cloud.address}" in degraded.stdout


def test_status_of_an_unreachable_coordinator_is_one_clear_line() -> None:
    result = status("127.0.0.1:9")
    assert result.returncode != 0 and "coordinator 127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
