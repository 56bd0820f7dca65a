"""Held-out AUROC of the reward heads against entropy, max-prob and margin alone.

Trains the three heads the README compares (linear and 64-unit MLP over hidden state +
scalars, linear over the scalars only) on a directory written by ``edgecloud reward collect``
and writes one JSON report each (token counts per split and source, AUROC of predicting
disagreement for the head and for each single feature)::

    python benchmarks/reward_auroc.py --data ~/.cache/edgecloud/reward/qwen-coder-0.5b-1.5b \
        --out-dir benchmarks/results/reward
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edgecloud.evaluation.reward_train import TrainConfig, train_and_report
from edgecloud.routing.reward import SCALAR_FEATURES

HEADS = {"linear": TrainConfig(), "mlp64": TrainConfig(hidden_units=64),
         "scalars": TrainConfig(features=SCALAR_FEATURES)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="directory of `edgecloud reward collect`")
    parser.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/reward"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, config in HEADS.items():
        report = train_and_report(args.data, args.data / f"head-{name}.safetensors",
                                  args.out_dir / f"head-{name}.report.json", config)
        held_out = report["splits"]["held-out"]
        print(f"{name}: held-out AUROC {held_out['auroc_disagreement']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
