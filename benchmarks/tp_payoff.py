"""When does tensor parallelism pay off? The cost model's ms/token over link latency × devices,
from a measured single-device speed, checked against the measured groups of ``tp_decode.py``.

    python benchmarks/tp_payoff.py --measured benchmarks/results/tp_decode_random.json \\
        --layers 8 --hidden 1024 --json benchmarks/results/tp_payoff_random.json

Devices are taken as equal to the measured one (ms/token alone), links without a rate limit
(1 Gbit/s), the per-collective overhead as in ``edgecloud.models.tp_cost``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgecloud.models.tp_cost import Device, predict

LATENCIES_MS = [0.0, 0.5, 1.0, 2.0, 5.0, 10.0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measured", type=Path, required=True, help="a tp_decode.py JSON with an N=1 row")
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--hidden", type=int, required=True)
    parser.add_argument("--max-devices", type=int, default=4)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args()
    measured = json.loads(args.measured.read_text())
    alone = next(r["ms_per_token_p50"] for r in measured["rows"] if r["ways"] == 1)

    def model(ways: int, one_way_ms: float) -> float:
        devices = [Device("master", alone)] + [Device(f"d{i}", alone, one_way_ms) for i in range(1, ways)]
        return predict(devices, layers=args.layers, hidden_size=args.hidden).ms_per_token

    grid = [{"one_way_ms": lat, "ms_per_token": {n: model(n, lat) for n in range(1, args.max_devices + 1)}}
            for lat in LATENCIES_MS]
    checks = [{"ways": r["ways"], "one_way_ms": r["one_way_ms"], "measured_ms": r["ms_per_token_p50"],
               "model_ms": model(r["ways"], r["one_way_ms"])} for r in measured["rows"] if r["ways"] > 1]
    result = {"benchmark": "tp_payoff", "measured_from": str(args.measured), "alone_ms_per_token": alone,
              "layers": args.layers, "hidden_size": args.hidden, "grid": grid, "checks": checks}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print("| one-way latency | " + " | ".join(f"N={n}" for n in range(1, args.max_devices + 1)) + " |")
    print("|---|" + "---|" * args.max_devices)
    for row in grid:
        best = min(row["ms_per_token"].values())
        print(f"| {row['one_way_ms']:g} ms | " + " | ".join(
            (f"**{v:.0f}**" if v == best else f"{v:.0f}") for v in row["ms_per_token"].values()) + " |")
    for check in checks:
        print(f"N={check['ways']} at {check['one_way_ms']:g} ms: measured {check['measured_ms']:.1f}, "
              f"model {check['model_ms']:.1f} ms/token")


if __name__ == "__main__":
    main()
