"""Command-line arguments every daemon shares (security, logging), for the ``__main__`` modules."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from edgecloud.rpc import SecurityConfig

T = TypeVar("T")


def add_common_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("security and logging")
    group.add_argument("--tls-cert", help="server certificate (PEM); enables TLS on the listener")
    group.add_argument("--tls-key", help="server private key (PEM)")
    group.add_argument("--tls-ca", help="CA bundle (PEM) to verify the servers this process dials")
    group.add_argument("--tls-client-ca", help="mutual TLS: CA bundle (PEM); the listener requires every "
                                               "client to present a certificate it signed (needs --tls-cert)")
    group.add_argument("--tls-client-cert", help="mutual TLS: certificate (PEM) this process presents when it "
                                                 "dials a peer (with --tls-client-key)")
    group.add_argument("--tls-client-key", help="mutual TLS: private key (PEM) of --tls-client-cert")
    group.add_argument("--auth-token", default=os.environ.get("EDGECLOUD_AUTH_TOKEN"),
                       help="client token: bearer token required by listeners and sent to peers "
                            "(default: $EDGECLOUD_AUTH_TOKEN)")
    group.add_argument("--node-token", default=os.environ.get("EDGECLOUD_NODE_TOKEN"),
                       help="node token: the credential nodes register with the coordinator by (it "
                            "requires it on RegisterNode/Heartbeat/DeregisterNode); must differ from "
                            "--auth-token (default: $EDGECLOUD_NODE_TOKEN)")
    group.add_argument("--metrics-listen", metavar="HOST:PORT", default=None,
                       help="serve Prometheus metrics on http(s)://HOST:PORT/metrics (port 0: any free port, "
                            "announced on stdout; HTTPS with --tls-cert; the client token with --auth-token)")
    group.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def security_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> SecurityConfig:
    """The security settings of ``args``; with ``parser``, a bad combination exits 2 with its message."""
    try:
        return SecurityConfig(tls_cert_path=args.tls_cert, tls_key_path=args.tls_key, tls_ca_path=args.tls_ca,
                              auth_token=args.auth_token, node_token=args.node_token,
                              tls_client_ca_path=args.tls_client_ca, tls_client_cert_path=args.tls_client_cert,
                              tls_client_key_path=args.tls_client_key)
    except ValueError as exc:
        if parser is None:
            raise
        parser.error(str(exc))


def check_node_credentials(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A node that registers with a coordinator under token auth needs the node token."""
    if args.coordinator and args.auth_token and not args.node_token:
        parser.error("--coordinator with --auth-token needs --node-token (or $EDGECLOUD_NODE_TOKEN): "
                     "a coordinator with auth accepts registrations only with the node token")


def parse_node_args(parser: argparse.ArgumentParser, argv: list[str] | None
                    ) -> tuple[argparse.Namespace, SecurityConfig]:
    """A node daemon's arguments and security settings (errors through ``parser``), logging set up."""
    args = parser.parse_args(argv)
    check_node_credentials(parser, args)
    security = security_from_args(args, parser)
    setup_logging(args.log_level)
    return args, security


def setup_logging(level: str) -> None:
    """Logs go to stderr; stdout carries only the readiness line."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_daemon(prog: str, serve: Callable[[T], Awaitable[None]], config: T) -> None:
    """Run a daemon's ``serve(config)``; a bad address or model exits 2 with one clear line."""
    try:
        asyncio.run(serve(config))
    except (OSError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
