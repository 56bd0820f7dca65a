"""Split computing of the MNIST-5k digit CNN: bytes, accuracy and end-to-end latency per configuration.

Configurations: everything on the edge; full offload of the raw image (uint8); each cut × each
activation codec (one image at a time, so every scale is the image's own); the learned bottleneck
(``edgecloud split train-bottleneck``: cut 3, 2 channels, int8). Accuracy is on the fixed 1,000
test digits, with its delta from the unsplit model. Latency per image = edge compute + cloud
compute (both measured here, batch 1, one thread, the same CPU standing in for both sides) +
the network time of that configuration's bytes through the simulator's shaping proxy (a real TCP
round trip: the payload up, 40 bytes of logits down) at 1, 10, 100 Mbit/s × RTT 10, 50 ms. The
planner's analytic prediction (``edgecloud.split.planner``) is recorded beside each measurement,
and a plot shows which configuration wins each cell among those within 0.6 points of the
unsplit accuracy.

    python benchmarks/split_cnn.py --json benchmarks/results/split_cnn.json --plot benchmarks/results/split_cnn.png

Trains the base CNN and the bottleneck first (about 2 minutes) when the cache has none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch

RATES_MBPS = (1.0, 10.0, 100.0)
RTTS_MS = (10.0, 50.0)
CODECS = ("fp32", "fp16", "int8-channel", "int8-channel+lz4", "int4-g8", "int4-g8+lz4")
LOGITS_BYTES = 40  # 10 float32 class scores come back
MAX_LOSS_POINTS = 0.6
BOTTLENECK = {"cut": 3, "channels": 2, "seed": 0}


def _median_time(fn, repeats: int = 30) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def ensure_models() -> tuple[Path, Path]:
    from edgecloud.split.bottleneck import default_bottleneck_path, default_cnn_path

    cnn, bottleneck = default_cnn_path(BOTTLENECK["seed"]), default_bottleneck_path(**BOTTLENECK)
    if not bottleneck.is_file():
        subprocess.run([sys.executable, "-m", "edgecloud", "split", "train-bottleneck", "--cut", str(BOTTLENECK["cut"]),
                        "--channels", str(BOTTLENECK["channels"]), "--seed", str(BOTTLENECK["seed"])], check=True)
    return cnn, bottleneck


class Echo:
    """A TCP server that reads a length-prefixed payload and answers ``LOGITS_BYTES`` bytes."""

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (size,) = struct.unpack("<I", await reader.readexactly(4))
                await reader.readexactly(size)
                writer.write(bytes(LOGITS_BYTES))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            writer.close()


async def network_times(sizes: list[int], rate_mbps: float, rtt_ms: float, repeats: int) -> dict[int, float]:
    """Median time of a round trip (``size`` bytes up, the logits down) through the shaping proxy."""
    from edgecloud.simulator.profiles import LinkProfile
    from edgecloud.simulator.proxy import ShapingProxy

    echo = Echo()
    upstream = await echo.start()
    proxy = await ShapingProxy.create(upstream=upstream,
                                      profile=LinkProfile.symmetric(rate_mbps=rate_mbps, latency_ms=rtt_ms / 2,
                                                                    burst_bytes=1500))  # one packet: no burst credit
    host, port = proxy.address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    out = {}
    try:
        for size in sizes:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                writer.write(struct.pack("<I", size) + bytes(size))
                await writer.drain()
                await reader.readexactly(LOGITS_BYTES)
                times.append(time.perf_counter() - started)
            out[size] = statistics.median(times)
    finally:
        writer.close()
        await proxy.close()
        echo.server.close()
    return out


def measure_configs(cnn_path: Path, bottleneck_path: Path) -> tuple[list[dict], float]:
    """Every configuration's bytes per image, accuracy, edge and cloud compute."""
    from edgecloud.kernels.codecs import decode, encode
    from edgecloud.split.bottleneck import int8_bytes, load_bottleneck, load_cnn
    from edgecloud.split.cnn import accuracy
    from edgecloud.split.mnist import load_mnist
    from edgecloud.split.sequential import cut_points, split, stages_of

    data = load_mnist(seed=0)
    model = load_cnn(cnn_path)
    names = [name for name, _ in stages_of(model)]
    base = accuracy(model, data.test_x, data.test_y)
    one = data.test_x[:1]
    rows = []
    with torch.inference_mode():
        last = len(names)
        rows.append({"config": "local only", "cut": last, "codec": "", "bytes": 0, "accuracy": base,
                     "edge_s": _median_time(lambda: model(one)), "cloud_s": 0.0})
        raw = (data.test_x[:1] * 255).round().to(torch.uint8)
        rows.append({"config": "full offload (uint8 image)", "cut": 0, "codec": "uint8", "bytes": raw.numel(),
                     "accuracy": accuracy(model, (data.test_x * 255).round() / 255, data.test_y),
                     "edge_s": 0.0, "cloud_s": _median_time(lambda: model(one))})
        for cut in cut_points(model)[1:-1]:
            head, tail = split(model, cut)
            features = head(data.test_x)  # (N, C, H, W) or (N, F)
            edge_s, cloud_s = _median_time(lambda head=head: head(one)), _median_time(lambda t=tail, f=features: t(f[:1]))
            for codec in CODECS:
                if codec.startswith("int4") and features.dim() == 4 and features.shape[1] % 8:
                    continue
                axis = 1 if features.dim() == 4 else -1
                encoded = [encode(f[None], codec, axis=axis) for f in features]
                restored = torch.cat([decode(e) for e in encoded])
                correct = (tail(restored).argmax(-1) == data.test_y).float().mean().item()
                nbytes = round(statistics.mean(e.nbytes for e in encoded))
                rows.append({"config": f"cut {cut} (after {names[cut - 1]}) {codec}", "cut": cut, "codec": codec,
                             "bytes": nbytes, "accuracy": correct, "edge_s": edge_s, "cloud_s": cloud_s})
        bottlenecked, config = load_bottleneck(bottleneck_path)
        values, scale = bottlenecked.encode(data.test_x)
        logits = bottlenecked.decode(values, scale)
        rows.append({"config": f"learned bottleneck (cut {config.cut}, {config.channels} ch, int8)", "cut": config.cut,
                     "codec": "bottleneck-int8", "bytes": int8_bytes(tuple(values.shape[1:])),
                     "accuracy": (logits.argmax(-1) == data.test_y).float().mean().item(),
                     "edge_s": _median_time(lambda: bottlenecked.encode(one)),
                     "cloud_s": _median_time(lambda: bottlenecked.decode(values[:1], scale[:1]))})
    for row in rows:
        row["accuracy_delta_points"] = 100 * (row["accuracy"] - base)
    return rows, base


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slowdowns = sorted({c["edge_slowdown"] for c in result["cells"]})
    fig, axes = plt.subplots(len(slowdowns), 1, figsize=(10, 3.4 * len(slowdowns)), squeeze=False)
    for ax, slowdown in zip(axes[:, 0], slowdowns, strict=True):
        _grid(ax, [c for c in result["cells"] if c["edge_slowdown"] == slowdown], result["winners"], plt)
        ax.set_title(f"edge = this CPU × {slowdown:g} slower: fastest configuration within {MAX_LOSS_POINTS} "
                     "points of the unsplit accuracy", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _grid(ax, cells: list[dict], winners: list[str], plt) -> None:
    ax.set_xticks(range(len(RATES_MBPS)), [f"{r:g} Mbit/s" for r in RATES_MBPS])
    ax.set_yticks(range(len(RTTS_MS)), [f"RTT {r:g} ms" for r in RTTS_MS])
    for cell in cells:
        x, y = RATES_MBPS.index(cell["rate_mbps"]), RTTS_MS.index(cell["rtt_ms"])
        ax.add_patch(plt.Rectangle((x - 0.5, y - 0.5), 1, 1, color=f"C{winners.index(cell['winner'])}", alpha=0.35))
        ax.text(x, y, f"{cell['winner']}\n{cell['winner_ms']:.1f} ms\n(planner: {cell['planner_pick']})",
                ha="center", va="center", fontsize=7)
    ax.set_xlim(-0.5, len(RATES_MBPS) - 0.5)
    ax.set_ylim(-0.5, len(RTTS_MS) - 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--plot", type=Path)
    parser.add_argument("--repeats", type=int, default=5, help="round trips per size and link cell")
    parser.add_argument("--edge-slowdowns", type=float, nargs="+", default=[1.0, 30.0],
                        help="also model an edge this many times slower than this CPU (its measured compute × k)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from edgecloud.split.planner import CutProfile, LinkEstimate, best_plan

    rows, base = measure_configs(*ensure_models())
    for row in rows:
        print(f"{row['config']:<48} {row['bytes']:>7} B  acc {100 * row['accuracy']:.2f}% "
              f"({row['accuracy_delta_points']:+.2f})  edge {row['edge_s'] * 1e3:.2f} ms  cloud {row['cloud_s'] * 1e3:.2f} ms",
              flush=True)
    eligible = [r for r in rows if r["accuracy_delta_points"] >= -MAX_LOSS_POINTS]
    sizes = sorted({r["bytes"] for r in rows if r["bytes"]})
    nets = {(rate, rtt): asyncio.run(network_times(sizes, rate, rtt, args.repeats))
            for rtt in RTTS_MS for rate in RATES_MBPS}
    cells = []
    for slowdown in args.edge_slowdowns:
        for (rate, rtt), net in nets.items():
            latencies = {r["config"]: slowdown * r["edge_s"] + r["cloud_s"] + (net[r["bytes"]] if r["bytes"] else 0.0)
                         for r in rows}
            profiles = [CutProfile(i, r["config"], slowdown * r["edge_s"], r["cloud_s"],
                                   {r["codec"]: r["bytes"]} if r["bytes"] else {}, LOGITS_BYTES)
                        for i, r in enumerate(eligible)]
            plan = best_plan(profiles, LinkEstimate(rate, rtt))
            winner = min(eligible, key=lambda r, lat=latencies: lat[r["config"]])
            cells.append({"edge_slowdown": slowdown, "rate_mbps": rate, "rtt_ms": rtt,
                          "network_s": {str(k): v for k, v in net.items()}, "latency_s": latencies,
                          "winner": winner["config"], "winner_ms": 1e3 * latencies[winner["config"]],
                          "planner_pick": plan.label, "planner_expected_ms": 1e3 * plan.expected_s})
            print(f"edge ×{slowdown:g}, {rate:g} Mbit/s, RTT {rtt:g} ms: fastest {winner['config']} "
                  f"({1e3 * latencies[winner['config']]:.1f} ms); planner picks {plan.label}", flush=True)
    result = {"benchmark": "split_cnn", "model": "DigitResNet (edgecloud.split.cnn), MNIST-5k, seed 0",
              "test_images": 1000, "unsplit_accuracy": base, "max_loss_points": MAX_LOSS_POINTS,
              "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1},
              "link": "simulator shaping proxy, symmetric rate and latency, TCP on loopback",
              "configs": rows, "cells": cells,
              "winners": sorted({c["winner"] for c in cells})}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
