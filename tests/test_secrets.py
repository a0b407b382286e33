"""Secrets at rest and where processes listen: the cluster secret's strength is checked on load, ``docraft up``
writes its files for its owner only, and Raft and HTTP bind the configured (listen) address, not every interface."""

from __future__ import annotations

import base64
import ipaddress
import secrets
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.cluster_secret import new_secret, secret_problem
from node.config import ClusterConfig, ConfigError, parse_config, render_config
from node.launcher import ADMIN_TOKEN_NAME, CONFIG_NAME, Layout, prepare
from tests.harness import free_ports, wait_for


def config_with_secret(secret: str) -> None:
    text = render_config(secret, "examples.people", [("s0", [("r0", "127.0.0.1:1", "127.0.0.1:2", ".")])], [])
    parse_config(tomllib.loads(text), Path("/tmp/cluster.toml"))


WEAK = [
    ("the README's placeholder", "…48 hex characters…", "looks like a placeholder or a typed phrase"),
    ("a constant for tests", "test-secret-" + "x" * 16, "it contains 'secret'"),
    ("a changeme", "changeme-" + secrets.token_hex(16), "it contains 'change'"),
    ("too short", secrets.token_hex(15), "is 30 characters long, it needs at least 32"),
    ("decimal digits", "".join(secrets.choice("0123456789") for _ in range(36)), "carries at most 120 bits"),
    ("one character", "x" * 48, "uses only 1 different characters where a random one uses about"),
    ("two characters", "ab" * 24, "uses only 2 different characters"),
    ("a phrase", "correct-horse-battery-staple-correct-horse", "uses only 13 different characters"),
    ("a repeated word", "deadbeef" * 6, "uses only 5 different characters"),
    ("a sequence", "0123456789abcdef" * 3, "repeated or consecutive neighbours"),
    ("the alphabet", "abcdefghijklmnopqrstuvwxyzabcdefgh", "repeated or consecutive neighbours"),
    ("not ASCII", "é" * 8 + secrets.token_hex(16), "holds characters other than printable ASCII"),
]


@pytest.mark.parametrize(("what", "secret", "problem"), WEAK, ids=[w[0] for w in WEAK])
def test_a_weak_cluster_secret_is_refused_naming_the_problem(what: str, secret: str, problem: str) -> None:
    with pytest.raises(ConfigError) as refused:
        config_with_secret(secret)
    message = str(refused.value)
    assert message.startswith("the cluster secret ") and problem in message, message
    assert "openssl rand -hex 24" in message  # and how to make a good one


GENERATORS = {
    "new_secret": new_secret,
    "token_hex(16)": lambda: secrets.token_hex(16),
    "token_urlsafe(24)": lambda: secrets.token_urlsafe(24),
    "base64 of 24 bytes": lambda: base64.b64encode(secrets.token_bytes(24)).decode(),
    "base32 of 20 bytes": lambda: base64.b32encode(secrets.token_bytes(20)).decode(),
    "upper-case hex": lambda: secrets.token_hex(16).upper(),
    "40 decimal digits": lambda: "".join(secrets.choice("0123456789") for _ in range(40)),
}


@pytest.mark.parametrize("generate", GENERATORS.values(), ids=list(GENERATORS))
def test_secrets_from_a_generator_pass(generate: object) -> None:
    for _ in range(2000):
        secret = generate()  # type: ignore[operator]
        assert secret_problem(secret) is None, secret
    config_with_secret(generate())  # type: ignore[operator]


def test_new_secrets_are_fresh_192_bit_hex() -> None:
    made = {new_secret() for _ in range(100)}
    assert len(made) == 100
    assert all(len(s) == 48 and int(s, 16) >= 0 for s in made)


# -- docraft up's files --------------------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_docraft_up_keeps_its_secrets_private_and_binds_loopback_only(tmp_path: Path) -> None:
    data = tmp_path / "docraft-data"
    data.mkdir(mode=0o755)
    config = prepare(data, "examples.people", Layout(), tls=True)
    assert mode(data) == 0o700
    assert mode(data / CONFIG_NAME) == 0o600 and mode(data / ADMIN_TOKEN_NAME) == 0o600
    assert config.ca == data / "tls" / "ca.pem" and config.ca.is_file()
    assert mode(data / "tls") == 0o700
    keys = sorted(p.name for p in (data / "tls").glob("*.key"))
    members = [r.id for s in config.shards for r in s.replicas] + ["d0"]
    assert keys == sorted(f"{m}.key" for m in ["ca", *members])
    assert {mode(data / "tls" / k) for k in keys} == {0o600}
    assert secret_problem(config.secret) is None
    addresses = [a for s in config.shards for r in s.replicas for a in (r.raft, r.http, r.raft_listen, r.http_listen)]
    addresses += [a for d in config.dispatchers for a in (d.http, d.http_listen)]
    assert {a.rsplit(":", 1)[0] for a in addresses} == {"127.0.0.1"}
    again = prepare(data, "examples.people", Layout(), tls=True)  # a second start reuses all of it
    assert (again.secret, again.ca) == (config.secret, config.ca)


