"""Adding a shard to a running, loaded cluster and rebalancing onto it, on real processes.

``docraft rebalance`` runs as an operator runs it (a process of its own) while
writers keep writing through the dispatcher under Idempotency-Keys; then the
same with the source's leader, the target's leader and the rebalancer itself
killed with SIGKILL in the middle of moves, after which a second
``docraft rebalance`` finishes the job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from node.rebalance import pending_moves
from node.rebalance_plan import even_shares
from tests.harness import Cluster, Writers, http, running, wait_for

pytestmark = pytest.mark.cluster

PRELOAD_COUNTRY = "Preload"


def preload(cluster: Cluster, count: int) -> None:
    """Store ``count`` users of country ``Preload`` (ids 1..count) through the bulk route."""
    for first in range(1, count + 1, 500):
        docs = [
            {"id": uid, "first_name": "P", "last_name": str(uid), "country": PRELOAD_COUNTRY}
            for uid in range(first, min(first + 500, count + 1))
        ]
        code, body = cluster.post("/_bulk/User", {"docs": docs})
        assert code == 200 and all("ok" in r for r in body["results"]), body


def scatter_ids(cluster: Cluster, country: str) -> list[int]:
    """Every user id of ``country``, through the dispatcher's scatter query, page by page (duplicates kept)."""
    ids: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"country": country, "limit": 1000}
        if cursor is not None:
            params["cursor"] = cursor
        code, body = cluster.get("/get_user", **params)
        assert code == 200, body
        ids += [item["id"] for item in body["items"]]
        cursor = body["next"]
        if cursor is None:
            return ids


