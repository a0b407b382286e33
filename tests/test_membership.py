"""Adding and removing replicas of a running group (real processes: PySyncObj + Tornado on loopback)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest

from node import membership
from tests.harness import Cluster, Writers, http, wait_for

pytestmark = pytest.mark.cluster


def leader_status(cluster: Cluster, shard: str = "s0") -> dict[str, Any]:
    return cluster.shard_status(leader_of(cluster, shard))


def leader_of(cluster: Cluster, shard: str = "s0") -> str:
    """The replica that answers as its group's leader in the newest term (asked directly, not a router's view)."""

    def find() -> str | None:
        leading = []
        for replica in cluster.replica_ids(shard):
            try:
                status = cluster.shard_status(replica, timeout=1.0)
            except (OSError, AssertionError):
                continue
            if status["role"] == "leader":
                leading.append((status["term"], replica))
        return max(leading)[1] if leading else None

    return wait_for(find, 20, f"a leader of {shard}")


def raft_of(cluster: Cluster, replica_id: str) -> str:
    return cluster.processes.config.replica(replica_id).raft


def digest_of(cluster: Cluster, replica_id: str) -> tuple[int, str]:
    code, report = http("GET", f"{cluster.replica_url(replica_id)}/_admin/digest", timeout=2)
    assert code == 200, report
    return report["applied_index"], report["digest"]


def same_state(cluster: Cluster, a: str, b: str) -> bool:
    """``a`` and ``b`` have applied the same index and hold the same digest there."""
    (index_a, digest_a), (index_b, digest_b) = digest_of(cluster, a), digest_of(cluster, b)
    return index_a == index_b and digest_a == digest_b


def writers_of(cluster: Cluster, replica_id: str) -> set[int]:
    params = {"country": "Writers", "limit": 1000, "consistency": "stale"}
    code, body = cluster.get("/get_user", base=cluster.replica_url(replica_id), **params)
    assert code == 200, body
    return {u["id"] for u in body["items"]}


def start_learner(cluster: Cluster, shard: str = "s0") -> str:
    """A new replica in ``shard``'s cluster-file list, started: it must join as a learner."""
    new = cluster.add_replica_entry(shard)
    cluster.restart(new)
    wait_for(lambda: cluster.shard_status(new)["mode"] == "learner", 30, f"{new} running as a learner")
    return new


