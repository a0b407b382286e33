"""Repair is safe: refused when it could cost the group its majority or data; keeps term and vote."""

from __future__ import annotations

import signal

import pytest
from pysyncobj.journal import MetaStorer

from node.repair import PeerReport, refusal
from tests.harness import Cluster, Writers, http, wait_for


def peer(replica: str, role: str = "follower", applied: int = 100, commit: int = 100, fault=None) -> PeerReport:
    return PeerReport(replica, role, applied, commit, fault)


def test_a_follower_may_be_repaired_when_the_others_are_a_caught_up_majority() -> None:
    assert refusal("r2", 3, "follower", [peer("r0", "leader"), peer("r1")]) is None


def test_the_leader_is_never_repaired() -> None:
    assert "leads" in str(refusal("r0", 3, "leader", [peer("r1"), peer("r2")]))


def test_one_repair_at_a_time() -> None:
    recovering = peer("r1", fault={"kind": "entries_lost", "message": "..."})
    assert "one repair at a time" in str(refusal("r2", 3, "follower", [peer("r0", "leader"), recovering]))


def test_the_others_must_have_applied_what_the_leader_committed() -> None:
    lagging = peer("r1", applied=90)
    assert "only 1 other replicas" in str(refusal("r2", 3, "follower", [peer("r0", "leader"), lagging]))
    silent = PeerReport("r1", None, None, None, None)
    assert refusal("r2", 3, "follower", [peer("r0", "leader"), silent]) is not None
    assert "no leader" in str(refusal("r2", 3, "follower", [peer("r0"), peer("r1")]))


def test_a_five_replica_group_can_repair_one_while_another_is_down() -> None:
    down = PeerReport("r3", None, None, None, None)
    assert refusal("r4", 5, "follower", [peer("r0", "leader"), peer("r1"), peer("r2"), down]) is None


def term_and_vote(cluster: Cluster, replica_id: str) -> tuple[int, object]:
    stored = MetaStorer(str(cluster.processes.config.replica(replica_id).data_dir / "raft.journal.meta")).getMeta()
    return stored.get("currentTerm", 0), stored.get("votedForNodeId")


def repair(cluster: Cluster, replica_id: str) -> tuple[int, dict]:
    return http("POST", f"{cluster.replica_url(replica_id)}/_admin/repair", timeout=10)


@pytest.mark.cluster
def test_repair_is_refused_on_a_leader_and_without_a_caught_up_majority(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    leader = cluster.leader_of("s0")
    a, b = [r for r in cluster.replica_ids("s0") if r != leader]
    code, body = repair(cluster, leader)
    assert code == 409 and body["error"]["code"] == "repair_refused", body
    assert cluster.leader_of("s0") == leader

    cluster.kill(b, signal.SIGSTOP)  # b falls behind: a repair of a would leave no caught-up majority
    try:
        with Writers(cluster.url, count=2) as writers:
            writers.wait_for_more(20, timeout=20)
        code, body = repair(cluster, a)
        assert code == 409 and body["error"]["code"] == "repair_refused", body
    finally:
        cluster.kill(b, signal.SIGCONT)


@pytest.mark.cluster
def test_a_repaired_follower_keeps_its_term_and_vote_and_gets_every_write_back(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    leader = cluster.leader_of("s0")
    victim = next(r for r in cluster.replica_ids("s0") if r != leader)
    with Writers(cluster.url, count=4) as writers:
        writers.wait_for_more(100, timeout=20)
        acked = writers.stop()
    before = term_and_vote(cluster, victim)
    started = cluster.shard_status(victim)["started_at"]
    code, body = repair(cluster, victim)
    assert code == 202, body

    def repaired() -> dict | None:
        code, status = http("GET", f"{cluster.replica_url(victim)}/_shard/status", timeout=2)
        restarted = code == 200 and status["started_at"] != started
        return status if restarted and status["fault"] is None and status["role"] == "follower" else None

    wait_for(repaired, 30, f"{victim} repaired and caught up")
    term, vote = term_and_vote(cluster, victim)
    assert term >= before[0]
    if term == before[0]:
        assert vote == before[1], "a repaired replica forgot whom it voted for in this term"
    params = {"country": "Writers", "limit": 1000, "consistency": "stale"}
    code, body = cluster.get("/get_user", base=cluster.replica_url(victim), **params)
    assert code == 200 and acked <= {u["id"] for u in body["items"]}, body