def slot_reports(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Each shard's ``/_shard/slots?counts=1`` as its leader answers it."""
    reports = {}
    for shard in cluster.processes.config.shards:
        leader = leader_of(cluster, shard.id)
        code, body = http("GET", f"{cluster.replica_url(leader)}/_shard/slots?counts=1")
        assert code == 200, body
        reports[shard.id] = body
    return reports


def leader_of(cluster: Cluster, shard_id: str, other_than: str | None = None) -> str:
    """The replica of ``shard_id`` that says it leads (in the newest term), asked directly."""

    def find() -> str | None:
        leading = []
        for replica in cluster.replica_ids(shard_id):
            with contextlib.suppress(OSError, AssertionError):
                status = cluster.shard_status(replica, timeout=1.0)
                if status["role"] == "leader" and replica != other_than:
                    leading.append((status["term"], replica))
        return max(leading)[1] if leading else None

    return wait_for(find, 20, f"a leader of {shard_id} other than {other_than}")


def assert_balanced_and_each_document_once(cluster: Cluster, documents: int) -> None:
    """Every group holds its even share of slots, nothing is moving, and every slot's documents are counted
    by the one group that owns it, ``documents`` in all."""
    reports = slot_reports(cluster)
    assert pending_moves(reports) == []
    owned: dict[str, list[tuple[int, int]]] = {
        shard: [(r["first"], r["last"]) for r in report["ranges"] if r["state"] == "owned"]
        for shard, report in reports.items()
    }
    sizes = {shard: sum(last - first + 1 for first, last in ranges) for shard, ranges in owned.items()}
    assert sizes == even_shares(list(reports))
    holders: Counter[int] = Counter()
    total = 0
    for shard, report in reports.items():
        for slot, count in report["counts"].items():
            assert any(first <= int(slot) <= last for first, last in owned[shard]), f"{shard} holds slot {slot}"
            holders[int(slot)] += 1
            total += count
    assert all(n == 1 for n in holders.values()), "a slot's documents on two groups"
    assert total == documents


class ScatterWatch:
    """Scatter queries in a loop while a move runs: each pass must see the preloaded users exactly once, and at
    least every writer's user acknowledged before the pass began. ``problems`` lists the passes that did not."""

    def __init__(self, cluster: Cluster, writers: Writers, preloaded: int) -> None:
        self.cluster, self.writers, self.preloaded = cluster, writers, preloaded
        self.passes = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            acked = set(self.writers.acked)
            preloaded = scatter_ids(self.cluster, PRELOAD_COUNTRY)
            written = scatter_ids(self.cluster, "Writers")
            if sorted(preloaded) != list(range(1, self.preloaded + 1)):
                self.problems.append(f"pass {self.passes}: {len(preloaded)} preloaded users, {len(set(preloaded))} ids")
            if len(written) != len(set(written)) or not acked <= set(written):
                self.problems.append(f"pass {self.passes}: {len(acked - set(written))} acknowledged users missing")
            self.passes += 1

    def __enter__(self) -> ScatterWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def test_a_new_shard_takes_its_share_while_writers_write(tmp_path: Path) -> None:
    with running(Cluster(tmp_path, shards=2, replicas=3)) as cluster:
        preload(cluster, 3000)
        assert_balanced_and_each_document_once(cluster, 3000)
        cluster.add_shard("s2")
        with Writers(cluster.url, count=6, retry=True) as writers:
            writers.wait_for_more(30, 30)
            with ScatterWatch(cluster, writers, 3000) as watch:
                mover = cluster.docraft("rebalance", timeout=240)
                output = mover.stdout + mover.stderr
                assert mover.returncode == 0, output
                wait_for(lambda: watch.passes >= 2, 60, "two scatter passes during and after the move")
            writers.wait_for_more(30, 30)  # the routers follow the new map: writes still land
        acked = writers.stop()
        moves = [line.split() for line in output.splitlines() if line.endswith("committed")]
        assert sorted((m[1], m[2]) for m in moves) == [("s0", "s2"), ("s1", "s2")], output
        assert watch.problems == []
        written = scatter_ids(cluster, "Writers")
        assert len(written) == len(set(written)) and acked <= set(written)
        assert sorted(scatter_ids(cluster, PRELOAD_COUNTRY)) == list(range(1, 3001))
        for uid in sorted(acked)[:: max(1, len(acked) // 200)]:
            code, body = cluster.get("/get_user", id=uid)
            assert code == 200 and [item["id"] for item in body["items"]] == [uid], body
        assert_balanced_and_each_document_once(cluster, 3000 + len(written))
        again = cluster.docraft("rebalance", timeout=60)
        assert again.returncode == 0 and "nothing to move" in again.stdout, again.stdout + again.stderr


def move_being_copied(cluster: Cluster, target: str) -> dict[str, Any] | None:
    """A move in progress into ``target`` as its leader records it (its ``peer`` is the source), once the
    source froze the range and part of it was copied; ``None`` before."""
    leader = leader_of(cluster, target)
    code, body = http("GET", f"{cluster.replica_url(leader)}/_shard/slots", timeout=2)
    if code != 200:
        return None
    return next((m for m in body["moves"] if m["state"] == "importing" and m["docs_copied"] > 0), None)


def test_moves_survive_sigkill_of_both_leaders_and_of_the_rebalancer(tmp_path: Path) -> None:
    with running(Cluster(tmp_path, shards=2, replicas=3)) as cluster:
        preload(cluster, 4000)
        cluster.add_shard("s2")
        mover = cluster.docraft_process("rebalance", "--max-docs", "100", log=tmp_path / "rebalance-1.log")
        try:
            for victim in ("source", "target"):
                move = wait_for(lambda: move_being_copied(cluster, "s2"), 60, "a move copying documents", every=0.01)
                shard = move["peer"] if victim == "source" else "s2"
                killed = leader_of(cluster, shard)
                cluster.kill(killed)
                leader_of(cluster, shard, other_than=killed)
                cluster.restart(killed)
            wait_for(lambda: move_being_copied(cluster, "s2"), 60, "a move copying documents", every=0.01)
            os.kill(mover.pid, signal.SIGKILL)
            mover.wait(10)
        finally:
            if mover.poll() is None:
                mover.kill()
                mover.wait()
        interrupted = pending_moves(slot_reports(cluster))
        again = cluster.docraft("rebalance", timeout=240)
        output = again.stdout + again.stderr
        assert again.returncode == 0, output + (tmp_path / "rebalance-1.log").read_text()
        for unfinished in interrupted:
            assert unfinished.id in output, f"{unfinished.describe()} was not resumed:\n{output}"
        assert sorted(scatter_ids(cluster, PRELOAD_COUNTRY)) == list(range(1, 4001))
        assert_balanced_and_each_document_once(cluster, 4000)


def test_dry_runs_plan_without_moving_and_unknown_shards_are_refused(tmp_path: Path) -> None:
    with running(Cluster(tmp_path, shards=2, replicas=3)) as cluster:
        dry = cluster.docraft("rebalance", "--dry-run", timeout=60)
        assert dry.returncode == 0 and "nothing to move" in dry.stdout, dry.stdout + dry.stderr
        drain = cluster.docraft("shard", "drain", "--shard", "s1", "--dry-run", timeout=60)
        assert drain.returncode == 0 and "slots 8192-16383 (8192) s1 -> s0" in drain.stdout, drain
        assert_balanced_and_each_document_once(cluster, 0)  # the dry run moved nothing
        refused = cluster.docraft("rebalance", "--move", "1-10", "--to", "s9", timeout=60)
        output = refused.stdout + refused.stderr
        assert refused.returncode == 2 and "no shard 's9'" in output, output