def test_docraft_up_tls_adds_tls_to_a_cluster_made_without(tmp_path: Path) -> None:
    data = tmp_path / "docraft-data"
    plain = prepare(data, "examples.people", Layout())
    assert plain.tls is None and not (data / "tls").exists()
    config = prepare(data, "examples.people", Layout(), tls=True)
    assert config.secret == plain.secret and config.ca == data / "tls" / "ca.pem" and config.ca.is_file()
    assert mode(data / CONFIG_NAME) == 0o600


# -- where Raft and HTTP listen ------------------------------------------------------------------


def test_listen_addresses_default_to_the_advertised_ones_and_are_checked() -> None:
    def parse(extra: str) -> ClusterConfig:
        text = render_config(new_secret(), "examples.people", [("s0", [("r0", "h:1", "h:2", ".")])], [("d0", "h:3")])
        return parse_config(tomllib.loads(text.replace('data_dir = "."\n', f'data_dir = "."\n{extra}')), Path("/c"))

    plain = parse("")
    assert (plain.replica("r0").raft_listen, plain.replica("r0").http_listen) == ("h:1", "h:2")
    assert plain.dispatcher("d0").http_listen == "h:3"
    moved = parse('raft_listen = "0.0.0.0:7000"\nhttp_listen = "10.1.2.3:8000"\n')
    assert (moved.replica("r0").raft, moved.replica("r0").raft_listen) == ("h:1", "0.0.0.0:7000")
    assert (moved.replica("r0").http_url, moved.replica("r0").http_listen) == ("http://h:2", "10.1.2.3:8000")
    with pytest.raises(ConfigError, match="shard s0 replicas\\[0\\] raft_listen must be a 'host:port' string"):
        parse('raft_listen = "7000"\n')


def listening(port: int) -> set[str]:
    """The local addresses of the sockets listening on TCP ``port`` in this network namespace (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)  # the kernel prints each 32-bit word in host order
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(str(ipaddress.ip_address(words if sys.byteorder == "little" else raw)))
    return found


@pytest.fixture
def two_replicas(tmp_path: Path) -> Iterator[tuple[list[int], Path]]:
    """Two one-replica shards: s0r0 listens where it is advertised, s1r0 on 127.0.0.2 while advertised on
    127.0.0.1. Yields their raft and http ports (s0r0's, then s1r0's) and the cluster file."""
    ports = free_ports(4)
    text = render_config(
        new_secret(),
        "examples.people",
        [
            ("s0", [("s0r0", f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}", "s0r0")]),
            ("s1", [("s1r0", f"127.0.0.1:{ports[2]}", f"127.0.0.1:{ports[3]}", "s1r0")]),
        ],
        [],
    )
    listen = f'raft_listen = "127.0.0.2:{ports[2]}"\nhttp_listen = "127.0.0.2:{ports[3]}"\n'
    text = text.replace('data_dir = "s1r0"\n', f'data_dir = "s1r0"\n{listen}')
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    processes = []
    try:
        for replica in ("s0r0", "s1r0"):
            command = [sys.executable, "-m", "node.cli", "node", "--config", str(path), "--replica", replica]
            with open(tmp_path / f"{replica}.log", "wb") as log:
                processes.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        yield ports, path
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.mark.cluster
def test_raft_and_http_bind_the_listen_address_only(two_replicas: tuple[list[int], Path]) -> None:
    ports, path = two_replicas
    expected = {ports[0]: {"127.0.0.1"}, ports[1]: {"127.0.0.1"}, ports[2]: {"127.0.0.2"}, ports[3]: {"127.0.0.2"}}

    def bound() -> dict[int, set[str]] | None:
        found = {port: listening(port) for port in ports}
        return found if all(found.values()) else None

    try:
        found = wait_for(bound, 20, "all four ports listening")
    except AssertionError:
        print("\n".join(p.read_text() for p in path.parent.glob("*.log")))
        raise
    assert found == expected  # never 0.0.0.0: each binds its listen address
    for replica in ("s0r0", "s1r0"):
        assert mode(path.parent / replica) == 0o700
