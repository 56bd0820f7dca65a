"""Peak RSS of one process that loads a shard (optionally with a memory window) and decodes a few tokens.

    python tests/rss_probe.py SHARDS [WINDOW]  ->  prints "baseline_kib peak_kib"

The peak is the kernel's VmHWM, reset after the imports (``/proc/self/clear_refs``), so the imports'
own transient peak does not hide the model's.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

from edgecloud.models.sharded import TensorParallelGroup, load_shard


def status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def main() -> None:
    torch.set_num_threads(1)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    baseline = status_kib("VmRSS")
    window = int(sys.argv[2]) if len(sys.argv) > 2 else None
    group = TensorParallelGroup(load_shard(sys.argv[1], 0, memory_window=window))
    with torch.inference_mode():
        logits = group.forward(torch.tensor([[3, 14, 15, 9]]))
        for _ in range(4):
            logits = group.forward(logits[:, -1:].argmax(-1))
    print(baseline, status_kib("VmHWM"))


if __name__ == "__main__":
    main()
