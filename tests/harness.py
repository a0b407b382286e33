"""Real clusters for tests: replica and dispatcher processes on loopback.

``Cluster`` writes a cluster file with free ports, starts every process with
``node.launcher.LocalCluster`` (the same code ``docraft up`` uses), and always
stops them in ``close``. Waiting is done on conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from node.admin import http_json
from node.config import load_config, render_config
from node.launcher import LocalCluster

T = TypeVar("T")

FAST_RAFT = {"election_min": 0.3, "election_max": 0.7, "leader_fallback": 1.0, "heartbeat": 0.05}


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


def free_ports(count: int) -> list[int]:
    """Ports free right now. A process elsewhere could take one before our child binds it;
    ``Cluster.start`` retries with new ports when a child fails to start."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """One HTTP call; returns (status, decoded JSON body) for any status."""
    status, decoded = http_json(method, url, body, timeout)
    return status, decoded


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
        """``sections`` adds cluster-file tables (``integrity``, ``alerts``); replicas get ``extra_args``."""
        self.root = root
        self.shape = (shards, replicas)
        self.sections = {"raft": {**FAST_RAFT, **(raft or {})}, **(sections or {})}
        self.extra_args = extra_args
        self.prefixes: dict[str, list[str]] = {}
        self.local: LocalCluster | None = None

    @property
    def processes(self) -> LocalCluster:
        assert self.local is not None, "cluster not started"
        return self.local

    def start(self, attempts: int = 3) -> Cluster:
        for attempt in range(attempts):
            self._write_config()
            config = load_config(self.root / "cluster.toml")
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
        text = render_config(
            "test-secret-" + "x" * 16,
            "examples.people",
            layout,
            [("d0", f"127.0.0.1:{ports[-1]}")],
            self.sections,
        )
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "cluster.toml").write_text(text)

    # -- addresses --------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.processes.config.dispatcher(None).http}"

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

    def leader_of(self, shard_id: str, timeout: float = 10.0, other_than: str | None = None) -> str:
        def find() -> str | None:
            for shard in self.status():
                if shard["id"] == shard_id and shard["leader"] not in (None, other_than):
                    leader: str = shard["leader"]
                    return leader
            return None

        return wait_for(find, timeout, f"a leader of {shard_id} other than {other_than}")

    # -- faults -----------------------------------------------------------------

    def kill(self, replica_id: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.processes[replica_id]
        os.kill(process.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            process.wait(10)

    def restart(self, replica_id: str) -> None:
        self.processes.start_replica(replica_id)

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


class Writers:
    """Threads inserting users with unique ids through ``url`` until ``stop``; ``acked`` holds every id answered 200.

    Each thread writes ids ``base + thread + k * count``; a write whose answer
    was lost or not 200 is simply not in ``acked`` (it may or may not be stored).
    """

    def __init__(self, url: str, count: int = 12, base: int = 1_000_000) -> None:
        self.url = url
        self.acked: set[int] = set()
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(base + n, count), daemon=True) for n in range(count)]

    def _run(self, first: int, step: int) -> None:
        uid = first
        while not self._stop.is_set():
            doc = {"id": uid, "first_name": "W", "last_name": str(uid), "country": "Writers", "city": "X"}
            try:
                code, _ = http("POST", f"{self.url}/insert_user", doc, timeout=15)
            except OSError:
                code = 0
            with self._lock:
                if code == 200:
                    self.acked.add(uid)
                else:
                    self.failures += 1
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
