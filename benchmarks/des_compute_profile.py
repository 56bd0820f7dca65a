"""Claim: fleet mode's compute model is measured, not assumed: seconds per forward of the edge SLM and
the cloud LLM by batch size and tokens per forward, on this machine.

Times one forward (plain PyTorch runtime, bf16, a 64-token cached context, LM head on the rows
the daemons need: 1 on the edge, up to 9 on the cloud — a window of 8 drafts + 1) of the
Qwen2.5-Coder-0.5B (edge) and 1.5B (cloud) shapes for batch 1 at 1…256 tokens and batch 2, 4 at
up to 64 tokens in all; the real weights when they are pulled, else random weights of the same
shapes (the time depends on shapes, not values). Writes a compute profile file that
``edgecloud simulate --des`` reads (``[fleet] compute_profile``); the copy in
``simulator/des/data/compute-profile-cpu-2core.json`` is the fleet mode's default::

    python benchmarks/des_compute_profile.py --json benchmarks/results/des_compute_profile.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from edgecloud.simulator.des.compute import SHIPPED_PROFILE
from edgecloud.simulator.des.record import measure_compute_profile

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", dest="json_out", default=str(ROOT / "benchmarks/results/des_compute_profile.json"))
    p.add_argument("--edge-model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--cloud-model", default="qwen2.5-coder-1.5b-instruct")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--budget-s", type=float, default=150.0, help="stop repeating once this much time is spent")
    p.add_argument("--ship", action="store_true", help=f"also copy the result to {SHIPPED_PROFILE.relative_to(ROOT)}")
    args = p.parse_args()
    started = time.perf_counter()
    profile = measure_compute_profile(args.edge_model, args.cloud_model, repeats=args.repeats,
                                      budget_s=args.budget_s)
    profile["benchmark"] = "des_compute_profile"
    profile["total_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.json_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=2) + "\n")
    print(f"wrote {out} in {profile['total_s']} s")
    if args.ship:
        shutil.copyfile(out, SHIPPED_PROFILE)
        print(f"copied to {SHIPPED_PROFILE}")


if __name__ == "__main__":
    main()
