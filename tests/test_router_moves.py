"""The router follows slot moves (design section 2): ``wrong_shard`` redirects, waits on moving slots,
scatter coverage, per-slot bulk ids, co-located includes, members and ``OutcomeUnknown`` across groups.

The groups are a fake client whose truth is a slot map: a group refuses every
slot it does not own, as the state machine's fence does, in the documented
error shapes; reads and scatter answers carry ``owned``.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from consensus.slots import SLOT_COUNT, slot_of
from models.errors import DocraftError, NotLeader, OutcomeUnknown, SlotFrozen, SlotsUnknown, WrongShard
from node.cluster_secret import new_secret
from node.config import ClusterConfig, ReplicaConfig, parse_config, render_config
from node.consistency import Consistency
from node.router import Router
from node.slot_map import SlotMap
from query.app import load_app

APP = load_app("examples.people")


def two_shards() -> ClusterConfig:
    def replica(s: int, r: int) -> tuple[str, str, str, str]:
        return f"s{s}r{r}", f"127.0.0.1:{7000 + 3 * s + r}", f"127.0.0.1:{9000 + 3 * s + r}", "."

    shards = [(f"s{s}", [replica(s, r) for r in range(3)]) for s in range(2)]
    return parse_config(tomllib.loads(render_config(new_secret(), "examples.people", shards, [])), Path("/x/c.toml"))


def key_in(first: int, last: int, start: int = 0) -> int:
    """The first integer key from ``start`` whose slot lies in ``first..last``."""
    return next(k for k in range(start, 10**6) if first <= slot_of(k) <= last)


class MovingGroups:
    """Two groups whose slots are ``truth``'s; each refuses the others' slots (``wrong_shard``)."""

    def __init__(self, config: ClusterConfig) -> None:
        self.truth = SlotMap(config.shards)
        self.frozen: dict[int, int] = {}  # slot -> how many more writes to refuse as slot_frozen
        self.failures: dict[str, list[DocraftError]] = {}  # shard -> errors its next writes raise
        self.leaders = {s.id: s.replicas[0].id for s in config.shards}
        self.stale_owned: list[dict[str, list[list[int]]]] = []  # scatter rounds answered with these `owned`
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def is_local(self, replica: ReplicaConfig) -> bool:
        return False

    def _leads(self, replica: ReplicaConfig) -> None:
        if self.leaders[replica.shard] != replica.id:
            raise NotLeader("fake: not me")

    def _refusal(self, shard: str, slot: int) -> DocraftError | None:
        if self.frozen.get(slot):
            self.frozen[slot] -= 1
            return SlotFrozen("fake: moving", slot=slot, move="m1", retry_after=0.01)
        owner = self.truth.owner(slot)
        if owner != shard:
            version = self.truth.version(slot)
            return WrongShard("fake: moved", slot=slot, owner=owner, shard=owner, epoch=version, replicas=[])
        return None

    def _one(self, shard: str, command: dict[str, Any]) -> dict[str, Any]:
        if "slot" in command:
            slot = command["slot"]
        else:
            slot = slot_of(APP.endpoint(command["endpoint"]).shard_key_of(command["args"]))
        refusal = self._refusal(shard, slot)
        if refusal is not None:
            return refusal.to_json()
        if command["type"] == "insert_batch":
            return {"ok": [{"ok": doc["id"]} for doc in command["docs"]]}
        return {"ok": {"applied_by": shard}}

    async def write(self, replica: ReplicaConfig, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._leads(replica)
        self.calls.append((replica.shard, command))
        pending = self.failures.get(replica.shard)
        if pending:
            raise pending.pop(0)
        if command["type"] == "insert_parts":  # each part is refused or applied alone, as its insert_batch is
            return {"ok": [self._one(replica.shard, {"type": "insert_batch", **part}) for part in command["parts"]]}
        return self._one(replica.shard, command)

    def owned(self, shard: str) -> list[list[int]]:
        return self.truth.ranges().get(shard, [])

    async def read(self, replica: ReplicaConfig, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._leads(replica)
        self.calls.append((replica.shard, request))
        owned = self.stale_owned[0][replica.shard] if self.stale_owned else self.owned(replica.shard)
        if "lookup" in request:
            items = [{"id": v, "user_id": v, "item": "x", "amount": 1.0} for v in request["lookup"]["values"]]
            return {"kind": "page", "items": items, "owned": owned}
        args = request["args"]
        if args.get("id") is not None:
            refusal = self._refusal(replica.shard, slot_of(args["id"]))
            if refusal is not None:
                raise refusal
        page: dict[str, Any] = {"kind": "page", "model": "User", "items": [], "next": None, "plan": []}
        return {**page, "order_by": "id", "descending": False, "limit": 100, "owned": owned}

    async def slots(self, replica: ReplicaConfig, timeout: float = 1.0, counts: bool = False) -> dict[str, Any]:
        if self.stale_owned:
            self.stale_owned.pop(0)  # the refresh sees the groups as they are now
        ranges = self.owned(replica.shard)
        versions = [
            {"first": f, "last": last, "state": "owned", "version": self.truth.version(f)} for f, last in ranges
        ]
        return {"initialized": True, "epoch": self.truth.epoch, "ranges": versions, "members": None, "moves": []}

    async def status(self, replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
        role = "leader" if self.leaders[replica.shard] == replica.id else "follower"
        return {"id": replica.id, "shard": replica.shard, "role": role, "term": 1, "leader_raft": None}


def router(deadline: float = 5.0) -> tuple[Router, MovingGroups]:
    config = two_shards()
    groups = MovingGroups(config)
    return Router(config, APP, groups, deadline=deadline), groups  # type: ignore[arg-type]


def insert_user(routing: Router, uid: int, key: str = "k1") -> dict[str, Any]:
    args = {"id": [str(uid)], "first_name": ["A"], "last_name": ["B"], "country": ["FR"]}
    return asyncio.run(routing.call("insert_user", "POST", args, None, key))


def writes(groups: MovingGroups) -> list[tuple[str, str]]:
    return [(shard, c["request_id"]) for shard, c in groups.calls if "request_id" in c]


def test_wrong_shard_patches_the_view_and_retries_at_the_owner_with_the_same_request_id() -> None:
    routing, groups = router()
    uid = key_in(0, 8191)  # the file says s0
    groups.truth.claim(slot_of(uid), slot_of(uid), "s1", 1)  # but it moved to s1 at epoch 1
    assert insert_user(routing, uid)["result"] == {"applied_by": "s1"}
    assert writes(groups) == [("s0", "key:k1"), ("s1", "key:k1")]
    assert routing.view.shard_for_slot(slot_of(uid)) == "s1"
    groups.calls.clear()
    insert_user(routing, uid, "k2")  # a corrected router goes straight to the owner
    assert writes(groups) == [("s1", "key:k2")]


def test_a_frozen_slot_is_written_once_the_move_lets_it() -> None:
    routing, groups = router()
    uid = key_in(0, 8191)
    groups.frozen[slot_of(uid)] = 3
    assert insert_user(routing, uid)["result"] == {"applied_by": "s0"}
    assert writes(groups) == [("s0", "key:k1")] * 4


def test_a_move_that_outlasts_the_deadline_answers_slot_frozen() -> None:
    routing, groups = router(deadline=0.2)
    uid = key_in(0, 8191)
    groups.frozen[slot_of(uid)] = 10**6
    started = time.monotonic()
    with pytest.raises(SlotFrozen):
        insert_user(routing, uid)
    assert time.monotonic() - started < 1.0


def test_a_key_read_follows_the_move() -> None:
    routing, groups = router()
    uid = key_in(8192, SLOT_COUNT - 1)
    groups.truth.claim(slot_of(uid), slot_of(uid), "s0", 2)
    asyncio.run(routing.call("get_user", "GET", {"id": [str(uid)]}, None))
    assert [shard for shard, _ in groups.calls] == ["s1", "s0"]


def test_a_scatter_whose_answers_overlap_is_sent_again_after_a_refresh() -> None:
    routing, groups = router()
    # s0 moved 0..99 to s1, but the first round's s0 answer still holds them (a lagging replica)
    groups.truth.claim(0, 99, "s1", 1)
    groups.stale_owned = [{"s0": [[0, 8191]], "s1": [[0, 99], [8192, 16383]]}]
    asyncio.run(routing.call("get_user", "GET", {"country": ["FR"]}, None))
    assert [shard for shard, _ in groups.calls] == ["s0", "s1", "s0", "s1"]
    assert routing.view.ranges_of("s1") == [[0, 99], [8192, 16383]]


def test_a_scatter_that_never_covers_every_slot_answers_slots_unknown() -> None:
    routing, groups = router(deadline=0.3)
    gap = {"s0": [[0, 8000]], "s1": [[8192, 16383]]}
    groups.stale_owned = [gap] * 1000
    with pytest.raises(SlotsUnknown):
        asyncio.run(routing.call("get_user", "GET", {"country": ["FR"]}, None))


def test_a_bulk_insert_is_one_command_per_group_of_per_slot_parts() -> None:
    routing, groups = router()
    uids = [key_in(0, 8191), key_in(0, 8191, 1000), key_in(8192, SLOT_COUNT - 1)]
    docs = [{"id": u, "first_name": "A", "last_name": "B", "country": "FR"} for u in uids]
    results = asyncio.run(routing.insert_batch("User", docs, "bulk1"))
    assert results == [{"ok": u} for u in uids]
    batches = {shard: [part["request_id"] for part in command["parts"]] for shard, command in groups.calls}
    assert batches == {
        "s0": sorted((f"key:bulk1:slot:{slot_of(u)}" for u in uids[:2]), key=lambda i: int(i.rsplit(":", 1)[1])),
        "s1": [f"key:bulk1:slot:{slot_of(uids[2])}"],
    }


def test_a_bulk_retry_after_a_move_keeps_each_slots_id_and_documents() -> None:
    routing, groups = router()
    uids = [key_in(0, 8191), key_in(8192, SLOT_COUNT - 1)]
    docs = [{"id": u, "first_name": "A", "last_name": "B", "country": "FR"} for u in uids]
    moved = slot_of(uids[0])
    groups.truth.claim(moved, moved, "s1", 1)
    assert asyncio.run(routing.insert_batch("User", docs, "bulk2")) == [{"ok": u} for u in uids]
    sent = [(shard, p["request_id"], [d["id"] for d in p["docs"]]) for shard, b in groups.calls for p in b["parts"]]
    first_try = [("s0", f"key:bulk2:slot:{moved}", [uids[0]]), ("s1", f"key:bulk2:slot:{slot_of(uids[1])}", [uids[1]])]
    assert sent == [*first_try, ("s1", f"key:bulk2:slot:{moved}", [uids[0]])]


def test_co_located_children_are_read_at_the_parents_current_owner() -> None:
    routing, groups = router()
    uid = key_in(0, 8191)
    groups.truth.claim(slot_of(uid), slot_of(uid), "s1", 3)  # the view still says s0

    def lookup(values: list[Any]) -> dict[str, Any]:
        return {"lookup": {"model": "Order", "field": "user_id", "values": values}, "consistency": "leader"}

    answers = asyncio.run(routing.read_keys([uid], lookup, Consistency.LEADER, time.monotonic() + 5))
    assert [shard for shard, _ in groups.calls] == ["s0", "s1"]  # s0's answer did not hold the slot: dropped
    assert [item["user_id"] for answer in answers for item in answer["items"]] == [uid]


def test_an_attempt_that_may_have_landed_stays_outcome_unknown_across_a_redirect() -> None:
    routing, groups = router(deadline=0.5)
    uid = key_in(0, 8191)
    groups.failures["s0"] = [OutcomeUnknown("fake: timed out")]
    groups.truth.claim(slot_of(uid), slot_of(uid), "s1", 1)
    groups.leaders["s1"] = "nobody"
    with pytest.raises(OutcomeUnknown) as caught:
        insert_user(routing, uid)
    assert caught.value.details["idempotency_key"] == "k1"


def test_a_voter_learned_from_members_is_followed_when_it_leads() -> None:
    routing, groups = router()
    voters = [{"id": "s0r3", "raft": "127.0.0.1:7103", "http": "127.0.0.1:9103"}]
    report = {"initialized": True, "epoch": 0, "ranges": [], "members": {"voters": voters, "learners": []}}
    routing.view.merge("s0", {**report, "applied_index": 7})
    groups.leaders["s0"] = "s0r3"
    insert_user(routing, key_in(0, 8191))
    assert routing.view.leaders.leaders["s0"] is not None and routing.view.leaders.leaders["s0"].id == "s0r3"
