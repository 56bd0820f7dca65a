"""Decode speed of the runtime on this CPU, next to the weight-read roofline.

For each model: greedy decode tokens/s at short context, and the roofline
``measured memory read bandwidth / weight bytes read per token``. Decoding one token reads
every weight once (the embedding table only for the LM head when tied), so the ratio
measured/roofline says how close the runtime is to the memory bound.

    python benchmarks/decode_speed.py --json benchmarks/results/decode_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from edgecloud.models.generate import generate_ids
from edgecloud.models.llama import LlamaModel
from edgecloud.models.loader import load_model, resolve_source
from edgecloud.models.tokenizer import Tokenizer

DEFAULT_MODELS = ["qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"]
PROMPT = "Write a Python function that returns the n-th Fibonacci number."


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def _best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def read_bandwidth_gbps(size_mib: int = 1024, repeats: int = 7) -> float:
    """Best-of-N streaming read bandwidth (GB/s): an fp32 sum over a buffer far larger than the caches.

    (A bf16 sum or bf16 matrix-vector product is compute-bound on many CPUs and would
    understate the memory bound.)
    """
    buf = torch.ones(size_mib * 2**20 // 4, dtype=torch.float32)
    return buf.numel() * 4 / _best_seconds(buf.sum, repeats) / 1e9


def bf16_gemv_gbps(rows: int = 8192, cols: int = 32768, repeats: int = 5) -> float:
    """Weight bytes/s a bf16 matrix-vector product reaches: the decode step's own kernel."""
    weight = torch.randn(rows, cols, dtype=torch.bfloat16)
    vector = torch.randn(cols, dtype=torch.bfloat16)
    return weight.numel() * 2 / _best_seconds(lambda: torch.mv(weight, vector), repeats) / 1e9


def weight_bytes_per_token(model: LlamaModel) -> int:
    """Bytes of weights one decode step reads: all parameters but the untied embedding table."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if model.lm_head is not None:  # the input embedding is a single-row lookup
        total -= model.embed_tokens.weight.numel() * model.embed_tokens.weight.element_size()
    return total


def decode_tokens_per_s(model: LlamaModel, prompt_ids: list[int], tokens: int, repeats: int) -> list[float]:
    """Tokens/s of the decode phase (first token, i.e. prefill, excluded), per repeat."""
    rates = []
    for _ in range(repeats):
        stream = generate_ids(model, prompt_ids, max_new_tokens=tokens + 1)
        next(stream)  # prefill + first token
        start = time.perf_counter()
        count = sum(1 for _ in stream)
        rates.append(count / (time.perf_counter() - start))
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--tokens", type=int, default=48, help="decode tokens per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, required=True, help="output JSON path")
    args = parser.parse_args()

    bandwidth = read_bandwidth_gbps()
    gemv = bf16_gemv_gbps()
    result = {"benchmark": "decode_speed", "machine": machine_info(), "dtype": "bfloat16",
              "prompt": PROMPT, "decode_tokens": args.tokens, "read_bandwidth_gbps": bandwidth,
              "bf16_gemv_weight_gbps": gemv, "models": []}
    print(f"read bandwidth {bandwidth:.1f} GB/s; a bf16 GEMV reads weights at {gemv:.1f} GB/s")
    for name in args.models:
        folder = resolve_source(name)
        model = load_model(folder, dtype=torch.bfloat16)
        ids = Tokenizer.from_folder(folder).prompt_ids(PROMPT)
        decode_tokens_per_s(model, ids, 4, 1)  # warm-up
        rates = decode_tokens_per_s(model, ids, args.tokens, args.repeats)
        weight_bytes = weight_bytes_per_token(model)
        roofline = bandwidth * 1e9 / weight_bytes
        row = {"model": name, "prompt_tokens": len(ids), "weight_bytes_per_token": weight_bytes,
               "tokens_per_s": statistics.median(rates), "tokens_per_s_runs": rates,
               "roofline_tokens_per_s": roofline, "ratio_to_roofline": statistics.median(rates) / roofline}
        result["models"].append(row)
        print(f"{name}: {row['tokens_per_s']:.2f} tok/s, roofline {roofline:.2f} tok/s, "
              f"ratio {row['ratio_to_roofline']:.2f}")
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))  # incremental: a cut-off run keeps data
        del model


if __name__ == "__main__":
    main()