def test_a_replica_added_to_a_loaded_group_copies_it_and_an_old_one_is_removed(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    with Writers(cluster.url, count=4) as writers:
        writers.wait_for_more(200, timeout=60)
        acked = writers.stop()
    new = start_learner(cluster)
    leader = leader_of(cluster)
    assert raft_of(cluster, new) not in leader_status(cluster)["voters"]

    # The learner never counts for commit: with both followers stopped, leader + learner commit nothing.
    followers = [r for r in cluster.replica_ids("s0") if r not in (leader, new)]
    for replica in followers:
        cluster.kill(replica, signal.SIGSTOP)
    try:
        doc = {"id": 1, "first_name": "L", "last_name": "L", "country": "Learners", "city": "X"}
        code, body = http("POST", f"{cluster.url}/insert_user", doc, timeout=30)
        assert code in (503, 504), (
            f"a write committed with only the leader and a learner: {code} {body}; leader {leader}, stopped {followers}"
        )
    finally:
        for replica in followers:
            cluster.kill(replica, signal.SIGCONT)

    lines: list[str] = []
    assert membership.add(cluster.processes.config, new, timeout=60, say=lines.append) == 0, lines
    status = leader_status(cluster)
    assert raft_of(cluster, new) in status["voters"] and len(status["voters"]) == 4
    assert cluster.shard_status(new)["mode"] == "voter"

    old = followers[0]
    assert membership.remove(cluster.processes.config, old, timeout=60, say=lines.append) == 0, lines
    assert cluster.processes.processes[old].wait(20) == 0, "a retired replica did not stop cleanly"
    status = leader_status(cluster)
    assert raft_of(cluster, old) not in status["voters"] and len(status["voters"]) == 3

    leader = leader_of(cluster)
    wait_for(lambda: same_state(cluster, new, leader), 30, f"{new} holding the leader's state and digest")
    assert acked <= writers_of(cluster, new)
    assert len(writers_of(cluster, new)) == len(writers_of(cluster, leader))

    cluster.restart(old)  # a retired data directory refuses to start, naming the way back
    assert cluster.processes.processes[old].wait(30) != 0
    log = (cluster.root / "logs" / f"{old}.log").read_text()
    assert "docraft replica add" in log


def test_removing_the_leader_moves_leadership_first_and_writers_keep_going(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    leader = leader_of(cluster)
    term = leader_status(cluster)["term"]
    with Writers(cluster.url, count=4) as writers:
        writers.wait_for_more(50, timeout=30)
        lines: list[str] = []
        assert membership.remove(cluster.processes.config, leader, timeout=60, say=lines.append) == 0, lines
        writers.wait_for_more(100, timeout=30)
        acked = writers.stop()
    assert any("handed leadership" in line for line in lines), lines
    new_leader = leader_of(cluster)
    status = cluster.shard_status(new_leader)
    assert new_leader != leader and status["term"] > term and raft_of(cluster, leader) not in status["voters"]
    assert cluster.processes.processes[leader].wait(20) == 0
    assert acked <= writers_of(cluster, new_leader)


def test_a_change_without_a_healthy_majority_is_refused(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    leader = leader_of(cluster)
    down, up = [r for r in cluster.replica_ids("s0") if r != leader]
    leader_url = cluster.replica_url(leader)
    cluster.kill(down, signal.SIGSTOP)
    try:
        silent = raft_of(cluster, down)
        wait_for(lambda: cluster.shard_status(leader)["last_response_age"][silent] > 1.0, 10, f"{down} silent")
        # Removing the one healthy follower would leave the leader alone with a silent voter.
        code, body = http("POST", f"{leader_url}/_admin/membership", {"op": "remove", "raft": raft_of(cluster, up)})
        assert code == 409 and body["error"]["details"]["reason"] == "no_majority", body
    finally:
        cluster.kill(down, signal.SIGCONT)


def test_adding_a_voter_that_does_not_answer_as_a_caught_up_joining_member_is_refused(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    leader_url = cluster.replica_url(leader_of(cluster))
    code, body = http("POST", f"{leader_url}/_admin/membership", {"op": "add", "raft": "127.0.0.1:9"}, timeout=30)
    assert code == 409 and body["error"]["details"]["reason"] == "not_caught_up", body
    learner = start_learner(cluster)  # answers, but as a learner: not promoted
    code, body = http("POST", f"{leader_url}/_admin/membership", {"op": "add", "raft": raft_of(cluster, learner)})
    assert code == 409 and body["error"]["details"]["reason"] == "not_caught_up", body
    assert raft_of(cluster, learner) not in leader_status(cluster)["voters"]


def write_users(cluster: Cluster, ids: range) -> None:
    for uid in ids:
        doc = {"id": uid, "first_name": "W", "last_name": str(uid), "country": "Writers", "city": "X"}
        code, body = http("POST", f"{cluster.url}/insert_user", doc, timeout=15)
        assert code == 200, body


def log_of(cluster: Cluster, replica_id: str) -> str:
    return (cluster.root / "logs" / f"{replica_id}.log").read_text(errors="replace")


def test_a_voter_that_lost_its_disk_rejoins_as_a_learner_and_repair_makes_it_a_voter_again(cluster_factory) -> None:
    """An empty voter must not vote: with a peer that missed a write, it could elect a leader without it."""
    cluster = cluster_factory(shards=1, replicas=3)
    write_users(cluster, range(1, 21))
    victim = next(r for r in cluster.replica_ids("s0") if r != leader_of(cluster))
    cluster.kill(victim)
    shutil.rmtree(cluster.processes.config.replica(victim).data_dir)
    cluster.restart(victim)
    status = wait_for(lambda: cluster.shard_status(victim), 30, f"{victim} answering")
    assert status["mode"] == "learner", f"{victim} rejoined with an empty log as a {status['mode']}"
    assert f"docraft repair --replica {victim}" in log_of(cluster, victim)

    lines: list[str] = []
    assert membership.repair(cluster.processes.config, victim, timeout=90, say=lines.append) == 0, lines
    assert cluster.shard_status(victim)["mode"] == "voter"
    assert set(range(1, 21)) <= writers_of(cluster, victim)


def test_a_new_replica_waits_for_its_silent_group_and_joins_it_as_a_learner(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    old = cluster.replica_ids("s0")
    new = cluster.add_replica_entry("s0")
    for replica in old:
        cluster.kill(replica, signal.SIGSTOP)
    try:
        cluster.restart(new)
        wait_for(lambda: "waiting for a leader" in log_of(cluster, new), 30, f"{new} waiting for its group")
    finally:
        for replica in old:
            cluster.kill(replica, signal.SIGCONT)
    status = wait_for(lambda: cluster.shard_status(new), 30, f"{new} answering")
    assert status["mode"] == "learner", f"{new} started a group of its own as a {status['mode']}"
    assert raft_of(cluster, new) not in status["voters"]


def test_bootstrap_refuses_a_replica_its_running_group_does_not_count(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    new = cluster.add_replica_entry("s0")
    process = cluster.processes.start_replica(new, bootstrap=True)
    assert process.wait(30) != 0
    assert "start it without --bootstrap and run docraft replica add" in log_of(cluster, new)


def test_repairing_a_removed_replica_that_campaigned_alone_completes(cluster_factory) -> None:
    """A voter removed without standing down (here: through the leader's route, not the flow) whose address
    dials the others campaigns alone and inflates its term; the learner repair makes of it keeps that term
    and must still follow the group's lower-term leader, and be added back."""
    cluster = cluster_factory(shards=1, replicas=3)
    leader = leader_of(cluster)
    victim = max((r for r in cluster.replica_ids("s0") if r != leader), key=lambda r: raft_of(cluster, r))
    body = {"op": "remove", "raft": raft_of(cluster, victim)}
    code, answer = http("POST", f"{cluster.replica_url(leader)}/_admin/membership", body, timeout=30)
    assert code == 200, answer
    wait_for(
        lambda: cluster.shard_status(victim)["term"] > leader_status(cluster)["term"] + 2,
        30,
        f"{victim} campaigning alone past the group's term",
    )
    lines: list[str] = []
    assert membership.repair(cluster.processes.config, victim, timeout=60, say=lines.append) == 0, lines
    status = cluster.shard_status(victim)
    assert status["mode"] == "voter" and status["fault"] is None
    assert raft_of(cluster, victim) in leader_status(cluster)["voters"]


def test_replica_add_and_remove_from_the_command_line(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    new = start_learner(cluster)
    config = str(cluster.processes.config.path)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "node.cli", "replica", *args, "--config", config, "--timeout", "60"]
        return subprocess.run(command, capture_output=True, text=True, timeout=90)

    added = cli("add", "--replica", new)
    assert added.returncode == 0 and f"{new} is a voter" in added.stdout, added.stdout + added.stderr
    assert cli("add", "--replica", new).returncode == 0, "re-running add is not harmless"
    removed = cli("remove", "--replica", new)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert raft_of(cluster, new) not in leader_status(cluster)["voters"]
