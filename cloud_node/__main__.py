"""``python -m edgecloud.cloud_node`` / ``edgecloud cloud``: argument parsing only."""

from __future__ import annotations

import argparse

from edgecloud.cloud_node.config import CloudConfig
from edgecloud.daemon_args import (
    add_common_args,
    parse_node_args,
    run_daemon,
)
from edgecloud.mqtt_args import add_mqtt_args, mqtt_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecloud cloud", description="Serve the cloud LLM (sessions, verification, split tails).")
    p.add_argument("--model", required=True, help="zoo name, HF folder or .gguf file")
    p.add_argument("--listen", default="127.0.0.1:50052", help="host:port (port 0 = any free port)")
    p.add_argument("--advertise", help="address others dial (default: listen host and bound port)")
    p.add_argument("--node-id", default="cloud-0")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads for the model (0: one per core; 1 when sharing cores with other daemons)")
    p.add_argument("--coordinator", help="coordinator address to register with")
    p.add_argument("--max-sessions", type=int, default=64)
    p.add_argument("--max-kv-mib", type=int, default=4096)
    p.add_argument("--max-window-tokens", type=int, default=4096, help="context + draft tokens in one call")
    p.add_argument("--max-tokens-per-session", type=int, default=32768)
    p.add_argument("--session-idle-ttl-s", type=float, default=600.0, help="drop sessions unused this long")
    p.add_argument("--no-split-tail", action="store_true", help="do not serve RunTail (split computing)")
    add_common_args(p)
    add_mqtt_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, security = parse_node_args(parser, argv)
    config = CloudConfig(model=args.model, listen=args.listen, advertise=args.advertise, node_id=args.node_id,
                         dtype=args.dtype, threads=args.threads, coordinator=args.coordinator, max_sessions=args.max_sessions,
                         max_kv_mib=args.max_kv_mib, max_window_tokens=args.max_window_tokens,
                         max_tokens_per_session=args.max_tokens_per_session,
                         session_idle_ttl_s=args.session_idle_ttl_s, split_tail=not args.no_split_tail,
                         security=security, mqtt=mqtt_from_args(args, parser),
                         metrics_listen=args.metrics_listen)
    from edgecloud.cloud_node.node import serve

    run_daemon("edgecloud cloud", serve, config)


if __name__ == "__main__":
    main()
