"""The dispatcher's move janitor, on real processes: a ``docraft rebalance`` killed mid-copy leaves its move
frozen, and the dispatcher finishes it without anyone running ``docraft rebalance`` again."""

from __future__ import annotations

import itertools
import os
import signal
from pathlib import Path

import pytest

from consensus.slots import slot_of
from node.rebalance import pending_moves
from tests.harness import Cluster, http, running, wait_for
from tests.test_rebalance_cluster import (
    PRELOAD_COUNTRY,
    move_being_copied,
    preload,
    scatter_ids,
    slot_reports,
)

pytestmark = pytest.mark.cluster

USERS = 10_000
MOVED = (0, 8191)  # all of s0's slots, one move (--max-docs above s0's documents)


def test_a_move_whose_rebalancer_died_is_finished_by_the_dispatcher(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, shards=2, replicas=3, sections={"rebalance": {"stall_after": 3.0}})
    with running(cluster):
        preload(cluster, USERS)
        spans = f"{MOVED[0]}-{MOVED[1]}"
        mover = cluster.docraft_process(
            "rebalance", "--move", spans, "--to", "s1", "--max-docs", str(USERS), log=tmp_path / "mover.log"
        )
        try:
            wait_for(lambda: move_being_copied(cluster, "s1"), 60, "the move copying documents", every=0.01)
            os.kill(mover.pid, signal.SIGKILL)
            mover.wait(10)
        finally:
            if mover.poll() is None:
                mover.kill()
                mover.wait()
        (interrupted,) = pending_moves(slot_reports(cluster))
        assert interrupted.states == ("frozen", "importing"), interrupted.describe()
        assert 0 < interrupted.target_record["docs_copied"] < interrupted.source_record["count"]  # type: ignore[index]

        def committed_on_both() -> bool:
            by_shard = slot_reports(cluster)
            states = {
                m["role"]: m["state"]
                for report in by_shard.values()
                for m in report["moves"]
                if m["id"] == interrupted.id
            }
            return states == {"source": "committed", "target": "committed"}

        wait_for(committed_on_both, 30, f"the dispatcher finishing {interrupted.describe()}")
        uid = next(u for u in itertools.count(USERS + 1) if MOVED[0] <= slot_of(u) <= MOVED[1])
        doc = {"id": uid, "first_name": "J", "last_name": "After", "country": PRELOAD_COUNTRY}
        wait_for(lambda: http("POST", f"{cluster.url}/insert_user", doc)[0] == 200, 10, "a write to the moved range")

        reports = slot_reports(cluster)
        assert pending_moves(reports) == []
        owner = {int(slot): shard for shard, report in reports.items() for slot in report["counts"]}
        holders = [(shard, int(slot)) for shard, report in reports.items() for slot in report["counts"]]
        assert len(holders) == len(owner), "a slot's documents on two shards"
        assert all(owner[slot] == "s1" for slot in range(MOVED[0], MOVED[1] + 1) if slot in owner)
        assert sum(n for report in reports.values() for n in report["counts"].values()) == USERS + 1
        assert sorted(scatter_ids(cluster, PRELOAD_COUNTRY)) == list(range(1, USERS + 2))
        assert "resumed: committed" in (tmp_path / "logs" / "d0.log").read_text()
