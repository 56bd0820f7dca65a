"""``edgecloud demo``: the whole system on one machine, as real processes.

Pulls the Qwen2.5-Coder pair if missing, starts a coordinator, a cloud node (1.5B) and an
edge node (0.5B) on free ports (pinned to different cores where there are several, so one
machine stands in for two devices), streams one answer with cloud tokens highlighted, and
compares with SLM-only and LLM-only on the same prompt. Everything stops on exit or Ctrl-C.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edgecloud.client import Client, Summary, TokenEvent
from edgecloud.processes import DaemonGroup

CODE_FENCE = "```python\n"


def _cores() -> tuple[list[int] | None, list[int] | None]:
    """Edge on the first core, cloud on the rest (None: no pinning on a single core)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return cores[:1], cores[1:]


def start_cluster(group: DaemonGroup, slm: Path | str, llm: Path | str, *, dtype: str = "bf16",
                  cloud_args: Sequence[str] = ()) -> Client:
    """Coordinator, cloud and edge on free ports; returns a client once both nodes registered.

    ``cloud_args`` are appended to the cloud node's command line (later options win).
    """
    edge_cpus, cloud_cpus = _cores()
    coordinator = group.start("coordinator", ["-m", "edgecloud.coordinator", "--listen", "127.0.0.1:0",
                                              "--heartbeat-interval-s", "1"])
    group.start("cloud", ["-m", "edgecloud.cloud_node", "--model", str(llm), "--listen", "127.0.0.1:0",
                          "--coordinator", coordinator.address, "--dtype", dtype, *cloud_args], cpus=cloud_cpus,
                env={"OMP_NUM_THREADS": str(len(cloud_cpus or [0]))})
    group.start("edge", ["-m", "edgecloud.edge_node", "--model", str(slm), "--listen", "127.0.0.1:0",
                         "--coordinator", coordinator.address, "--dtype", dtype], cpus=edge_cpus,
                env={"OMP_NUM_THREADS": str(len(edge_cpus or [0]))})
    client = Client(coordinator.address, timeout_s=1800)
    client.wait_for_nodes(2)
    return client


def run_demo(*, prompt: str, max_tokens: int, policy: str, target_cloud_share: float, slm: str, llm: str,
             compare: bool, console: Console | None = None) -> dict[str, Summary]:
    console = console or Console()
    from edgecloud.models.loader import resolve_source

    slm_path, llm_path = resolve_source(slm), resolve_source(llm)  # pulls with progress bars if missing
    log_dir = Path(tempfile.mkdtemp(prefix="edgecloud-demo-"))
    console.print(f"[dim]starting coordinator, cloud ({llm}) and edge ({slm}); logs in {log_dir}[/]")
    with DaemonGroup(log_dir=log_dir) as group:
        client = start_cluster(group, slm_path, llm_path)
        request = dict(max_tokens=max_tokens, assistant_prefix=CODE_FENCE, stop=("```",))
        console.print(f"\n[bold]{prompt}[/]  [dim](policy {policy}, target cloud share {target_cloud_share:.0%}; "
                      "[/][reverse]cloud tokens highlighted[/][dim])[/]\n")
        summaries = {}
        for event in client.generate(prompt, policy=policy, target_cloud_share=target_cloud_share, **request):
            if isinstance(event, TokenEvent):
                console.print(event.text, end="", style="reverse" if event.source == "cloud" else None,
                              highlight=False, markup=False)
            else:
                summaries[policy] = event
        console.print()
        if compare:
            for baseline in ("slm-only", "llm-only"):
                console.print(f"[dim]running {baseline} on the same prompt ...[/]")
                list(client.generate(prompt, policy=baseline, **request))
                summaries[baseline] = client.last_summary
        client.close()
    console.print(summary_table(summaries))
    return summaries


def summary_table(summaries: dict[str, Summary]) -> Table:
    table = Table("run", "tokens", "edge", "cloud", "checked", "cloud share", "round trips/token",
                  "bytes up/down", "tokens/s", title="hybrid vs. baselines (same prompt)")
    for name, s in summaries.items():
        table.add_row(name, str(s.output_tokens), str(s.edge_tokens), str(s.cloud_tokens), str(s.checked_tokens),
                      f"{s.cloud_share:.1%}", f"{s.round_trips_per_token:.3f}", f"{s.bytes_up}/{s.bytes_down}",
                      f"{s.tokens_per_s:.2f}")
    return table
