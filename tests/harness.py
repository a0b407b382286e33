"""Real clusters for tests: replica and dispatcher processes on loopback.

``Cluster`` writes a cluster file with free ports, starts every process with
``node.launcher.LocalCluster`` (the same code ``docraft up`` uses), and always
stops them in ``close``. Waiting is done on conditions with deadlines.
``http`` calls a running cluster's internal and admin routes as a cluster
member would (signed with the cluster's key), and its client routes anonymously.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Self, TypeVar

import pytest
import ujson

from bench.netns import NetworkUnavailable, TestNetwork, why_unavailable
from bench.ports import free_ports as free_ports  # below the ephemeral range: safe across restarts
from node.admin import http_json
from node.cluster_secret import new_secret
from node.config import ClusterConfig, load_config, render_config
from node.launcher import LocalCluster
from node.private_files import write_secret
from node.signing import internal_key

T = TypeVar("T")

FAST_RAFT = {"election_min": 0.3, "election_max": 0.7, "leader_fallback": 1.0, "heartbeat": 0.05}
# Tests call client routes anonymously, and mutations by GET as the original notes do: a cluster file for them
# grants anonymous clients what a writer may do, and allows mutations by GET.
ANONYMOUS_CLIENTS: dict[str, dict[str, Any]] = {
    "auth": {"anonymous": ["read", "write", "bulk", "status"]},
    "http": {"mutations_by_get": True},
}


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Call ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    end = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < end:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, KeyError) as exc:
            last_error = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error})")


class JSONReplyHandler(BaseHTTPRequestHandler):
    """The handler of a stub HTTP server a test runs: ``reply`` answers with a JSON body; it logs nothing."""

    def reply(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = ujson.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: tests assert on what the stub received."""


# The internal key, and with [tls] the CA, of every cluster this process runs, by member address ("host:port").
_MEMBER_KEYS: dict[str, bytes] = {}
_MEMBER_CAS: dict[str, Path] = {}
MEMBER_ROUTES = ("/_shard/", "/_admin/")


def member_addresses(config: ClusterConfig) -> list[str]:
    return [r.http for s in config.shards for r in s.replicas] + [d.http for d in config.dispatchers]


def member_key(url: str) -> bytes | None:
    """The key a cluster member signs a call to ``url`` with: that of the running ``Cluster`` it addresses,
    for its internal and admin routes (``/_shard/...``, ``/_admin/...``); ``None`` for any other call."""
    parts = urllib.parse.urlsplit(url)
    return _MEMBER_KEYS.get(parts.netloc) if parts.path.startswith(MEMBER_ROUTES) else None


def member_ca(url: str) -> Path | None:
    """The CA of the running ``Cluster`` that ``url`` addresses, if it serves HTTPS."""
    return _MEMBER_CAS.get(urllib.parse.urlsplit(url).netloc)


