"""``python -m edgecloud.edge_node`` / ``edgecloud edge``: argument parsing only."""

from __future__ import annotations

import argparse

from edgecloud.daemon_args import (
    add_common_args,
    parse_node_args,
    run_daemon,
)
from edgecloud.edge_node.config import EdgeConfig
from edgecloud.mqtt_args import add_mqtt_args, mqtt_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecloud edge",
                                description="Serve the edge SLM with the hybrid token router in-process.")
    p.add_argument("--model", required=True, help="zoo name, HF folder or .gguf file")
    p.add_argument("--listen", default="127.0.0.1:50053", help="host:port (port 0 = any free port)")
    p.add_argument("--advertise", help="address others dial (default: listen host and bound port)")
    p.add_argument("--node-id", default="edge-0")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for the model (0: one per core; 1 when sharing cores with other daemons)")
    p.add_argument("--coordinator", help="coordinator address to register with")
    p.add_argument("--cloud", help="cloud node address for requests that name none")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="new tokens per request")
    p.add_argument("--max-prompt-tokens", type=int, default=8192, help="longer prompts are refused")
    p.add_argument("--max-active-requests", type=int, default=16,
                   help="requests in progress at once; more are refused with RESOURCE_EXHAUSTED")
    p.add_argument("--allow-cloud", action="append", default=[], metavar="HOST:PORT",
                   help="a cloud node requests may name (repeatable; --cloud and clouds registered with the "
                        "coordinator are always allowed)")
    p.add_argument("--cloud-timeout-s", type=float, default=60.0, help="deadline of one verification round trip")
    p.add_argument("--cloud-prefetch", action="store_true",
                   help="by default, push context to the cloud in the background while drafting")
    p.add_argument("--reward-head", help="trained reward head (safetensors) for the 'reward' policy")
    p.add_argument("--split-model", help="serve policy 'split' too: this model's head runs here, its tail on the "
                                         "cloud node (which must serve the same model)")
    p.add_argument("--split-cuts", default="", help="candidate cuts, comma-separated layer counts run here; one fixes "
                                                    "the cut (default: every quarter of the layers, 0 and all)")
    p.add_argument("--split-codecs", default="fp16", help="candidate activation codecs at the cut, comma-separated")
    p.add_argument("--split-cloud-speedup", type=float, default=1.0,
                   help="the cloud's compute speed over this node's until measured (split planner)")
    add_common_args(p)
    add_mqtt_args(p)
    return p


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise SystemExit(f"edgecloud edge: --split-cuts takes comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, security = parse_node_args(parser, argv)
    config = EdgeConfig(model=args.model, listen=args.listen, advertise=args.advertise, node_id=args.node_id,
                        dtype=args.dtype, threads=args.threads, cloud=args.cloud, coordinator=args.coordinator,
                        max_tokens_limit=args.max_tokens_limit, max_prompt_tokens=args.max_prompt_tokens,
                        max_active_requests=args.max_active_requests, allowed_clouds=tuple(args.allow_cloud),
                        cloud_timeout_s=args.cloud_timeout_s,
                        reward_head=args.reward_head, cloud_prefetch=args.cloud_prefetch, split_model=args.split_model,
                        split_cuts=_ints(args.split_cuts), split_codecs=_names(args.split_codecs),
                        split_cloud_speedup=args.split_cloud_speedup, security=security,
                        metrics_listen=args.metrics_listen,
                        mqtt=mqtt_from_args(args, parser))
    from edgecloud.edge_node.node import serve

    run_daemon("edgecloud edge", serve, config)


if __name__ == "__main__":
    main()
