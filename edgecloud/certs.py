"""Development certificates for trying TLS and mutual TLS out: a local CA, a node certificate
and a client certificate, ECDSA P-256, as PEM files (keys 0600).

The node certificate serves every daemon's listener (SANs: the given host names and IP
addresses) and is also the client certificate a daemon presents when it dials a peer under
mutual TLS (extended key usage serverAuth + clientAuth); the client certificate is for SDK
users (clientAuth only). Not for production: the CA key sits beside the certificates.

``cryptography`` is imported lazily (only this developer command needs it; edge devices
running the daemons do not): ``pip install 'edgecloud[tls]'``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 365
LEAF_DAYS = 90
MAX_HOSTS = 64


@dataclass(frozen=True)
class DevCertificates:
    """Paths of the PEM files ``write_dev_certificates`` wrote."""

    ca_cert: Path
    ca_key: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path
    hosts: tuple[str, ...]


def _crypto() -> Any:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise RuntimeError("`edgecloud certs dev` needs the 'cryptography' package: "
                           "pip install 'edgecloud[tls]' (or pip install cryptography)") from exc
    return x509, hashes, serialization, ec, ExtendedKeyUsageOID, NameOID


def parse_hosts(text: str | Sequence[str]) -> tuple[str, ...]:
    """Host names and IP addresses from ``"a,b,c"`` (or a sequence); ``ValueError`` for a bad one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    hosts = tuple(dict.fromkeys(h.strip() for h in items if h.strip()))
    if not hosts:
        raise ValueError("no host names or IP addresses given")
    if len(hosts) > MAX_HOSTS:
        raise ValueError(f"{len(hosts)} hosts; at most {MAX_HOSTS}")
    for host in hosts:
        if _ip(host) is None and not _is_dns_name(host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name")
    return hosts


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _is_dns_name(host: str) -> bool:
    labels = host.removeprefix("*.").split(".")
    return len(host) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii()
        and not label.startswith("-") and not label.endswith("-") for label in labels)


def write_dev_certificates(out: str | Path, hosts: Sequence[str] = DEFAULT_HOSTS, *,
                           now: datetime.datetime | None = None) -> DevCertificates:
    """Write ca.pem, ca-key.pem, node.pem, node-key.pem, client.pem, client-key.pem under ``out``."""
    x509, hashes, serialization, ec, eku, name_oid = _crypto()
    hosts = parse_hosts(hosts)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(minutes=5)  # tolerate a little clock skew between machines

    def name(common: str) -> Any:
        return x509.Name([x509.NameAttribute(name_oid.ORGANIZATION_NAME, "edgecloud development"),
                          x509.NameAttribute(name_oid.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("edgecloud development CA")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=CA_DAYS))
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    def leaf(common: str, usages: list, sans: list | None) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_agreement=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_cert_sign=False, crl_sign=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    sans = [x509.IPAddress(ip) if (ip := _ip(h)) is not None else x509.DNSName(h) for h in hosts]
    node_cert, node_key = leaf("edgecloud node", [eku.SERVER_AUTH, eku.CLIENT_AUTH], sans)
    client_cert, client_key = leaf("edgecloud client", [eku.CLIENT_AUTH], None)

    def cert_pem(cert: Any) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(key: Any) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    paths = DevCertificates(out / "ca.pem", out / "ca-key.pem", out / "node.pem", out / "node-key.pem",
                            out / "client.pem", out / "client-key.pem", hosts)
    _write(paths.ca_cert, cert_pem(ca_cert), 0o644)
    _write(paths.ca_key, key_pem(ca_key), 0o600)
    _write(paths.node_cert, cert_pem(node_cert), 0o644)
    _write(paths.node_key, key_pem(node_key), 0o600)
    _write(paths.client_cert, cert_pem(client_cert), 0o644)
    _write(paths.client_key, key_pem(client_key), 0o600)
    return paths


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a file created with ``mode`` (a key is never readable by others, not even briefly)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask; an existing file keeps its own
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
    finally:
        if fd >= 0:
            os.close(fd)
    tmp.replace(path)


def usage(paths: DevCertificates) -> str:
    """Which flags to pass to which daemon (and the SDK) to use ``paths``."""
    ca, cert, key = paths.ca_cert, paths.node_cert, paths.node_key
    tls = f"--tls-cert {cert} --tls-key {key} --tls-ca {ca}"
    mtls = f"--tls-client-ca {ca} --tls-client-cert {cert} --tls-client-key {key}"
    tokens = "--auth-token \"$EDGECLOUD_AUTH_TOKEN\" --node-token \"$EDGECLOUD_NODE_TOKEN\""
    return "\n".join([
        f"wrote a development CA and certificates for {', '.join(paths.hosts)} under {paths.ca_cert.parent}",
        f"(keys 0600; the node certificate is valid {LEAF_DAYS} days, the CA {CA_DAYS}; not for production)",
        "",
        "TLS: every daemon (coordinator, cloud, edge) serves and dials with",
        f"  {tls}",
        "mutual TLS: add to every daemon (its listener then requires a client certificate from this CA,",
        "and it presents the node certificate when it dials a peer)",
        f"  {mtls}",
        "tokens (recommended with either): the same on every daemon",
        f"  {tokens}",
        "",
        "e.g. edgecloud coordinator --listen 127.0.0.1:50051 " + tls + " " + mtls,
        "",
        "SDK: edgecloud.Client(address, security=edgecloud.rpc.SecurityConfig(",
        f"    tls_ca_path={str(ca)!r}, auth_token=...,",
        f"    tls_client_cert_path={str(paths.client_cert)!r}, tls_client_key_path={str(paths.client_key)!r}))",
        "  (the client certificate only where the coordinator runs with --tls-client-ca)",
    ])
