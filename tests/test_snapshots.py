"""Snapshots of a large state, on real processes: they stall no heartbeat, and a graceful stop waits for one.

At d8220fd the snapshot was built and written on the Raft thread (PySyncObj
turns its fork off for a custom serializer), so a member sent and answered no
heartbeat while it wrote; and a graceful stop gave up on its snapshot after 5 s,
so the restart replayed the log. How long a snapshot takes is set here by a slow
disk: ``snapshot.json.tmp`` is a FIFO the test reads only when it chooses, so
the write of a state of 10,000 users takes as long as the test says, on a
loaded machine or not.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import select
import signal
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
import ujson

from tests.harness import Cluster, http, wait_for

pytestmark = pytest.mark.cluster

USERS = 10_000
# Election timeouts well above a loaded test machine's scheduling noise; the slow disk stalls for longer.
TIMINGS = {"election_min": 1.0, "election_max": 2.0, "leader_fallback": 3.0, "heartbeat": 0.1}
DISK_STALL = 2 * TIMINGS["election_max"]
STOP_STALL = 7.0  # longer than snapshot_now's 5 s before a graceful stop (and within the harness's 10 s)


def user(uid: int) -> dict[str, Any]:
    return {"id": uid, "first_name": f"F{uid}", "last_name": f"L{uid}", "country": "Snapshots", "city": "X"}


def load_users(cluster: Cluster, count: int, per_request: int = 2_000) -> None:
    for first in range(0, count, per_request):
        docs = [user(uid) for uid in range(first + 1, min(count, first + per_request) + 1)]
        code, body = http("POST", f"{cluster.url}/_bulk/User", {"docs": docs}, timeout=60)
        assert code == 200 and all("ok" in r for r in body["results"]), body


class SlowDisk:
    """A replica's next snapshot goes to a FIFO: its writer blocks until the test reads.

    ``started`` is true once the writer has begun (data is waiting); ``drain`` reads the whole
    snapshot (until the writer closes it); ``settle`` waits until the replica renamed the FIFO
    to ``snapshot.json`` and puts what was read there, as a disk would have held it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.fifo = data_dir / "snapshot.json.tmp"
        self.chunks: list[bytes] = []
        self._fd: int | None = None

    def __enter__(self) -> SlowDisk:
        # A writer mid-way through a regular snapshot holds the name: wait until it is renamed away.
        wait_for(self._make_fifo, 30, f"{self.fifo} free for a FIFO")
        # Opened for reading at once, so the writer's open does not block: its writes do, past 64 KiB.
        self._fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
        return self

    def _make_fifo(self) -> bool:
        try:
            os.mkfifo(self.fifo)
        except FileExistsError:
            return False
        return True

    def started(self) -> bool:
        assert self._fd is not None
        readable, _, _ = select.select([self._fd], [], [], 0.05)
        if not readable:
            return False
        with contextlib.suppress(BlockingIOError):
            chunk = os.read(self._fd, 1 << 16)
            self.chunks.append(chunk)
            return bool(chunk)
        return False

    def drain(self) -> dict[str, Any]:
        """Read the snapshot to its end; return it parsed."""
        assert self._fd is not None
        os.set_blocking(self._fd, True)
        while chunk := os.read(self._fd, 1 << 20):
            self.chunks.append(chunk)
        document: dict[str, Any] = ujson.loads(b"".join(self.chunks))
        return document

    def settle(self) -> None:
        """Wait until the replica renamed the FIFO; if it is still ``snapshot.json`` (no later snapshot
        replaced it), put what was read there instead."""
        snapshot = self.data_dir / "snapshot.json"
        wait_for(lambda: not _is_fifo(self.fifo), 30, f"{self.fifo} renamed")
        if _is_fifo(snapshot):
            restored = self.data_dir / "snapshot.json.restored"
            restored.write_bytes(b"".join(self.chunks))
            os.replace(restored, snapshot)

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._fd is not None:
            os.close(self._fd)
        if _is_fifo(self.fifo):
            self.fifo.unlink()


def _is_fifo(path: Path) -> bool:
    try:
        return stat.S_ISFIFO(path.stat().st_mode)
    except FileNotFoundError:
        return False