def http(
    method: str, url: str, body: Any = None, timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    """One HTTP call (with ``headers``, if any); returns (status, decoded JSON body) for any status.

    Calls to a running ``Cluster``'s internal and admin routes are signed as a
    cluster member's (``member_key``); client routes are called anonymously.
    An HTTPS cluster's certificates are checked against its CA (``member_ca``).
    """
    status, decoded = http_json(method, url, body, timeout, key=member_key(url), headers=headers, ca=member_ca(url))
    return status, decoded


def write_cluster_file(
    root: Path,
    layout: list[tuple[str, list[tuple[str, str, str, str]]]],
    dispatcher: str,
    sections: dict[str, dict[str, Any]],
) -> Path:
    """Write ``root/cluster.toml`` (0600) for the example app, with a fresh secret and dispatcher ``d0``."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "cluster.toml"
    write_secret(path, render_config(new_secret(), "examples.people", layout, [("d0", dispatcher)], sections))
    return path


def make_certificates(config: ClusterConfig) -> None:
    """Make the certificates of ``config``'s ``[tls] dir`` as an operator would, with ``docraft certs``."""
    command = [sys.executable, "-m", "node.cli", "certs", "--config", str(config.path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"docraft certs failed:\n{done.stdout}{done.stderr}"


class Cluster:
    def __init__(
        self,
        root: Path,
        shards: int = 2,
        replicas: int = 3,
        raft: dict[str, float] | None = None,
        sections: dict[str, dict[str, Any]] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        """``sections`` adds cluster-file tables (``integrity``, ``alerts``, ``auth`` instead of
        ``ANONYMOUS_CLIENTS``, ``tls``: its certificates are then made with ``docraft certs`` on the
        first start); replicas get ``extra_args``."""
        self.root = root
        self.shape = (shards, replicas)
        self.sections = {"raft": {**FAST_RAFT, **(raft or {})}, **ANONYMOUS_CLIENTS, **(sections or {})}
        self.extra_args = extra_args
        self.prefixes: dict[str, list[str]] = {}
        self.local: LocalCluster | None = None

    @property
    def processes(self) -> LocalCluster:
        assert self.local is not None, "cluster not started"
        return self.local

    def start(self, attempts: int = 3) -> Self:
        """Start a new cluster (its replicas bootstrap their groups: ``LocalCluster.start_all``); retry with
        new ports, and empty data directories, when a process did not come up."""
        for attempt in range(attempts):
            if self.local is not None:
                for shard in self.local.config.shards:
                    for replica in shard.replicas:
                        shutil.rmtree(replica.data_dir, ignore_errors=True)
            self._write_config()
            config = load_config(self.root / "cluster.toml")
            if config.tls is not None and not config.tls.ca.exists():
                make_certificates(config)
            self._forget_keys()
            _MEMBER_KEYS.update(dict.fromkeys(member_addresses(config), internal_key(config.secret)))
            if config.ca is not None:
                _MEMBER_CAS.update(dict.fromkeys(member_addresses(config), config.ca))
            self.local = LocalCluster(config, config.app, self.root / "logs", self.extra_args, self.prefixes)
            try:
                self.local.start_all()
                self.local.wait_ready(timeout=30)
                return self
            except TimeoutError:
                self.local.stop()
                if attempt == attempts - 1:
                    raise AssertionError(f"cluster did not start:\n{self.logs()}") from None
        return self

    def _write_config(self) -> None:
        shards, replicas = self.shape
        ports = free_ports(2 * shards * replicas + 1)
        layout = []
        for s in range(shards):
            members = []
            for r in range(replicas):
                n = 2 * (s * replicas + r)
                rid = f"s{s}r{r}"
                members.append((rid, f"127.0.0.1:{ports[n]}", f"127.0.0.1:{ports[n + 1]}", rid))
            layout.append((f"s{s}", members))
        write_cluster_file(self.root, layout, f"127.0.0.1:{ports[-1]}", self.sections)

    # -- addresses --------------------------------------------------------------

    @property
    def url(self) -> str:
        return self.processes.config.dispatcher(None).http_url

    def replica_url(self, replica_id: str) -> str:
        return self.processes.config.replica(replica_id).http_url

    def replica_ids(self, shard_id: str) -> list[str]:
        return [r.id for r in self.processes.config.shard(shard_id).replicas]

    # -- calls ------------------------------------------------------------------

    def get(self, path: str, base: str | None = None, **params: Any) -> tuple[int, dict[str, Any]]:
        query = urllib.parse.urlencode(params)
        return http("GET", f"{base or self.url}{path}{'?' + query if query else ''}")

    def post(self, path: str, body: Any, base: str | None = None) -> tuple[int, dict[str, Any]]:
        return http("POST", f"{base or self.url}{path}", body)

    def status(self) -> list[dict[str, Any]]:
        code, body = self.get("/_admin/cluster")
        assert code == 200, body
        shards: list[dict[str, Any]] = body["shards"]
        return shards

    def shard_status(self, replica_id: str, timeout: float = 2.0) -> dict[str, Any]:
        """``GET /_shard/status`` asked of ``replica_id`` itself. Raises ``OSError`` when it does not answer."""
        code, body = http("GET", f"{self.replica_url(replica_id)}/_shard/status", timeout=timeout)
        assert code == 200, body
        return body

    def leader_of(self, shard_id: str, timeout: float = 10.0, other_than: str | None = None) -> str:
        def find() -> str | None:
            for shard in self.status():
                if shard["id"] == shard_id and shard["leader"] not in (None, other_than):
                    leader: str = shard["leader"]
                    return leader
            return None

        return wait_for(find, timeout, f"a leader of {shard_id} other than {other_than}")

    # -- growing ----------------------------------------------------------------

    def add_shard(self, shard_id: str, replicas: int = 3, timeout: float = 30.0) -> None:
        """Add shard ``shard_id`` holding no slots (``slots = []``) to the running cluster's file, start its
        replicas (with ``--bootstrap``: a new group) and wait until one leads it, as an operator adding
        capacity does. The running processes keep the file they started with; ``processes.config`` is the
        new one."""
        path = self.processes.config.path
        ports = free_ports(2 * replicas)
        lines = ["", "[[shards]]", f'id = "{shard_id}"', "slots = []", ""]
        names = [f"{shard_id}r{r}" for r in range(replicas)]
        for r, name in enumerate(names):
            lines += [
                "[[shards.replicas]]",
                f'id = "{name}"',
                f'raft = "127.0.0.1:{ports[2 * r]}"',
                f'http = "127.0.0.1:{ports[2 * r + 1]}"',
                f'data_dir = "{name}"',
                "",
            ]
        write_secret(path, path.read_text(encoding="utf-8") + "\n".join(lines))
        config = load_config(path)
        _MEMBER_KEYS.update(dict.fromkeys(member_addresses(config), internal_key(config.secret)))
        self.processes.config = config
        for name in names:
            self.processes.start_replica(name, bootstrap=True)  # a new group

        def leads() -> bool:
            for name in names:
                with contextlib.suppress(OSError, AssertionError):
                    if self.shard_status(name, timeout=1.0)["role"] == "leader":
                        return True
            return False

        wait_for(leads, timeout, f"a leader of the new shard {shard_id}")

    # -- faults -----------------------------------------------------------------

    def kill(self, replica_id: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.processes[replica_id]
        os.kill(process.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(10)

    def restart(self, replica_id: str) -> None:
        self.processes.start_replica(replica_id)

    # -- growing a group ----------------------------------------------------------

    def add_replica_entry(self, shard_id: str) -> str:
        """Add a replica to ``shard_id``'s list in the cluster file, as an operator would; its id.

        The running processes keep the file they started with; the returned replica is not started
        (``restart`` starts it) and is no voter until ``docraft replica add``.
        """
        config = self.processes.config
        taken = {r.id for s in config.shards for r in s.replicas}
        replica_id = next(f"{shard_id}r{n}" for n in itertools.count() if f"{shard_id}r{n}" not in taken)
        raft, http_port = free_ports(2)
        block = [
            "[[shards.replicas]]",
            f'id = "{replica_id}"',
            f'raft = "127.0.0.1:{raft}"',
            f'http = "127.0.0.1:{http_port}"',
            f'data_dir = "{replica_id}"',
            "",
        ]
        write_secret(config.path, _with_replica(config.path.read_text(encoding="utf-8"), shard_id, block))
        self.processes.config = load_config(config.path)
        _MEMBER_KEYS.update(dict.fromkeys(member_addresses(self.processes.config), internal_key(config.secret)))
        return replica_id

    def docraft(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``docraft ARGS --config FILE`` run to its end as an operator runs it (killed past ``timeout``,
        which raises): its exit code, output and errors."""
        return subprocess.run(self._docraft_command(args), capture_output=True, text=True, timeout=timeout)

    def docraft_process(self, *args: str, log: Path) -> subprocess.Popen[str]:
        """``docraft ARGS --config FILE`` started as its own process, writing to ``log``, for a test to
        interrupt; the test stops it."""
        with open(log, "w") as out:
            return subprocess.Popen(self._docraft_command(args), stdout=out, stderr=subprocess.STDOUT, text=True)

    def _docraft_command(self, args: tuple[str, ...]) -> list[str]:
        return [sys.executable, "-m", "node.cli", *args, "--config", str(self.processes.config.path)]

    def logs(self) -> str:
        parts = []
        for path in sorted((self.root / "logs").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-30:]
            parts.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(parts)

    def close(self) -> None:
        if self.local is not None:
            for process in self.local.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
            self.local.stop()
            self._forget_keys()

    def _forget_keys(self) -> None:
        """Sign and trust nothing more for this cluster's addresses (other processes may take them)."""
        if self.local is not None:
            for address in member_addresses(self.local.config):
                _MEMBER_KEYS.pop(address, None)
                _MEMBER_CAS.pop(address, None)


def _with_replica(text: str, shard_id: str, block: list[str]) -> str:
    """Cluster-file ``text`` with the ``[[shards.replicas]]`` ``block`` at the end of shard ``shard_id``'s table."""
    lines = text.splitlines()
    start = next(
        i for i, line in enumerate(lines) if line == f'id = "{shard_id}"' and lines[i - 1].strip() == "[[shards]]"
    )
    end = next(
        (
            i
            for i in range(start + 1, len(lines))
            if lines[i].startswith("[") and lines[i].strip() != "[[shards.replicas]]"
        ),
        len(lines),
    )
    return "\n".join([*lines[:end], *block, *lines[end:]]) + "\n"


class Writers:
    """Threads inserting users with unique ids through ``url`` until ``stop``; ``acked`` holds every id answered 200.

    Each thread writes ids ``base + thread + k * count``; a write whose answer
    was lost or not 200 is simply not in ``acked`` (it may or may not be stored).
    With ``retry``, each write is sent under an ``Idempotency-Key`` of its own,
    again and again until it is answered 200 (or the writers stop); ``failures``
    then counts the attempts that were not.
    """

    def __init__(self, url: str, count: int = 12, base: int = 1_000_000, retry: bool = False) -> None:
        self.url = url
        self.retry = retry
        self.acked: set[int] = set()
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(base + n, count), daemon=True) for n in range(count)]

    def _run(self, first: int, step: int) -> None:
        uid = first
        while not self._stop.is_set():
            doc = {"id": uid, "first_name": "W", "last_name": str(uid), "country": "Writers", "city": "X"}
            headers = {"Idempotency-Key": f"writer-{uid}"} if self.retry else None
            while not self._stop.is_set():
                try:
                    code, _ = http("POST", f"{self.url}/insert_user", doc, timeout=15, headers=headers)
                except OSError:
                    code = 0
                with self._lock:
                    if code == 200:
                        self.acked.add(uid)
                    else:
                        self.failures += 1
                if code == 200 or not self.retry:
                    break
            uid += step

    def __enter__(self) -> Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self) -> int:
        with self._lock:
            return len(self.acked)

    def wait_for_more(self, more: int, timeout: float) -> None:
        """Wait until ``more`` writes beyond the count now have been acknowledged."""
        target = self.count() + more
        wait_for(lambda: self.count() >= target, timeout, f"{more} more acknowledged writes")

    def stop(self) -> set[int]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        return set(self.acked)


class PartitionedCluster(Cluster):
    """A ``Cluster`` whose replicas each run in a network namespace of their own, so links can be cut.

    As in ``bench.nemesis``: ``network`` is a ``bench.netns.TestNetwork`` with
    one host per replica (``network.isolate(replica_id)``, ``network.heal()``);
    a replica listens on its host's address, Raft on port 7000 and HTTP on
    8000. The dispatcher and the test stay in the root namespace and reach every
    replica, cut off or not. Needs root, ``ip`` and ``iptables``; ``start``
    raises ``NetworkUnavailable`` without them. ``close`` also removes the network.
    """

    RAFT_PORT = 7000
    HTTP_PORT = 8000

    def __init__(self, root: Path, shards: int = 1, replicas: int = 3, **options: Any) -> None:
        super().__init__(root, shards, replicas, **options)
        self.names = [f"s{s}r{r}" for s in range(shards) for r in range(replicas)]
        self._network: TestNetwork | None = None

    @property
    def network(self) -> TestNetwork:
        assert self._network is not None, "cluster not started"
        return self._network

    def start(self, attempts: int = 3) -> Self:
        self._network = TestNetwork(self.names, net=unused_network_number())
        self.prefixes.update({name: self._network.prefix(name) for name in self.names})
        super().start(attempts)
        return self

    def _write_config(self) -> None:
        shards, replicas = self.shape
        layout = []
        for s in range(shards):
            members = []
            for rid in self.names[s * replicas : (s + 1) * replicas]:
                host = self.network.address(rid)
                members.append((rid, f"{host}:{self.RAFT_PORT}", f"{host}:{self.HTTP_PORT}", rid))
            layout.append((f"s{s}", members))
        (dispatcher_port,) = free_ports(1)
        write_cluster_file(self.root, layout, f"127.0.0.1:{dispatcher_port}", self.sections)

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._network is not None:
                self._network.close()


_network_turn = itertools.count(os.getpid())  # concurrent test runs, and successive tests, try different numbers


def unused_network_number() -> int:
    """A ``TestNetwork`` number (200-254; ``bench.fault`` takes 100-199) that no interface or namespace uses now.

    TestNetwork names everything it makes ``dc<net>...``; the kernel removes a
    deleted namespace's interfaces a little later, so a number just given back is not reused at once.
    """
    first = next(_network_turn)
    for offset in range(55):
        net = 200 + (first + offset) % 55
        if not [path for where in ("/sys/class/net", "/run/netns") for path in Path(where).glob(f"dc{net}[a-z]*")]:
            return net
    raise NetworkUnavailable("every test network number from 200 to 254 is in use")


@contextlib.contextmanager
def partitioned_cluster(root: Path, **options: Any) -> Iterator[PartitionedCluster]:
    """A started ``PartitionedCluster`` (1 shard x 3 replicas unless ``options`` say otherwise) for one test.

    Skips the test, saying why, when namespaces cannot be made here (not root,
    no ``ip`` or ``iptables``); fails if they can but building the network
    does not work. Every process is SIGCONTed and stopped and the network
    removed on the way out, pass or fail; the logs are printed when the body fails.
    """
    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    with running(PartitionedCluster(root, **options)) as cluster:
        yield cluster


ClusterT = TypeVar("ClusterT", bound=Cluster)


@contextlib.contextmanager
def running(cluster: ClusterT) -> Iterator[ClusterT]:
    """``cluster`` started for the body; its logs printed if the body fails, and always closed."""
    try:
        yield cluster.start()
    except Exception:
        print(cluster.logs())
        raise
    finally:
        cluster.close()
