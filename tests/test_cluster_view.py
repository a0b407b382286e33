"""``ClusterView``: the slot map a router assembles from the groups' reports (design section 2).

The groups are a fake client answering ``/_shard/slots`` in the documented
shape (``StateMachine.slots_report`` plus who answered); nothing else runs.
"""

from __future__ import annotations

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest

from consensus.slots import SLOT_COUNT
from models.errors import ShardUnavailable
from node.cluster_secret import new_secret
from node.cluster_view import ClusterView
from node.config import ClusterConfig, ReplicaConfig, parse_config, render_config
from node.slot_map import SlotMap

SECRET = new_secret()


def layout(shards: int) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    def replica(s: int, r: int) -> tuple[str, str, str, str]:
        return f"s{s}r{r}", f"127.0.0.1:{7100 + 10 * s + r}", f"127.0.0.1:{8100 + 10 * s + r}", "."

    return [(f"s{s}", [replica(s, r) for r in range(3)]) for s in range(shards)]


def config(shards: int = 2, path: Path = Path("/tmp/none/cluster.toml")) -> ClusterConfig:
    return parse_config(tomllib.loads(render_config(SECRET, "examples.people", layout(shards), [])), path)


def report(epoch: int, ranges: list[tuple[int, int, str, int, str | None]], **extra: Any) -> dict[str, Any]:
    """A ``/_shard/slots`` answer: ``ranges`` as ``(first, last, state, version, owner)``."""
    return {
        "initialized": True,
        "epoch": epoch,
        "ranges": [
            {"first": f, "last": last, "state": state, "version": v, "owner": owner, "move": None}
            for f, last, state, v, owner in ranges
        ],
        "moves": [],
        "members": None,
        "applied_index": 10,
        **extra,
    }