def stall(seconds: float, meanwhile: Callable[[], None] = lambda: time.sleep(0.05)) -> None:
    """The slow disk: nothing is read for ``seconds``; ``meanwhile`` runs again and again until then."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        meanwhile()


class GroupWatch:
    """Samples every replica of a group every 50 ms: the (leader, term) each reports, and the longest any
    follower had not answered its leader, as the leader saw it."""

    def __init__(self, cluster: Cluster, shard_id: str) -> None:
        self.cluster = cluster
        self.replicas = cluster.replica_ids(shard_id)
        self.leaders: set[tuple[str, int]] = set()
        self.longest_silence = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GroupWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for replica_id in self.replicas:
                try:
                    status = self.cluster.shard_status(replica_id, timeout=10)
                except OSError:
                    continue
                if status["leader_raft"] is not None:
                    self.leaders.add((status["leader_raft"], status["term"]))
                if status["role"] == "leader":
                    ages = status.get("last_response_age", {}).values()
                    self.longest_silence = max([self.longest_silence, *ages])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_slow_snapshots_of_the_leader_and_a_follower_stall_no_heartbeat(cluster_factory) -> None:
    cluster = cluster_factory(
        shards=1, replicas=3, raft={**TIMINGS, "compaction_min_entries": 20, "compaction_min_seconds": 3600}
    )
    leader = cluster.leader_of("s0")
    follower = next(r for r in cluster.replica_ids("s0") if r != leader)
    load_users(cluster, USERS)
    config = cluster.processes.config
    with contextlib.ExitStack() as stack:
        disks = [stack.enter_context(SlowDisk(config.replica(r).data_dir)) for r in (leader, follower)]
        watch = stack.enter_context(GroupWatch(cluster, "s0"))
        uids = itertools.count(USERS + 1)
        failed: list[object] = []

        def write() -> None:
            try:
                code, body = cluster.post("/insert_user", user(next(uids)))
            except OSError as exc:
                failed.append(exc)
            else:
                if code != 200:
                    failed.append(body)

        # More entries than compaction_min_entries: every replica starts a snapshot. Writes go on meanwhile.
        for _ in range(40):
            write()
        for disk in disks:
            wait_for(disk.started, 30, f"a snapshot written to {disk.fifo}")
        stall(DISK_STALL, write)
        snapshots = [disk.drain() for disk in disks]
        for disk in disks:
            disk.settle()
    assert len({term for _, term in watch.leaders}) == 1, f"the leader changed during the snapshots: {watch.leaders}"
    assert watch.longest_silence < TIMINGS["election_min"], f"a follower was silent {watch.longest_silence:.2f}s"
    assert not failed, f"writes failed during the snapshots: {failed[:3]}"
    for snapshot in snapshots:
        assert len(snapshot["state"]["collections"]["User"]) >= USERS


def test_a_graceful_stop_waits_for_a_slow_snapshot_and_the_restart_loads_it(cluster_factory) -> None:
    cluster = cluster_factory(
        shards=1, replicas=3, raft={"compaction_min_entries": 10**6, "compaction_min_seconds": 3600}
    )
    leader = cluster.leader_of("s0")
    follower = next(r for r in cluster.replica_ids("s0") if r != leader)
    load_users(cluster, USERS)
    commit = cluster.shard_status(leader)["commit_index"]
    wait_for(lambda: cluster.shard_status(follower)["applied_index"] >= commit, 30, f"{follower} caught up")
    applied = cluster.shard_status(follower)["applied_index"]
    replica = cluster.processes.config.replica(follower)
    process = cluster.processes.processes[follower]
    with SlowDisk(replica.data_dir) as disk:
        os.kill(process.pid, signal.SIGTERM)
        wait_for(disk.started, 30, f"{follower}'s snapshot on stopping")
        stall(STOP_STALL)
        snapshot = disk.drain()
        disk.settle()
    assert process.wait(10) == 0
    log = (cluster.root / "logs" / f"{follower}.log").read_text()
    assert "no snapshot before stopping" not in log
    assert snapshot["raft"]["last"][1] >= applied, "the snapshot does not cover what the replica applied"
    assert len(snapshot["state"]["collections"]["User"]) == USERS

    cluster.restart(follower)
    loaded = f"snapshot at index {snapshot['raft']['last'][1]} loaded"
    wait_for(lambda: loaded in (cluster.root / "logs" / f"{follower}.log").read_text(), 30, f"{follower}: {loaded}")
    code, body = cluster.get("/get_user", base=replica.http_url, id=USERS, consistency="stale")
    assert code == 200 and [u["id"] for u in body["items"]] == [USERS], body
