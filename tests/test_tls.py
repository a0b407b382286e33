"""TLS (``[tls]``, ``node.tls``, ``docraft certs``): certificates for each member's hosts, HTTPS on every
listener of a real cluster, plain HTTP refused, and clients (``http_json``, the loader, ``ShardClient``)
that trust the cluster's CA and nothing else."""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import ssl
import stat
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from examples.people.app import User
from models.errors import ShardUnavailable
from node.admin import http_json
from node.cli import main as docraft
from node.cluster_secret import new_secret
from node.config import ClusterConfig, ConfigError, load_config
from node.loader import load_csv
from node.shard_client import ShardClient
from node.tls import TlsConfig, TlsUnusable, server_context
from tests.harness import Cluster, running, wait_for

CLUSTER_FILE = """
secret = "{secret}"
[[shards]]
id = "s0"
slots = [0, 16383]
[[shards.replicas]]
id = "s0r0"
raft = "127.0.0.1:7100"
http = "127.0.0.1:8100"
data_dir = "s0r0"
[[shards.replicas]]
id = "s0r1"
raft = "127.0.0.1:7101"
http = "127.0.0.1:8101"
http_listen = "10.0.0.5:8101"
data_dir = "s0r1"
[[dispatchers]]
id = "d0"
http = "db.example.com:8000"
http_listen = "0.0.0.0:8000"
"""


def cluster_file(folder: Path, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cluster.toml"
    path.write_text(CLUSTER_FILE.format(secret=new_secret()) + extra)
    return path


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(name.value) for name in san]


# -- docraft certs ------------------------------------------------------------------------------


def test_docraft_certs_certifies_each_member_for_the_hosts_clients_reach_it_at(tmp_path: Path) -> None:
    config = cluster_file(tmp_path)
    out = tmp_path / "tls"
    assert docraft(["certs", "--config", str(config), "--out", str(out)]) == 0
    ca = certificate(out / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    expected = {"s0r0": ["127.0.0.1"], "s0r1": ["127.0.0.1", "10.0.0.5"], "d0": ["db.example.com"]}
    for member, hosts in expected.items():
        cert = certificate(out / f"{member}.pem")
        assert names(cert) == hosts, member  # a listen address of every interface (0.0.0.0) names no host
        assert cert.issuer == ca.subject
        cert.verify_directly_issued_by(ca)  # raises unless the CA's key signed it
        key = load_pem_private_key((out / f"{member}.key").read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key().public_numbers() == cert.public_key().public_numbers()  # type: ignore[union-attr]
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = certificate(out / "s0r1.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.0.0.5"),
    ]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.glob("*.key")} == dict.fromkeys(
        ["ca.key", "s0r0.key", "s0r1.key", "d0.key"], 0o600
    )


def test_docraft_certs_overwrites_nothing_and_defaults_to_the_tls_dir(tmp_path: Path) -> None:
    config = cluster_file(tmp_path, '[tls]\ndir = "certs"\n')
    assert docraft(["certs", "--config", str(config)]) == 0
    made = {p.name: p.read_bytes() for p in (tmp_path / "certs").iterdir()}
    assert sorted(made) == sorted(f"{n}.{s}" for n in ("ca", "s0r0", "s0r1", "d0") for s in ("pem", "key"))
    assert docraft(["certs", "--config", str(config)]) == 1
    assert {p.name: p.read_bytes() for p in (tmp_path / "certs").iterdir()} == made
    assert docraft(["certs", "--config", str(cluster_file(tmp_path / "plain"))]) == 2  # no --out, no [tls]


def test_tls_settings_are_checked_and_paths_resolved(tmp_path: Path) -> None:
    config = load_config(cluster_file(tmp_path, '[tls]\ndir = "tls"\n'))
    assert config.tls == TlsConfig(tmp_path / "tls", tmp_path / "tls" / "ca.pem")
    assert config.replica("s0r0").http_url == "https://127.0.0.1:8100"
    assert config.dispatcher("d0").http_url == "https://db.example.com:8000"
    assert load_config(cluster_file(tmp_path, '[tls]\ndir = "/etc/d"\nca = "ca.crt"\n')).ca == tmp_path / "ca.crt"
    assert load_config(cluster_file(tmp_path)).replica("s0r0").http_url == "http://127.0.0.1:8100"
    with pytest.raises(ConfigError, match="tls\\] has no setting 'cert'"):
        load_config(cluster_file(tmp_path, '[tls]\ndir = "tls"\ncert = "x"\n'))
    with pytest.raises(ConfigError, match="tls\\] dir must be a path"):
        load_config(cluster_file(tmp_path, "[tls]\n"))
    renamed = cluster_file(tmp_path)
    renamed.write_text(renamed.read_text().replace('id = "d0"', 'id = "ca"') + '[tls]\ndir = "tls"\n')
    with pytest.raises(ConfigError, match="no process may be called 'ca'"):
        load_config(renamed)


def test_a_member_without_its_certificate_names_the_missing_file(tmp_path: Path) -> None:
    tls = TlsConfig(tmp_path, tmp_path / "ca.pem")
    with pytest.raises(TlsUnusable, match=f"s0r0's certificate is missing: no file {tmp_path / 's0r0.pem'}"):
        server_context(tls, "s0r0")
    (tmp_path / "s0r0.pem").write_text("not a certificate")
    (tmp_path / "s0r0.key").write_text("not a key")
    with pytest.raises(TlsUnusable, match="are not a certificate and its key"):
        server_context(tls, "s0r0")


