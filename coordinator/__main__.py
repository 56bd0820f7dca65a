"""``python -m edgecloud.coordinator`` / ``edgecloud coordinator``: argument parsing only."""

from __future__ import annotations

import argparse

from edgecloud.coordinator.config import CoordinatorConfig
from edgecloud.daemon_args import add_common_args, run_daemon, security_from_args, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgecloud coordinator",
                                description="Run the coordinator: node registry and client-facing API.")
    p.add_argument("--listen", default="127.0.0.1:50051", help="host:port (port 0 = any free port)")
    p.add_argument("--node-ttl-s", type=float, default=15.0, help="silence after which a node counts as gone")
    p.add_argument("--heartbeat-interval-s", type=float, default=5.0)
    add_common_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    config = CoordinatorConfig(listen=args.listen, node_ttl_s=args.node_ttl_s,
                               heartbeat_interval_s=args.heartbeat_interval_s, security=security_from_args(args))
    from edgecloud.coordinator.node import serve

    run_daemon("edgecloud coordinator", serve, config)


if __name__ == "__main__":
    main()
