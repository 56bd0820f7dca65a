"""The tensor-parallel cost model and planner: a device behind a slow link is left out, on a synthetic
profile and on a real group whose worker sits behind the shaping proxy."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from edgecloud.loop_thread import LoopThread
from edgecloud.models.config import ModelConfig
from edgecloud.models.llama import LlamaModel
from edgecloud.models.loader import save_model
from edgecloud.models.sharded import write_shards
from edgecloud.models.tp_cost import Device, plan_group, predict
from edgecloud.models.tp_worker import local_group
from edgecloud.simulator.profiles import LinkProfile
from edgecloud.simulator.proxy import ShapingProxy


def test_the_planner_adds_near_devices_and_drops_one_behind_a_slow_link() -> None:
    master = Device("master", ms_per_token=120.0)
    near = Device("near", ms_per_token=120.0, one_way_ms=0.2)
    slow_cpu = Device("slow-cpu", ms_per_token=600.0, one_way_ms=0.3)
    far = Device("far", ms_per_token=120.0, one_way_ms=8.0)  # 57 collectives x 2 x 8 ms > what it saves
    best, dropped = plan_group(master, [far, near, slow_cpu], layers=28, hidden_size=1536)
    assert best.devices == ("master", "near")
    # the weak device saves 5 ms of compute and costs 17 ms of communication; the far one costs 900
    assert [name for name, _ in dropped] == ["slow-cpu", "far"] and "8 ms one way" in dropped[1][1]
    alone = predict([master], layers=28, hidden_size=1536)
    assert best.ms_per_token < alone.ms_per_token == 120.0
    for worse in ([master, near, slow_cpu], [master, near, far]):
        assert predict(worse, layers=28, hidden_size=1536).ms_per_token > best.ms_per_token


def ms_per_token(group, tokens: int = 12) -> float:
    with torch.inference_mode():
        group.forward(torch.tensor([[3, 14, 15, 9]]))
        started = time.perf_counter()
        for token in range(tokens):
            group.forward(torch.tensor([[token + 5]]))
    return (time.perf_counter() - started) / tokens * 1e3


def test_a_real_worker_behind_a_slow_link_makes_the_group_slower_as_predicted(tmp_path: Path) -> None:
    config = ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, rope_theta=10000.0)
    torch.manual_seed(0)
    source = save_model(LlamaModel(config), tmp_path / "model")
    for ways in (1, 2):
        write_shards(source, tmp_path / f"shards-{ways}", ways)
    with local_group(tmp_path / "shards-1") as group:
        alone_ms = ms_per_token(group)

    links = []
    with LoopThread("proxies") as proxies:
        def via_proxy(address: str, rank: int) -> str:
            host, port = address.replace("tcp://", "").rsplit(":", 1)
            links.append(proxies.run(ShapingProxy.create(upstream=(host, int(port)),
                                                         profile=LinkProfile.symmetric(latency_ms=3.0))))
            return f"tcp://{links[-1].address}"

        try:
            with local_group(tmp_path / "shards-2", worker_address=via_proxy) as group:
                pair_ms = ms_per_token(group, tokens=6)
        finally:
            for link in links:
                proxies.run(link.close())
    predicted = predict([Device("master", alone_ms), Device("worker", alone_ms, one_way_ms=3.0)],
                        layers=2, hidden_size=32)
    best, dropped = plan_group(Device("master", alone_ms), [Device("worker", alone_ms, one_way_ms=3.0)],
                               layers=2, hidden_size=32)
    assert pair_ms > alone_ms and best.devices == ("master",) and dropped[0][0] == "worker"
    # 4 allreduces at 2 x 3 ms and a broadcast: the model's ~29 ms is a floor; a busy machine adds to it
    assert 0.8 * predicted.ms_per_token < pair_ms < 3.0 * predicted.ms_per_token
