"""Replicas rejoining their group on real processes: after a partition heals, and with a divergent log.

Docraft issue 9, findings 3 and 4, measured at 46377ff:

3. A replica cut off from its group for 12 s (every packet dropped) rejoined
   8.3 s after the heal: PySyncObj waited on TCP's own SYN and retransmission
   backoff instead of reconnecting.
4. A replica that came back with a long uncommitted tail from an old term
   stayed behind for minutes: its leader walked back one entry per round trip.

The tests cut replicas off with iptables in network namespaces (``PartitionedCluster``): they need
root and are skipped, saying why, without it.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from pathlib import Path

import pytest
from pysyncobj.node import TCPNode

from consensus.raft_member import RaftTimings
from consensus.replica import Replica
from consensus.state_machine import StateMachine
from examples.people import app as people
from node.admin import agrees
from query.app import load_app
from tests.harness import Cluster, Writers, free_ports, http, partitioned_cluster, wait_for

pytestmark = pytest.mark.cluster

CUT_FOR = 14.0  # seconds a replica stays cut off (at 46377ff, 10 s cuts rejoined in 2.2-2.4 s, 14 s cuts in 6.4-7.2 s)
REJOIN_LIMIT = 2.0  # seconds from the heal until the cut-off replica has applied what was committed by then
CATCH_UP_LIMIT = 3.0  # seconds from the heal until a deposed leader with a divergent tail agrees with its group
TAIL_WRITERS = 16  # threads appending to the tail of a leader that cannot commit
MIN_TAIL = 150  # proposals the tail must hold, at least: walking it back one by one takes several seconds


def hold_cut(since: float) -> None:
    """Keep the partition in place until ``CUT_FOR`` seconds after ``since`` (the fault's length, not a wait)."""
    time.sleep(max(0.0, since + CUT_FOR - time.monotonic()))


def committed(cluster: Cluster, replica_ids: list[str]) -> int:
    """The highest commit index that any of ``replica_ids`` reports: its leader's, if it has one among them."""
    return max(int(cluster.shard_status(r, timeout=1)["commit_index"]) for r in replica_ids)


def seconds_to_catch_up(cluster: Cluster, replica_id: str, index: int, since: float, agreeing: bool = False) -> float:
    """Seconds from ``since`` until ``replica_id`` follows a leader and has applied ``index``
    (and, with ``agreeing``, its digest agrees with its group's)."""

    def caught_up() -> bool:
        status = cluster.shard_status(replica_id, timeout=1)
        if status["role"] != "follower" or status["applied_index"] < index:
            return False
        return not agreeing or agrees(cluster.processes.config, replica_id)

    wait_for(caught_up, 60, f"{replica_id} following and applying index {index}", every=0.02)
    return time.monotonic() - since


def test_a_follower_cut_off_for_a_while_catches_up_within_two_seconds_of_the_heal(tmp_path: Path) -> None:
    with partitioned_cluster(tmp_path / "cluster") as cluster, Writers(cluster.url, count=4) as writers:
        leader = cluster.leader_of("s0")
        follower, other = [r for r in cluster.replica_ids("s0") if r != leader]
        writers.wait_for_more(20, timeout=20)
        cluster.network.isolate(follower)
        cut = time.monotonic()
        writers.wait_for_more(50, timeout=20)  # the group goes on without it
        hold_cut(cut)
        target = committed(cluster, [leader, other])
        cluster.network.heal()
        took = seconds_to_catch_up(cluster, follower, target, time.monotonic())
        print(f"follower {follower} applied index {target} {took:.2f}s after a {CUT_FOR:.0f}s cut healed")
        assert took < REJOIN_LIMIT, f"{follower} took {took:.2f}s after the heal to apply index {target}"


def test_a_leader_cut_off_for_a_while_follows_the_new_leader_within_two_seconds_of_the_heal(tmp_path: Path) -> None:
    with partitioned_cluster(tmp_path / "cluster") as cluster, Writers(cluster.url, count=4) as writers:
        old = cluster.leader_of("s0")
        others = [r for r in cluster.replica_ids("s0") if r != old]
        writers.wait_for_more(20, timeout=20)
        cluster.network.isolate(old)
        cut = time.monotonic()
        cluster.leader_of("s0", timeout=10, other_than=old)
        writers.wait_for_more(50, timeout=20)  # under the new leader
        hold_cut(cut)
        target = committed(cluster, others)
        cluster.network.heal()
        took = seconds_to_catch_up(cluster, old, target, time.monotonic())
        print(f"deposed leader {old} applied index {target} {took:.2f}s after a {CUT_FOR:.0f}s cut healed")
        assert took < REJOIN_LIMIT, f"{old} took {took:.2f}s after the heal to apply index {target}"


class TailWriter:
    """Threads proposing writes straight to one replica's ``/_shard/write``, each giving up after ``patience``.

    Meant for a leader that cannot commit: every request it accepts appends
    an entry (requests arriving together may share one) that is never
    answered. ``proposals`` counts the requests that went unanswered.
    """

    def __init__(self, replica_url: str, threads: int, patience: float = 0.1) -> None:
        self.url = f"{replica_url}/_shard/write"
        self.patience = patience
        self.proposals = 0
        self._ids = itertools.count(500_000)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                uid = next(self._ids)
            doc = {"id": uid, "first_name": "T", "last_name": str(uid), "country": "Tail", "address": "", "city": ""}
            command = {"type": "mutation", "endpoint": "insert_user", "args": doc, "request_id": f"tail-{uid}"}
            try:
                http("POST", self.url, command, timeout=self.patience)  # answered: nothing was left in the tail
            except TimeoutError:
                with self._lock:
                    self.proposals += 1
            except OSError:
                pass  # refused (not the leader any more) or the connection failed

    def run_for(self, seconds: float) -> int:
        """Propose for ``seconds``; the number of proposals left unanswered."""
        for thread in self._threads:
            thread.start()
        self._stop.wait(seconds)  # how long to propose, not a wait on a condition
        self._stop.set()
        for thread in self._threads:
            thread.join(10)
        return self.proposals


def reelect(cluster: Cluster, group: list[str]) -> str:
    """Make ``group`` elect a leader again: its leader is stopped gracefully and started again.

    Returns the leader elected in a newer term, once it has committed an entry of that term.
    """
    leader = next(r for r in group if cluster.shard_status(r)["role"] == "leader")
    term = int(cluster.shard_status(leader)["term"])
    cluster.kill(leader, signal.SIGTERM)
    cluster.restart(leader)

    def elected() -> str | None:
        for replica in group:
            status = cluster.shard_status(replica, timeout=1)
            if status["role"] == "leader" and status["term"] > term and status["ready"]:
                return replica
        return None

    return wait_for(elected, 30, f"a leader of {group} elected after term {term}")


def test_a_deposed_leader_with_a_long_divergent_tail_agrees_with_its_group_within_three_seconds_of_the_heal(
    tmp_path: Path,
) -> None:
    # The leader is cut off and, for the 3 s of its leader_fallback, goes on accepting writes sent straight
    # to it: each appends an entry of its term that can never commit. The others elect a leader and write
    # past the end of that tail, then elect again (a leader that has just been elected looks for where a
    # follower's log agrees with its own from the end of its own log), so after the heal the search starts
    # far beyond the point where the logs diverge. At 46377ff it stepped back one entry per round trip:
    # the old leader caught up 4 s after the heal once in four runs, and not within a minute in the others.
    with partitioned_cluster(tmp_path / "cluster", raft={"leader_fallback": 3.0}) as cluster:
        old = cluster.leader_of("s0")
        others = [r for r in cluster.replica_ids("s0") if r != old]
        with Writers(cluster.url, count=4) as writers:
            writers.wait_for_more(20, timeout=20)
            cluster.network.isolate(old)
            tail = TailWriter(cluster.replica_url(old), TAIL_WRITERS).run_for(2.0)
            status = cluster.shard_status(old)
            assert tail >= MIN_TAIL, f"only {tail} writes were left in {old}'s uncommitted tail: {status}"
            print(f"{old} holds {tail} unanswered proposals beyond its commit index {status['commit_index']}: {status}")
            tail_end = int(status["commit_index"]) + tail  # its last entry is at most here
            wait_for(lambda: committed(cluster, others) > tail_end, 60, f"the group's log past index {tail_end}")
        reelect(cluster, others)
        target = committed(cluster, others)
        cluster.network.heal()
        took = seconds_to_catch_up(cluster, old, target, time.monotonic(), agreeing=True)
        print(f"deposed leader {old} applied index {target} and agreed {took:.2f}s after the heal")
        assert took < CATCH_UP_LIMIT, f"{old} took {took:.2f}s after the heal to catch up past its divergent tail"


def test_a_snapshot_install_does_not_commit_a_deposed_leaders_own_uncommitted_tail(tmp_path: Path) -> None:
    # Found by bench.fault --nemesis partition (3 runs in 6 lost writes): after the heal the new leader,
    # which had compacted past the old leader's divergent tail, sent it a snapshot. PySyncObj raised the
    # receiver's commit index to min(leader's commit, its own log end) on every snapshot chunk, without
    # checking its log, so the old leader applied its own uncommitted entries and answered those writes
    # as successes (then truncated them: "truncating already-applied log entries").
    ports = free_ports(3)
    state = StateMachine(load_app(people.__name__))
    peers = [f"127.0.0.1:{port}" for port in ports[1:]]  # nobody listens: it never leads
    replica = Replica(f"127.0.0.1:{ports[0]}", peers, state, tmp_path, "x" * 32, RaftTimings())
    try:
        wait_for(lambda: replica.raftLastApplied >= replica.journal.last_index, 10, "the replica started")
        commit = replica.raftCommitIndex
        first = replica.journal.last_index + 1
        for index in range(first, first + 5):  # an old leader's tail of its own term, never committed
            replica.journal.add(b"\x00", index, 3)
        leader = TCPNode(peers[0])
        chunk = {
            "type": "append_entries",
            "term": 4,
            "commit_index": first + 100,
            "serialized": (b"part of a snapshot", True, False),  # first chunk, not the last
        }
        replica._SyncObj__onMessageReceived(leader, chunk)
        time.sleep(0.3)  # several ticks, in which anything committed would be applied
        assert replica.raftCommitIndex == commit, "a snapshot chunk committed entries nobody checked"
        assert replica.raftLastApplied < first, "the replica applied its own uncommitted tail"
    finally:
        replica.destroy_synchronous()
