"""A cloud killed (SIGKILL) mid-generation costs no request, a restarted coordinator loses no node: real
coordinator, edge and cloud processes.

The cloud sits behind the simulator's shaping proxy (a stable address, 5 ms each way so that a
generation spans many round trips); it is killed at a random token of a streaming request and
started again on a new port behind the same address.
"""

from __future__ import annotations

import random
import time

import pytest

from edgecloud import Client
from edgecloud.client import Summary, TokenEvent
from edgecloud.loop_thread import LoopThread
from edgecloud.processes import DaemonGroup
from edgecloud.simulator.chaos import RestartableDaemon
from edgecloud.simulator.profiles import LinkProfile

PROMPT = "def fib(n):"
MAX = 48
KILLS = 20


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, make_tiny_pair):
    root = tmp_path_factory.mktemp("chaos")
    folders = make_tiny_pair(root, (21, 22))  # conftest's PAIR_SEEDS
    with LoopThread("chaos-proxy") as loop, DaemonGroup(log_dir=root / "logs") as group:
        coordinator = group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0",
                                                  "--heartbeat-interval-s", "1"])
        cloud = RestartableDaemon("cloud", ["-m", "edgecloud.cloud_node", "--model", str(folders["llm"]),
                                            "--dtype", "fp32", "--coordinator", coordinator.address,
                                            "--threads", "1"], loop,
                                  profile=LinkProfile.symmetric(latency_ms=5.0), log_dir=root / "logs")
        cloud.start()
        group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(folders["slm"]), "--dtype", "fp32",
                             "--listen", "127.0.0.1:0", "--coordinator", coordinator.address,
                             "--max-tokens-limit", "64", "--threads", "1"])
        client = Client(coordinator.address, timeout_s=120)
        client.wait_for_nodes(2)
        try:
            yield client, cloud
        finally:
            client.close()
            cloud.close()


def _generate(client: Client, policy: str, kill_at: int | None = None, cloud: RestartableDaemon | None = None):
    tokens: list[TokenEvent] = []
    summary = None
    for event in client.generate(PROMPT, max_tokens=MAX, policy=policy):
        if isinstance(event, Summary):
            summary = event
            continue
        if event.token_id >= 0:
            tokens.append(event)
        if kill_at is not None and len(tokens) == kill_at and cloud is not None:
            cloud.kill()
    assert summary is not None
    return tokens, summary


def _resumed(client: Client, policy: str, within_s: float) -> float:
    """Seconds until a request is served by the cloud again (no degraded token)."""
    started = time.monotonic()
    while True:
        _, summary = _generate(client, policy)
        if summary.degraded_tokens == 0 and summary.cloud_tokens > 0:
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, "hybrid routing did not resume"


@pytest.mark.parametrize("policy", ["speculative", "llm-only"])
def test_a_killed_cloud_costs_no_request(chaos, policy) -> None:
    client, cloud = chaos
    baseline, _ = _generate(client, policy)
    tokens, summary = _generate(client, policy, kill_at=3, cloud=cloud)
    assert len(tokens) == MAX and summary.finish_reason == "length"
    assert summary.degraded_tokens == sum(t.source == "degraded" for t in tokens) > 0
    assert summary.cloud_failures >= 1
    assert [t.token_id for t in tokens[:3]] == [t.token_id for t in baseline[:3]]
    first = next(i for i, t in enumerate(tokens) if t.source == "degraded")
    assert all(t.source == "degraded" for t in tokens[first:])  # nothing to come back to
    # While the cloud is down, new requests are answered at once in degraded mode (no waiting for a timeout).
    started = time.monotonic()
    tokens, summary = _generate(client, policy)
    assert summary.degraded_tokens == MAX and time.monotonic() - started < 5
    ready = cloud.restart()
    assert _resumed(client, policy, within_s=10) < 5
    assert time.monotonic() - ready < 10


def test_twenty_kills_at_random_tokens(chaos) -> None:
    client, cloud = chaos
    rng = random.Random(7)
    for i in range(KILLS):
        policy = ("speculative", "llm-only")[i % 2]
        kill_at = rng.randrange(1, MAX // 2)
        tokens, summary = _generate(client, policy, kill_at=kill_at, cloud=cloud)
        assert len(tokens) == MAX, f"kill {i} at token {kill_at}: {len(tokens)} tokens"
        assert summary.degraded_tokens > 0, f"kill {i} at token {kill_at}: nothing marked degraded"
        cloud.restart()
        _resumed(client, policy, within_s=10)


def test_a_restarted_coordinator_loses_no_node(tmp_path, make_tiny_pair) -> None:
    """SIGKILL the coordinator, start it again at the same address: both nodes re-register on their
    next heartbeat (NOT_FOUND from the fresh registry) and a routed request works."""
    folders = make_tiny_pair(tmp_path, (21, 22))
    with LoopThread("coordinator-proxy") as loop, DaemonGroup(log_dir=tmp_path / "logs") as group:
        coordinator = RestartableDaemon("coordinator", ["-m", "edgecloud.coordinator", "--heartbeat-interval-s",
                                                        "0.5", "--mqtt-listen", "none"], loop,
                                        log_dir=tmp_path / "logs", advertise=False)
        coordinator.start()
        for role, folder in (("cloud", folders["llm"]), ("edge", folders["slm"])):
            group.start(role, ["-m", f"edgecloud.{role}_node", "--model", str(folder), "--dtype", "fp32",
                               "--listen", "127.0.0.1:0", "--coordinator", coordinator.address, "--threads", "1"])
        client = Client(coordinator.address, timeout_s=60)
        try:
            def registered() -> set[str]:
                try:
                    return {n.node_id for n in client.status() if n.live}
                except Exception:  # the coordinator is not back yet
                    return set()

            deadline = time.monotonic() + 60
            while registered() != {"cloud-0", "edge-0"}:
                assert time.monotonic() < deadline, "nodes did not register"
                time.sleep(0.1)
            coordinator.kill()
            ready = coordinator.restart()
            while registered() != {"cloud-0", "edge-0"}:
                assert time.monotonic() - ready < 10, f"after the restart only {registered()} re-registered"
                time.sleep(0.1)
            _, summary = _generate(client, "speculative")
            assert summary.cloud_round_trips > 0 and summary.degraded_tokens == 0
        finally:
            client.close()
            coordinator.close()