class FakeSlots:
    """Answers ``slots`` per shard from ``reports``; replicas in ``down`` do not answer."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, Any]] = {}
        self.down: set[str] = set()
        self.asked: list[str] = []

    async def slots(self, replica: ReplicaConfig, timeout: float = 1.0, counts: bool = False) -> dict[str, Any]:
        self.asked.append(replica.id)
        if replica.id in self.down or replica.shard not in self.reports:
            raise ShardUnavailable(f"{replica.id} is down")
        return self.reports[replica.shard]


def view(shards: int = 2, path: Path = Path("/tmp/none/cluster.toml")) -> tuple[ClusterView, FakeSlots]:
    fake = FakeSlots()
    return ClusterView(config(shards, path), fake), fake  # type: ignore[arg-type]


def test_the_view_starts_from_the_file_at_version_zero() -> None:
    cluster, _ = view()
    assert cluster.epoch == 0
    assert cluster.shard_for_slot(0) == "s0"
    assert cluster.shard_for_slot(SLOT_COUNT - 1) == "s1"
    assert cluster.ranges_of("s0") == [[0, 8191]]
    assert [s.id for s in cluster.serving()] == ["s0", "s1"]


def test_a_newer_claim_wins_and_a_lagging_report_never_takes_it_back() -> None:
    cluster, _ = view()
    # s1 imported 0..99 at epoch 3; s0 (source) reports the tombstone.
    cluster.merge("s1", report(3, [(0, 99, "owned", 3, None), (8192, 16383, "owned", 0, None)]))
    assert cluster.shard_for_slot(50) == "s1" and cluster.epoch == 3
    # a replica of s0 that has not applied move_commit still says "owned at version 0": older, ignored
    cluster.merge("s0", report(0, [(0, 8191, "owned", 0, None)]))
    assert cluster.shard_for_slot(50) == "s1"
    assert cluster.ranges_of("s0") == [[100, 8191]]
    assert cluster.ranges_of("s1") == [[0, 99], [8192, 16383]]


def test_a_tombstone_is_the_owners_claim_and_brings_its_replicas() -> None:
    cluster, _ = view()
    s2 = [{"id": "s2r0", "raft": "127.0.0.1:7200", "http": "127.0.0.1:8200"}]
    move = {"id": "m1", "role": "source", "slots": [[0, 9]], "peer": "s2", "peer_replicas": s2, "state": "committed"}
    cluster.merge("s0", report(4, [(0, 9, "moved", 4, "s2"), (10, 8191, "owned", 0, None)], moves=[move]))
    assert cluster.shard_for_slot(5) == "s2"
    assert [r.http for r in cluster.shard("s2").replicas] == ["127.0.0.1:8200"]
    assert [s.id for s in cluster.shards()] == ["s0", "s1", "s2"]
    assert cluster.epoch == 4


def test_a_group_not_in_the_file_is_learned_by_reading_the_file_again(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(render_config(SECRET, "examples.people", layout(2), []))
    cluster, _ = view(2, path)
    path.write_text(render_config(SECRET, "examples.people", layout(3), []))  # an operator added s2
    cluster.merge("s0", report(2, [(0, 9, "moved", 2, "s2"), (10, 8191, "owned", 0, None)]))
    assert cluster.shard_for_slot(0) == "s2"
    assert [r.id for r in cluster.shard("s2").replicas] == ["s2r0", "s2r1", "s2r2"]


def test_frozen_ranges_stay_with_the_source_and_importing_ones_claim_nothing() -> None:
    cluster, _ = view()
    cluster.merge("s0", report(0, [(0, 99, "frozen", 0, None), (100, 8191, "owned", 0, None)]))
    cluster.merge("s1", report(0, [(0, 99, "importing", 0, None), (8192, 16383, "owned", 0, None)]))
    assert cluster.shard_for_slot(0) == "s0"


def test_members_make_a_replica_the_file_does_not_list_routable() -> None:
    cluster, _ = view()
    voters = [
        {"id": "s0r0", "raft": "127.0.0.1:7100", "http": "127.0.0.1:8100"},
        {"id": "s0r3", "raft": "127.0.0.1:7103", "http": "127.0.0.1:8103"},
    ]
    learners = [{"id": "s0r4", "raft": "127.0.0.1:7104", "http": "127.0.0.1:8104"}]
    members = {"voters": voters, "learners": learners}
    cluster.merge("s0", report(0, [(0, 8191, "owned", 0, None)], members=members, applied_index=20))
    assert [r.id for r in cluster.shard("s0").replicas] == ["s0r0", "s0r3"]
    assert cluster.shard("s0").replicas[0] is cluster.config.replica("s0r0")  # the file's entry, data dir and all
    assert [r.id for r in cluster.learners("s0")] == ["s0r4"]
    # a lagging replica's older member list does not bring the removed ones back
    old = {"voters": [{"id": "s0r1", "raft": "127.0.0.1:7101", "http": "127.0.0.1:8101"}], "learners": []}
    cluster.merge("s0", report(0, [(0, 8191, "owned", 0, None)], members=old, applied_index=5))
    assert [r.id for r in cluster.shard("s0").replicas] == ["s0r0", "s0r3"]


def test_patch_takes_a_wrong_shard_answer_at_once() -> None:
    cluster, _ = view()
    replicas = [{"id": "s1r0", "raft": "127.0.0.1:7110", "http": "127.0.0.1:8110"}]
    assert cluster.patch({"slot": 7, "owner": "s1", "epoch": 2, "replicas": replicas})
    assert cluster.shard_for_slot(7) == "s1" and cluster.shard_for_slot(8) == "s0"
    # an answer naming no owner, or an older claim than the view holds, changes nothing
    assert not cluster.patch({"slot": 9, "owner": None, "epoch": 2, "replicas": []})
    assert not cluster.patch({"slot": 7, "owner": "s0", "epoch": 1, "replicas": []})
    assert cluster.shard_for_slot(7) == "s1"


def test_refresh_asks_every_group_and_falls_through_replicas_that_do_not_answer() -> None:
    cluster, fake = view()
    fake.reports["s0"] = report(5, [(0, 4095, "owned", 0, None), (4096, 8191, "moved", 5, "s1")])
    fake.reports["s1"] = report(5, [(4096, 16383, "owned", 5, None)])
    fake.down = {"s0r0", "s0r1"}
    asyncio.run(cluster.refresh())
    assert cluster.ranges_of("s1") == [[4096, 16383]]
    assert cluster.group_epoch("s0") == 5
    assert fake.asked.count("s0r2") == 1 and "s1r1" not in fake.asked  # s1's first replica answered


def test_concurrent_refreshes_share_one_round() -> None:
    cluster, fake = view()
    fake.reports = {"s0": report(0, []), "s1": report(0, [])}

    async def both() -> None:
        await asyncio.gather(cluster.refresh(), cluster.refresh())

    asyncio.run(both())
    assert len(fake.asked) == 2


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 0, 2]])
def test_merging_in_any_order_gives_the_same_map(order: list[int]) -> None:
    claims = [(0, 99, "s1", 3), (50, 60, "s2", 5), (0, 8191, "s0", 1)]
    slot_map = SlotMap([])
    for i in order:
        slot_map.claim(*claims[i])
    assert [slot_map.owner(s) for s in (0, 49, 50, 60, 61, 99, 100)] == ["s1", "s1", "s2", "s2", "s1", "s1", "s0"]
    assert slot_map.epoch == 5
