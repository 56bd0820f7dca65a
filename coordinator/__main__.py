"""``python -m edgecloud.coordinator`` / ``edgecloud coordinator``: argument parsing only."""

from __future__ import annotations

import argparse

from edgecloud.coordinator.config import CoordinatorConfig
from edgecloud.daemon_args import add_common_args, run_daemon, security_from_args, setup_logging
from edgecloud.mqtt_args import NO_EMBEDDED, add_mqtt_args, mqtt_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecloud coordinator",
                                description="Run the coordinator: node registry and client-facing API.")
    p.add_argument("--listen", default="127.0.0.1:50051", help="host:port (port 0 = any free port)")
    p.add_argument("--node-ttl-s", type=float, default=15.0,
                   help="silence after which a node is no longer placed (listed as stale)")
    p.add_argument("--node-expiry-s", type=float, default=300.0,
                   help="silence after which a node is forgotten entirely (>= --node-ttl-s)")
    p.add_argument("--max-nodes", type=int, default=256,
                   help="registered nodes at most; more are refused with RESOURCE_EXHAUSTED")
    p.add_argument("--heartbeat-interval-s", type=float, default=5.0, help="how often nodes are told to heartbeat")
    p.add_argument("--max-message-mib", type=float, default=4.0, help="largest gRPC message sent or received")
    p.add_argument("--openai-listen", metavar="HOST:PORT", default=None,
                   help="also serve an OpenAI-compatible HTTP API there (/v1/chat/completions, /v1/completions, "
                        "/v1/models; HTTPS with --tls-cert/--tls-key; port 0 = any free port; default: off)")
    add_common_args(p)
    add_mqtt_args(p, coordinator=True)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = CoordinatorConfig(listen=args.listen, node_ttl_s=args.node_ttl_s, node_expiry_s=args.node_expiry_s,
                                   max_nodes=args.max_nodes, heartbeat_interval_s=args.heartbeat_interval_s,
                                   max_message_mib=args.max_message_mib, security=security_from_args(args, parser),
                                   metrics_listen=args.metrics_listen,
                                   openai_listen=args.openai_listen, mqtt=mqtt_from_args(args, parser),
                                   cluster=args.cluster,
                                   mqtt_listen=None if args.mqtt_listen == NO_EMBEDDED else args.mqtt_listen)
    except ValueError as exc:
        parser.error(str(exc))
    from edgecloud.coordinator.node import serve

    run_daemon("edgecloud coordinator", serve, config)


if __name__ == "__main__":
    main()
