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
    group.add_argument("--auth-token", default=os.environ.get("EDGECLOUD_AUTH_TOKEN"),
                       help="bearer token required by listeners and sent to peers "
                            "(default: $EDGECLOUD_AUTH_TOKEN)")
    group.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def security_from_args(args: argparse.Namespace) -> SecurityConfig:
    return SecurityConfig(tls_cert_path=args.tls_cert, tls_key_path=args.tls_key, tls_ca_path=args.tls_ca,
                          auth_token=args.auth_token)


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
