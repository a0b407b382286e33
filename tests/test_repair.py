"""Repair is remove + wipe + add: a voter never discards its state; a repaired replica keeps term and vote."""

from __future__ import annotations

import pytest
from pysyncobj.journal import MetaStorer

from node import membership
from tests.harness import Cluster, Writers, http


def term_and_vote(cluster: Cluster, replica_id: str) -> tuple[int, object]:
    stored = MetaStorer(str(cluster.processes.config.replica(replica_id).data_dir / "raft.journal.meta")).getMeta()
    return stored.get("currentTerm", 0), stored.get("votedForNodeId")


@pytest.mark.cluster
def test_a_voter_never_discards_its_state(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    leader = cluster.leader_of("s0")
    follower = next(r for r in cluster.replica_ids("s0") if r != leader)
    voters = [cluster.processes.config.replica(r).raft for r in cluster.replica_ids("s0")]
    for replica in (leader, follower):
        for body in (None, {"voters": voters}):
            code, answer = http("POST", f"{cluster.replica_url(replica)}/_admin/repair", body, timeout=10)
            assert code == 409 and answer["error"]["code"] == "repair_refused", answer
    assert cluster.leader_of("s0") == leader


@pytest.mark.cluster
def test_a_repaired_follower_keeps_its_term_and_vote_and_gets_every_write_back(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, replicas=3)
    leader = cluster.leader_of("s0")
    victim = next(r for r in cluster.replica_ids("s0") if r != leader)
    with Writers(cluster.url, count=4) as writers:
        writers.wait_for_more(100, timeout=20)
        acked = writers.stop()
    before = term_and_vote(cluster, victim)
    lines: list[str] = []
    assert membership.repair(cluster.processes.config, victim, timeout=90, say=lines.append) == 0, lines
    status = cluster.shard_status(victim)
    assert status["fault"] is None and status["mode"] == "voter" and status["role"] == "follower"
    assert cluster.processes.config.replica(victim).raft in cluster.shard_status(leader)["voters"]
    term, vote = term_and_vote(cluster, victim)
    assert term >= before[0]
    if term == before[0]:
        assert vote == before[1], "a repaired replica forgot whom it voted for in this term"
    params = {"country": "Writers", "limit": 1000, "consistency": "stale"}
    code, body = cluster.get("/get_user", base=cluster.replica_url(victim), **params)
    assert code == 200 and acked <= {u["id"] for u in body["items"]}, body
