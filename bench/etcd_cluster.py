"""A 3-member etcd cluster on loopback, for measuring docraft against it (``bench.compare``).

Members listen on free loopback ports (``bench.ports``), keep their data in
directories under ``root`` and log to ``root/<name>.log``. ``start`` waits
until every member reports itself healthy and retries on new ports when a
member exits early (another process took a port); ``enable_auth`` turns on
etcd's authentication with a root user and returns a token for the
``Authorization`` header; ``close`` stops every member, pass or fail. The
etcd binary must be on PATH (Debian package ``etcd-server``).
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.ports import free_block
from node.admin import http_json
from node.launcher import stop_processes

ROOT_USER = "root"
PUTS_PER_TXN = 100  # etcd's --max-txn-ops is 128 by default


class EtcdUnavailable(RuntimeError):
    """The cluster did not come up, or refused a call it should accept."""


@dataclass(frozen=True)
class Member:
    name: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


def encode(text: str) -> str:
    """A key or value as etcd's JSON gateway takes it (base64)."""
    return base64.b64encode(text.encode()).decode()


class EtcdCluster:
    """``size`` etcd members on loopback; not thread-safe (one controlling thread)."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.size = size
        self.members: list[Member] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.token: str | None = None

    @property
    def url(self) -> str:
        """The client URL of the first member: where a benchmark sends its requests."""
        return self.members[0].client_url

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes.values()]

    def start(self, attempts: int = 3, timeout: float = 30.0) -> EtcdCluster:
        """Start every member and wait until each is healthy. Raises ``EtcdUnavailable`` after ``attempts``."""
        problem = ""
        for attempt in range(attempts):
            base = free_block(range(2 * self.size))
            self.members = [Member(f"e{n}", base + 2 * n, base + 2 * n + 1) for n in range(self.size)]
            cluster_token = f"docraft-bench-{secrets.token_hex(4)}"
            for member in self.members:
                self._spawn(member, cluster_token, self.root / f"attempt{attempt}")
            try:
                self._wait_healthy(timeout)
                return self
            except EtcdUnavailable as exc:
                problem = str(exc)
                self.close()
        raise EtcdUnavailable(f"etcd did not start after {attempts} attempts: {problem}")

    def _spawn(self, member: Member, cluster_token: str, data_root: Path) -> None:
        everyone = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        command = [
            "etcd",
            f"--name={member.name}",
            f"--data-dir={data_root / member.name}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={everyone}",
            f"--initial-cluster-token={cluster_token}",
            "--initial-cluster-state=new",
        ]
        data_root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{member.name}.log", "ab") as log:
            self.processes[member.name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _wait_healthy(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        waiting = [m.name for m in self.members]
        while time.monotonic() < end:
            exited = [name for name, p in self.processes.items() if p.poll() is not None]
            if exited:
                raise EtcdUnavailable(f"{', '.join(exited)} exited early; see {self.root}")
            waiting = [m.name for m in self.members if not self._healthy(m)]
            if not waiting:
                return
            time.sleep(0.2)
        raise EtcdUnavailable(f"not healthy after {timeout:.0f}s: {', '.join(waiting)}; see {self.root}")

    @staticmethod
    def _healthy(member: Member) -> bool:
        try:
            status, body = http_json("GET", f"{member.client_url}/health", timeout=2)
        except OSError:
            return False
        return status == 200 and isinstance(body, dict) and body.get("health") == "true"

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` to ``path`` (``/v3/...``) of the first member, with the token once auth is on.
        Raises ``EtcdUnavailable`` for any answer but 200, ``OSError`` when the member does not answer."""
        headers = {"Authorization": self.token} if self.token else None
        status, answer = http_json("POST", self.url + path, body, timeout=10, headers=headers)
        if status != 200 or not isinstance(answer, dict):
            raise EtcdUnavailable(f"etcd {path} answered {status}: {answer}")
        return answer

    def enable_auth(self) -> str:
        """Turn authentication on with a root user (as ``etcdctl auth enable`` does); returns its token,
        which ``call`` sends from then on. Simple tokens: kept by every member, dropped after 5 idle minutes."""
        password = secrets.token_urlsafe(16)
        self.call("/v3/auth/user/add", {"name": ROOT_USER, "password": password})
        self.call("/v3/auth/role/add", {"name": ROOT_USER})
        self.call("/v3/auth/user/grant", {"user": ROOT_USER, "role": ROOT_USER})
        self.call("/v3/auth/enable", {})
        token = self.call("/v3/auth/authenticate", {"name": ROOT_USER, "password": password}).get("token")
        if not isinstance(token, str):
            raise EtcdUnavailable("etcd authenticated the root user but returned no token")
        self.token = token
        return token

    def put_all(self, items: Iterable[tuple[str, str]]) -> int:
        """Store ``(key, value)`` pairs, ``PUTS_PER_TXN`` to a transaction; returns how many were stored."""
        pending = list(items)
        for start in range(0, len(pending), PUTS_PER_TXN):
            puts = [
                {"request_put": {"key": encode(key), "value": encode(value)}}
                for key, value in pending[start : start + PUTS_PER_TXN]
            ]
            self.call("/v3/kv/txn", {"success": puts})
        return len(pending)

    def is_leader(self) -> bool:
        """Whether the first member (the one ``url`` names) leads the cluster now."""
        status = self.call("/v3/maintenance/status", {})
        return str(status.get("leader")) == str(status.get("header", {}).get("member_id"))

    def close(self, timeout: float = 10.0) -> None:
        """SIGTERM every member, then SIGKILL what still runs after ``timeout``; safe to call twice."""
        stop_processes(self.processes.values(), timeout)
        self.processes.clear()