# -- a cluster serving HTTPS ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One shard of three replicas and a dispatcher with ``[tls]``, its certificates made by ``docraft certs``."""
    with running(
        Cluster(tmp_path_factory.mktemp("tls"), shards=1, replicas=3, sections={"tls": {"dir": "tls"}})
    ) as cluster:
        yield cluster


def urls(cluster: Cluster) -> list[str]:
    """The dispatcher's and every replica's base URL."""
    return [cluster.url] + [cluster.replica_url(r) for r in cluster.replica_ids("s0")]


def ca_of(cluster: Cluster) -> Path:
    ca = cluster.processes.config.ca
    assert ca is not None
    return ca


def verification_error(error: urllib.error.URLError) -> ssl.SSLCertVerificationError:
    assert isinstance(error.reason, ssl.SSLCertVerificationError), error
    return error.reason


@pytest.mark.cluster
def test_every_listener_serves_https_to_a_client_with_the_ca_and_refuses_plain_http(tls_cluster: Cluster) -> None:
    for base in urls(tls_cluster):
        assert base.startswith("https://127.0.0.1:")
        status, body = http_json("GET", f"{base}/get_user?id=1", ca=ca_of(tls_cluster))
        assert status == 200 and body["items"] == [], (base, body)
        with pytest.raises(OSError) as refused:
            http_json("GET", base.replace("https://", "http://") + "/get_user?id=1", timeout=5)
        assert not isinstance(refused.value, TimeoutError), base  # the handshake failed; no answer came


@pytest.mark.cluster
def test_a_client_without_the_cluster_ca_cannot_verify_its_servers(tls_cluster: Cluster, tmp_path: Path) -> None:
    other = tmp_path / "other"
    assert docraft(["certs", "--config", str(tls_cluster.processes.config.path), "--out", str(other)]) == 0
    for base in urls(tls_cluster):
        url = f"{base}/get_user?id=1"
        with pytest.raises(urllib.error.URLError) as system_cas:
            http_json("GET", url)
        assert verification_error(system_cas.value).verify_message == "unable to get local issuer certificate"
        with pytest.raises(urllib.error.URLError) as another_ca:
            http_json("GET", url, ca=other / "ca.pem")  # a certificate for the same host, from another CA
        assert "certificate" in verification_error(another_ca.value).verify_message
        with pytest.raises(urllib.error.URLError) as wrong_host:
            http_json("GET", url.replace("127.0.0.1", "localhost"), ca=ca_of(tls_cluster))
        assert "mismatch" in verification_error(wrong_host.value).verify_message  # certified for 127.0.0.1 only


@pytest.mark.cluster
def test_writes_through_any_member_replicate_over_https(tls_cluster: Cluster) -> None:
    """The dispatcher's and each replica's router reach the leader over HTTPS, and Raft replicates the writes."""
    ids = []
    assert all(base.startswith("https://") for base in urls(tls_cluster))
    for n, base in enumerate(urls(tls_cluster)):
        uid = 70_000 + n
        user = {"id": uid, "first_name": "T", "last_name": "L", "country": "Tlsland", "city": "X"}
        code, body = tls_cluster.post("/insert_user", user, base=base)
        assert code == 200, (base, body)
        ids.append(uid)
    for replica in tls_cluster.replica_ids("s0"):
        base = tls_cluster.replica_url(replica)

        def stored(replica_base: str = base) -> bool:
            code, body = tls_cluster.get("/get_user", base=replica_base, country="Tlsland", consistency="stale")
            return code == 200 and sorted(u["id"] for u in body["items"]) == ids

        wait_for(stored, 10, f"{ids} on {replica}")


@pytest.mark.cluster
def test_internal_clients_trust_only_the_cluster_ca(tls_cluster: Cluster, tmp_path: Path) -> None:
    config = tls_cluster.processes.config
    assert docraft(["certs", "--config", str(config.path), "--out", str(tmp_path / "other")]) == 0
    assert config.tls is not None
    stranger = dataclasses.replace(config, tls=dataclasses.replace(config.tls, ca=tmp_path / "other" / "ca.pem"))
    replica = config.replica("s0r0")

    async def ask(asking: ClusterConfig) -> object:
        client = ShardClient(asking)
        try:
            return await client.status(replica, timeout=5.0)
        finally:
            client.http.close()

    status = asyncio.run(ask(config))
    assert isinstance(status, dict) and status["id"] == "s0r0"
    with pytest.raises(ShardUnavailable, match=r"unreachable: .*(SSL|certificate)"):
        asyncio.run(ask(stranger))


@pytest.mark.cluster
def test_the_loader_sends_over_https_to_a_cluster_whose_ca_it_is_given(tls_cluster: Cluster, tmp_path: Path) -> None:
    rows = tmp_path / "users.csv"
    rows.write_text("id,first_name,last_name,country,address,city\n80001,A,Loaded,X,,Y\n80002,B,Loaded,X,,Y\n")
    report = load_csv(rows, User, tls_cluster.url, progress=False, ca=ca_of(tls_cluster))
    assert (report.stored, report.rejected) == (2, [])
    with pytest.raises(OSError, match=f"cannot reach the cluster at {tls_cluster.url}: .*CERTIFICATE_VERIFY_FAILED"):
        load_csv(rows, User, tls_cluster.url, progress=False)  # without the CA: one error, no row counted
