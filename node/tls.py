"""TLS for docraft's HTTP: ``[tls]`` in the cluster file, the listeners' and the clients' SSL contexts.

    [tls]
    dir = "tls"            # <id>.pem and <id>.key for every replica and dispatcher (docraft certs writes them)
    ca = "tls/ca.pem"      # optional; the CA every client verifies servers against (default: dir/ca.pem)

With ``[tls]`` every HTTP listener, client routes and internal ones alike,
serves HTTPS only with its member's certificate, and every client of the
cluster (``ShardClient``, ``node.admin``, the loader, the tests) verifies the
server's certificate, host name included, against the CA. Membership stays
the signature's (``node.signing``): a certificate authenticates servers to
clients, not clients to servers. Raft traffic is not TLS; PySyncObj encrypts
it with the cluster secret.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CA_NAME = "ca"  # the CA's files are DIR/ca.pem and DIR/ca.key, so no member may be called this


class TlsUnusable(ValueError):
    """A member's certificate or key, or the CA, is missing or cannot be loaded."""


@dataclass(frozen=True)
class TlsConfig:
    """The ``[tls]`` table, with paths resolved against the cluster file's directory."""

    dir: Path
    ca: Path

    def certificate(self, member: str) -> Path:
        """The certificate of the replica or dispatcher ``member``: ``dir/<member>.pem``."""
        return self.dir / f"{member}.pem"

    def key(self, member: str) -> Path:
        """The private key of ``member``: ``dir/<member>.key``."""
        return self.dir / f"{member}.key"


def parse_tls(table: Any, base: Path) -> TlsConfig | None:
    """The ``[tls]`` table (``None`` when absent); relative paths are relative to ``base``. Raises ``ValueError``.

    The files need not exist yet (``docraft certs`` may make them from this
    very file); a process checks its own when it starts (``server_context``).
    """
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ValueError("[tls] must be a table")
    unknown = sorted(set(table) - {"dir", "ca"})
    if unknown:
        raise ValueError(f"[tls] has no setting {unknown[0]!r} (known: ca, dir)")
    directory = _path(table.get("dir"), "dir", base)
    return TlsConfig(directory, _path(table["ca"], "ca", base) if "ca" in table else directory / f"{CA_NAME}.pem")


def _path(value: Any, name: str, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"[tls] {name} must be a path, got {value!r}")
    path = Path(value)
    return path if path.is_absolute() else base / path


def server_context(tls: TlsConfig, member: str) -> ssl.SSLContext:
    """The SSL context of ``member``'s HTTP listener: TLS 1.2 or later, with its certificate and key.

    Raises ``TlsUnusable`` naming the file that is missing or unusable.
    """
    certificate, key = tls.certificate(member), tls.key(member)
    _require(certificate, f"{member}'s certificate")
    _require(key, f"{member}'s key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certificate, key)
    except ssl.SSLError as exc:
        raise TlsUnusable(f"[tls]: {certificate} and {key} are not a certificate and its key: {exc}") from None
    return context


def client_context(ca: Path) -> ssl.SSLContext:
    """An SSL context for a client (``urllib``, ``http.client``) that trusts servers certified by ``ca`` only.

    It checks host names. Raises ``TlsUnusable`` when ``ca`` is missing or not a certificate.
    """
    _require(ca, "the CA certificate")
    try:
        return ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        raise TlsUnusable(f"[tls]: {ca} is not a CA certificate: {exc}") from None


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise TlsUnusable(f"[tls]: {what} is missing: no file {path} (docraft certs makes them)")
