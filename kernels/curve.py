"""ZeroMQ CURVE for the tensor-parallel group: encrypted links, and only members may join.

A group has two key pairs, written once by ``edgecloud certs tp-keys DIR``: the master's
(``master.key`` public, ``master.key_secret``) and the members' (``member.key`` /
``member.key_secret``, the group credential every worker holds). The master's ROUTER is a CURVE
server that a ZAP handler lets only the member key through; a worker's DEALER is a CURVE client
that knows the master's public key, so it talks to the real master only. A peer without the keys,
or with other ones, never completes the handshake: the master reports it as a worker that never
joined, the worker as a master that sent nothing — never a hang. The master needs
``master.key_secret`` and ``member.key``; every worker ``master.key`` and ``member.key_secret``.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

MASTER, MEMBER = "master", "member"


@dataclass(frozen=True)
class GroupKeys:
    """The group's CURVE keys (Z85): a worker holds the member secret, the master its own secret."""

    master_public: bytes
    member_public: bytes
    member_secret: bytes | None = None
    master_secret: bytes | None = None

    @classmethod
    def load(cls, folder: str | Path, *, master: bool) -> GroupKeys:
        """Read the keys a master (``master=True``: its secret too) or a worker needs from ``folder``."""
        folder = Path(folder)
        try:
            master_public, master_secret = zmq.auth.load_certificate(
                folder / (f"{MASTER}.key_secret" if master else f"{MASTER}.key"))
            member_public, member_secret = zmq.auth.load_certificate(
                folder / (f"{MEMBER}.key" if master else f"{MEMBER}.key_secret"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"tensor-parallel CURVE keys in {folder}: {exc} (write them with "
                             "`edgecloud certs tp-keys`)") from exc
        if (master_secret if master else member_secret) is None:
            raise ValueError(f"tensor-parallel CURVE keys in {folder}: the secret key is missing")
        return cls(master_public, member_public, None if master else member_secret, master_secret if master else None)


def write_group_keys(folder: str | Path) -> list[Path]:
    """Write a new group's key pairs into ``folder`` (secret files 0600); returns the files written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (MASTER, MEMBER):
        public, secret = zmq.auth.create_certificates(folder, name)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written


class _MembersOnly:
    """ZAP credentials provider: the member key (Z85, as pyzmq passes it), nothing else."""

    def __init__(self, member_public: bytes) -> None:
        self.allowed = member_public

    def callback(self, domain: str, key: bytes) -> bool:
        return hmac.compare_digest(key, self.allowed)


def secure_master(socket: zmq.Socket, context: zmq.Context, keys: GroupKeys) -> ThreadAuthenticator:
    """Make ``socket`` (before it binds) a CURVE server admitting only members; returns the ZAP handler
    (stop it when the socket closes). ``context`` must be the socket's, used by no other master."""
    if keys.master_secret is None:
        raise ValueError("the master needs master.key_secret")
    authenticator = ThreadAuthenticator(context)
    authenticator.start()
    authenticator.configure_curve_callback("*", _MembersOnly(keys.member_public))
    socket.curve_server = True
    socket.curve_publickey = keys.master_public
    socket.curve_secretkey = keys.master_secret
    return authenticator


def secure_worker(socket: zmq.Socket, keys: GroupKeys) -> None:
    """Make ``socket`` (before it connects) a CURVE client of the group's master."""
    if keys.member_secret is None:
        raise ValueError("a worker needs member.key_secret")
    socket.curve_serverkey = keys.master_public
    socket.curve_publickey = keys.member_public
    socket.curve_secretkey = keys.member_secret
