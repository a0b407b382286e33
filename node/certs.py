"""``docraft certs``: a CA and a certificate for every replica and dispatcher of a cluster file.

Meant for tests and small deployments; a larger one would use its own CA.
In the output directory (mode 0700), as ``[tls] dir`` expects them
(``node.tls``): ``ca.pem``, the CA certificate every client of the cluster
needs; ``ca.key``, the CA's key, which can certify any server to those clients
(keep it offline, or delete it and make a new CA to add members); and for each
member ``<id>.pem`` and ``<id>.key``, its certificate for the host of its
``http`` address (and of ``http_listen``, when that is a particular one). Keys
are ECDSA P-256, written 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from node.config import ClusterConfig
from node.private_files import private_dir, write_secret
from node.tls import CA_NAME

VALID_DAYS = 825  # members' certificates; the CA's lasts ten times as long
CLOCK_SKEW = datetime.timedelta(minutes=5)  # certificates are valid from a little before they were made
WILDCARD_HOSTS = ("0.0.0.0", "::")


def member_hosts(config: ClusterConfig) -> dict[str, list[str]]:
    """Each replica and dispatcher of ``config`` by id, with the host names its certificate names."""
    listeners = [(r.id, r.http, r.http_listen) for s in config.shards for r in s.replicas]
    listeners += [(d.id, d.http, d.http_listen) for d in config.dispatchers]
    hosts = {}
    for member, advertised, listen in listeners:
        names = [advertised.rsplit(":", 1)[0], listen.rsplit(":", 1)[0]]
        hosts[member] = [h for i, h in enumerate(names) if h not in WILDCARD_HOSTS and h not in names[:i]]
    return hosts


def make_certificates(config: ClusterConfig, out: Path, days: int = VALID_DAYS) -> list[Path]:
    """Write a new CA and a certificate and key for every member of ``config`` into ``out``; the paths written.

    Raises ``FileExistsError`` naming the files already there (nothing is
    overwritten, nothing written), ``ValueError`` when ``days`` is not positive.
    """
    if days <= 0:
        raise ValueError(f"certificates must be valid for at least one day, not {days}")
    hosts = member_hosts(config)
    targets = [out / f"{name}{suffix}" for name in (CA_NAME, *hosts) for suffix in (".pem", ".key")]
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise FileExistsError(f"not overwriting {', '.join(existing)}: remove them to make a new CA")
    private_dir(out)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "docraft"), _common_name("docraft cluster CA")])
    ca_certificate = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, 10 * days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(certifies=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out, CA_NAME, ca_certificate, ca_key)
    ca_key_id = ca_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    for member, member_names in hosts.items():
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "docraft"), _common_name(member)])
        certificate = (
            _builder(subject, ca_name, key.public_key(), now, days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(certifies=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_alternative_name(h) for h in member_names]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(out, member, certificate, key)
    return targets


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, now: datetime.datetime, days: int
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _common_name(text: str) -> x509.NameAttribute[str]:
    return x509.NameAttribute(NameOID.COMMON_NAME, text[:64])  # X.509's limit for a common name


def _key_usage(certifies: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not certifies,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certifies,
        crl_sign=certifies,
        encipher_only=False,
        decipher_only=False,
    )


def _alternative_name(host: str) -> x509.GeneralName:
    """An IP address entry for an address, a DNS name entry for a name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(out: Path, name: str, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    private_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_secret(out / f"{name}.key", private_key)
    (out / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
