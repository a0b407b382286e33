"""The slot table and the fence at apply (design section 2): a group writes only the slots it owns.

``SlotTable`` splits and merges ranges and answers each state with its error; the state machine refuses a
write for a slot it does not own (``wrong_shard`` for a slot it never held or gave away), never remembering
the refusal, and a mutation touching any document of another slot it does not hold is ``cross_shard_write``,
rolled back whole even if app code caught the refusal; for models placed by their primary key, reads inside a
mutation are fenced too. Before ``init_slots`` nothing is fenced (log entries from before the upgrade replay as
they were applied), and a replica proposes no write then (``slots_unknown``). Reads: ``check_read``,
``readable_ranges``, ``slots_report``; a replica's ``ShardService`` checks a key-addressed read's slot and tags
scatter answers with ``owned``. Snapshots of format 4 keep the table; formats 2 and 3 load with no table.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import ujson

from consensus.slots import SLOT_COUNT, SlotRange, SlotTable, parse_ranges, slot_of
from consensus.state_machine import SNAPSHOT_FORMAT, Result, StateMachine
from models.errors import (
    BadRequest,
    CrossShardWrite,
    DocraftError,
    SlotFrozen,
    SlotImporting,
    SlotsUnknown,
    WrongShard,
)
from node.shard_map import ShardMap
from node.shard_service import ShardService
from query import WriteView, mutation
from query.app import App, load_app
from tests.apps.slots_app import Counter, add_to_both
from tests.machines import OWN_ALL, insert_batch
from tests.test_replica_checks import CONFIG, key_on

PEOPLE = load_app("examples.people")


@mutation(shard_key="id")
def add_best_effort(db: WriteView, id: int, other: int) -> dict[str, Any]:
    """Add 1 to two counters, ignoring a failure on the second: the app pattern that must not swallow the fence."""
    with contextlib.suppress(DocraftError):
        add_to_both(db, id, other)
    return {"done": True}


@mutation(shard_key="id")
def touch_other(db: WriteView, id: int, other: int, how: str) -> Any:
    """Read, update or delete counter ``other`` from a mutation routed by ``id``."""
    if how == "get":
        return db.get(Counter, other)
    if how == "update":
        return db.update(Counter, other, {"value": 1})
    return db.delete(Counter, other)


SLOTS_APP = load_app("tests.apps.slots_app")
COUNTERS = App(
    "tests.test_slots",
    dict(SLOTS_APP.models),
    {**SLOTS_APP.endpoints, "add_best_effort": add_best_effort, "touch_other": touch_other},
)


def add(key: int, amount: int = 1, request_id: str | None = None) -> dict[str, Any]:
    command: dict[str, Any] = {"type": "mutation", "endpoint": "add", "args": {"id": key, "amount": amount}}
    return command if request_id is None else {**command, "request_id": request_id}


def owning(ranges: list[list[int]], app: Any = COUNTERS) -> StateMachine:
    machine = StateMachine(app)
    assert "ok" in machine.apply({"type": "init_slots", "ranges": ranges})
    return machine


def code_of(result: Result) -> str | None:
    return result["error"]["code"] if "error" in result else None


# -- SlotTable ----------------------------------------------------------------------------------------


def test_assign_splits_the_ranges_it_cuts_and_merges_equal_neighbours() -> None:
    table = SlotTable()
    table.assign(0, 99, SlotRange(0, 0, "owned", 0))
    table.assign(10, 19, SlotRange(0, 0, "moved", 3, owner="s1"))
    assert [(r.first, r.last, r.state) for r in table.ranges] == [(0, 9, "owned"), (10, 19, "moved"), (20, 99, "owned")]
    table.assign(10, 19, SlotRange(0, 0, "owned", 0))
    assert [(r.first, r.last, r.state, r.version) for r in table.ranges] == [(0, 99, "owned", 0)]
    table.assign(50, 200, None)
    assert [(r.first, r.last) for r in table.ranges] == [(0, 49)]
    assert table.find(49) is not None and table.find(50) is None


def test_restate_keeps_each_ranges_version_and_slot_ranges_joins_neighbours() -> None:
    table = SlotTable()
    table.assign(0, 9, SlotRange(0, 0, "owned", 0))
    table.assign(10, 19, SlotRange(0, 0, "owned", 4))
    table.restate(5, 14, "frozen", "m1")
    assert [(r.first, r.last, r.state, r.version, r.move) for r in table.ranges] == [
        (0, 4, "owned", 0, None),
        (5, 9, "frozen", 0, "m1"),
        (10, 14, "frozen", 4, "m1"),
        (15, 19, "owned", 4, None),
    ]
    assert table.slot_ranges({"owned", "frozen"}) == [[0, 19]]
    assert table.slot_ranges({"frozen"}) == [[5, 14]]
    assert table.states_of([(0, 30)]) == {"owned", "frozen", None}


def test_a_write_touching_another_slot_not_held_here_is_cross_shard_write_and_a_moving_one_waits() -> None:
    table = SlotTable()
    assert table.touch_refusal(5, routed=6) is None  # not initialized: log entries from before slots
    table.initialized = True
    table.assign(0, 9, SlotRange(0, 0, "owned", 0))
    table.assign(10, 19, SlotRange(0, 0, "moved", 3, owner="s1"))
    table.assign(20, 29, SlotRange(0, 0, "frozen", 0, move="m4"))
    assert table.touch_refusal(5, routed=6) is None
    moved, never_held = table.touch_refusal(10, routed=5), table.touch_refusal(40, routed=5)
    assert isinstance(moved, CrossShardWrite) and moved.details == {"slot": 10, "owner": "s1"}
    assert isinstance(never_held, CrossShardWrite) and never_held.details == {"slot": 40, "owner": None}
    assert isinstance(table.touch_refusal(20, routed=5), SlotFrozen)  # retried: the move settles it
    assert isinstance(table.touch_refusal(10, routed=10), WrongShard)  # the routed slot: follow the owner
    assert isinstance(table.touch_refusal(10, routed=None), WrongShard)


def test_each_state_answers_with_its_own_error() -> None:
    table = SlotTable()
    assert isinstance(table.refusal(5, {"owned"}), SlotsUnknown)
    table.initialized = True
    table.assign(0, 0, SlotRange(0, 0, "owned", 0))
    table.assign(1, 1, SlotRange(0, 0, "frozen", 0, move="m"))
    table.assign(2, 2, SlotRange(0, 0, "importing", 2, move="m"))
    replicas = ({"id": "s1r0", "raft": "h:1", "http": "h:2"},)
    table.assign(3, 3, SlotRange(0, 0, "moved", 2, owner="s1", replicas=replicas))
    assert table.refusal(0, {"owned"}) is None
    frozen = table.refusal(1, {"owned"})
    assert isinstance(frozen, SlotFrozen) and frozen.details == {"slot": 1, "move": "m", "retry_after": 0.05}
    assert isinstance(table.refusal(2, {"owned", "frozen"}), SlotImporting)
    moved = table.refusal(3, {"owned"})
    assert isinstance(moved, WrongShard)
    assert moved.details == {"slot": 3, "owner": "s1", "shard": "s1", "epoch": 2, "replicas": list(replicas)}
    absent = table.refusal(4, {"owned"})
    assert isinstance(absent, WrongShard) and absent.details["owner"] is None
    assert table.refusal(1, {"owned", "frozen"}) is None
    assert SlotTable.from_json(ujson.loads(ujson.dumps(table.to_json()))).to_json() == table.to_json()


@pytest.mark.parametrize(
    "ranges",
    [[[0, SLOT_COUNT]], [[-1, 3]], [[5, 4]], [[0, 5], [5, 9]], [[True, 3]], [[1]], "0-5", [[0, 1.5]]],
)
def test_slot_ranges_out_of_bounds_reversed_or_overlapping_are_bad_requests(ranges: Any) -> None:
    with pytest.raises(BadRequest):
        parse_ranges(ranges, "slots")
    assert parse_ranges([[9, 10], [0, 3]], "slots") == [(0, 3), (9, 10)]


# -- init_slots and the fence -----------------------------------------------------------------------------


def test_before_init_slots_writes_logged_before_the_upgrade_replay_unfenced() -> None:
    # A replica restarting on the new code replays its old log before the new leader's init_slots.
    machine = StateMachine(COUNTERS)
    assert machine.apply(add(1, request_id="r"), index=1) == {"ok": {"id": 1, "value": 1}}
    old_batch = {"type": "insert_batch", "model": "Counter", "docs": [{"id": 2}], "request_id": "b"}  # no slot
    assert machine.apply(old_batch, index=2) == {"ok": [{"ok": 2}]}
    both = {"type": "mutation", "endpoint": "add_to_both", "args": {"id": 3, "other": 4}, "request_id": "c"}
    assert "ok" in machine.apply(both, index=3)  # two slots: no table to check them against yet
    assert machine.apply({"type": "init_slots", "ranges": [[slot_of(1), slot_of(1)]]}, index=4)["ok"]
    assert machine.apply(add(1, request_id="r")) == {"ok": {"id": 1, "value": 1}}  # remembered
    assert code_of(machine.apply(add(2, request_id="d"))) == "wrong_shard"  # fenced from now on
    assert {doc["id"] for doc in machine.collections["Counter"].all()} == {1, 2, 3, 4}


def test_a_mutation_writing_a_document_of_another_slot_not_held_here_is_cross_shard_write_rolled_back_whole() -> None:
    ours, theirs = 1, next(k for k in range(2, 100) if slot_of(k) != slot_of(1))
    machine = owning([[slot_of(ours), slot_of(ours)]])
    command = {"type": "mutation", "endpoint": "add_to_both", "args": {"id": ours, "other": theirs}, "request_id": "r"}
    refused = machine.apply(command)
    assert code_of(refused) == "cross_shard_write"  # not wrong_shard: no router resends it
    assert refused["error"]["details"] == {"slot": slot_of(theirs), "owner": None}
    assert machine.document_count() == {"Counter": 0, "Tag": 0}
    assert machine.snapshot()["recent_requests"] == []


def test_app_code_that_catches_the_fences_refusal_cannot_commit_half_of_the_mutation() -> None:
    ours, theirs = 1, next(k for k in range(2, 100) if slot_of(k) != slot_of(1))
    machine = owning([[slot_of(ours), slot_of(ours)]])
    command = {"type": "mutation", "endpoint": "add_best_effort", "args": {"id": ours, "other": theirs}}
    refused = machine.apply({**command, "request_id": "r"})
    assert code_of(refused) == "cross_shard_write" and refused["error"]["details"]["slot"] == slot_of(theirs)
    assert machine.document_count()["Counter"] == 0 and "r" not in machine.recent


@pytest.mark.parametrize("how", ["get", "update", "delete"])
def test_a_mutation_reading_a_key_of_another_slot_not_held_here_is_refused_not_read_as_absent(how: str) -> None:
    ours, theirs = 1, next(k for k in range(2, 100) if slot_of(k) != slot_of(1))
    machine = owning([[slot_of(ours), slot_of(ours)]])
    command = {"type": "mutation", "endpoint": "touch_other", "args": {"id": ours, "other": theirs, "how": how}}
    refused = machine.apply(command)
    assert code_of(refused) == "cross_shard_write" and refused["error"]["details"]["slot"] == slot_of(theirs)
    assert machine.apply({**command, "args": {"id": ours, "other": ours, "how": "get"}}) == {"ok": None}


def test_an_insert_batch_without_slot_fences_each_document_alone() -> None:
    stranger = next(k for k in range(2, 100) if slot_of(k) != slot_of(1))
    machine = owning([[slot_of(1), slot_of(1)]])
    unrouted = {"type": "insert_batch", "model": "Counter", "docs": [{"id": 1}, {"id": stranger}], "request_id": "u"}
    result = machine.apply(unrouted)
    assert result["ok"][0] == {"ok": 1} and code_of(result["ok"][1]) == "wrong_shard"
    assert result["ok"][1]["error"]["details"]["slot"] == slot_of(stranger)
    assert [c["id"] for c in machine.collections["Counter"].all()] == [1]
    bad_slot = machine.apply({**unrouted, "slot": SLOT_COUNT, "request_id": "v"})
    assert code_of(bad_slot) == "bad_request" and bad_slot["error"]["details"] == {"param": "slot"}


def test_documents_of_another_slot_than_an_insert_batchs_get_wrong_shard() -> None:
    machine = owning([[0, SLOT_COUNT - 1]])
    stranger = next(k for k in range(2, 100) if slot_of(k) != slot_of(1))
    result = machine.apply(insert_batch("Counter", [{"id": 1}, {"id": stranger}], 1, request_id="b"))
    assert result["ok"][0] == {"ok": 1} and code_of(result["ok"][1]) == "wrong_shard"
    assert [c["id"] for c in machine.collections["Counter"].all()] == [1]
    assert [[rid, slot] for rid, _, _, slot in machine.snapshot()["recent_requests"]] == [["b", slot_of(1)]]


def test_co_located_children_are_fenced_by_their_parents_slot() -> None:
    parent = 1
    machine = owning([[slot_of(parent), slot_of(parent)]])
    machine.apply(add(parent))
    child = next(k for k in range(2, 1000) if slot_of(k) != slot_of(parent))  # its own id's slot is not ours
    command = {"type": "mutation", "endpoint": "tag", "args": {"id": child, "counter_id": parent}}
    assert machine.apply(command) == {"ok": {"id": child, "counter_id": parent}}
    assert machine.slots_report(counts=True)["counts"] == {str(slot_of(parent)): 2}  # the counter and its tag


# -- reads ------------------------------------------------------------------------------------------


def test_reads_are_served_for_owned_and_frozen_slots_only() -> None:
    machine = owning([[0, 9]])
    machine.check_read(5)
    with pytest.raises(WrongShard):
        machine.check_read(10)
    with pytest.raises(SlotsUnknown):
        StateMachine(COUNTERS).check_read(5)
    report = machine.slots_report()
    assert report["initialized"] and report["epoch"] == 0 and report["moves"] == [] and report["members"] is None
    assert report["ranges"] == [
        {"first": 0, "last": 9, "state": "owned", "version": 0, "move": None, "owner": None, "replicas": []}
    ]


def test_set_members_replaces_them_whole() -> None:
    machine = StateMachine(COUNTERS)
    voter = {"id": "s0r0", "raft": "h:1", "http": "h:2"}
    assert machine.apply({"type": "set_members", "voters": [voter], "learners": []}) == {
        "ok": {"voters": [voter], "learners": []}
    }
    assert code_of(machine.apply({"type": "set_members", "voters": [{"id": 1}], "learners": []})) == "bad_request"
    assert machine.slots_report()["members"] == {"voters": [voter], "learners": []}


class LocalGroup:
    """Stands in for ``Replica`` where ``ShardService`` reads: a state machine read in place."""

    def __init__(self, machine: StateMachine) -> None:
        self.state_machine = machine
        self.fault = None

    def check_leader_read(self) -> None:
        return None

    def read_locally(self, reader: Any) -> Any:
        return reader(self.state_machine)

    def status(self) -> dict[str, Any]:
        return {"role": "leader", "term": 1, "applied_index": 0}


def service_holding(shard_id: str) -> ShardService:
    machine = owning([list(r) for r in CONFIG.shard(shard_id).slots], PEOPLE)
    replica = CONFIG.shard(shard_id).replicas[0]
    return ShardService(LocalGroup(machine), replica, ShardMap(CONFIG))  # type: ignore[arg-type]


def test_a_replica_answers_a_key_read_only_for_its_slots_and_tags_scatter_answers_with_them() -> None:
    service = service_holding("s0")
    read = {"endpoint": "get_user", "consistency": "leader"}
    ours = asyncio.run(service.read({**read, "args": {"id": key_on("s0")}}))
    assert ours["items"] == [] and "owned" not in ours
    with pytest.raises(WrongShard):
        asyncio.run(service.read({**read, "args": {"id": key_on("s1")}}))
    scatter = asyncio.run(service.read({**read, "args": {"country": "FR"}}))
    assert scatter["owned"] == [list(r) for r in CONFIG.shard("s0").slots]


def test_a_replica_names_the_cluster_files_owner_of_a_slot_it_never_held() -> None:
    service = service_holding("s0")
    command = {"type": "mutation", "endpoint": "insert_user", "request_id": "r"}
    args = {"id": key_on("s1"), "first_name": "a", "last_name": "b", "country": "c"}
    with pytest.raises(WrongShard) as refused:
        asyncio.run(service.write({**command, "args": args}))
    assert refused.value.details["owner"] == "s1" and refused.value.details["epoch"] == 0


def test_a_replica_proposes_no_write_before_its_slot_table_is_committed() -> None:
    replica = LocalGroup(StateMachine(PEOPLE))
    service = ShardService(replica, CONFIG.shard("s0").replicas[0], ShardMap(CONFIG))  # type: ignore[arg-type]
    args = {"id": key_on("s0"), "first_name": "a", "last_name": "b", "country": "c"}
    with pytest.raises(SlotsUnknown):
        asyncio.run(service.write({"type": "mutation", "endpoint": "insert_user", "args": args, "request_id": "r"}))
    batch = {"type": "insert_batch", "model": "User", "docs": [args], "request_id": "b"}
    with pytest.raises(SlotsUnknown):
        asyncio.run(service.write(batch))


def test_init_slots_applies_once_and_later_ones_change_nothing() -> None:
    machine = owning([[0, 99]])
    assert machine.apply({"type": "init_slots", "ranges": [[0, SLOT_COUNT - 1]]}) == {"ok": [[0, 99]]}
    assert machine.readable_ranges() == [[0, 99]]
    assert code_of(machine.apply({"type": "init_slots", "ranges": [[3, 1]]})) == "bad_request"


def test_a_write_for_a_slot_never_held_is_wrong_shard_and_not_remembered() -> None:
    key = 1
    machine = owning([[0, slot_of(key) - 1]])
    result = machine.apply(add(key, request_id="r"))
    assert code_of(result) == "wrong_shard" and result["error"]["details"]["slot"] == slot_of(key)
    assert machine.snapshot()["recent_requests"] == [] and machine.document_count()["Counter"] == 0


# -- snapshots ---------------------------------------------------------------------------------------


def test_format_4_snapshots_keep_the_table_members_and_request_slots() -> None:
    machine = owning([[0, 9], [20, 30]])
    machine.apply({"type": "set_members", "voters": [], "learners": []})
    key = next(k for k in range(100_000) if slot_of(k) <= 9)
    machine.apply(add(key, request_id="r"))
    snapshot = machine.snapshot()
    assert snapshot["format"] == SNAPSHOT_FORMAT == 4
    assert snapshot["recent_requests"][0][3] == slot_of(key)
    restored = StateMachine(COUNTERS)
    restored.restore(ujson.loads(ujson.dumps(snapshot)))
    assert ujson.dumps(restored.snapshot()) == ujson.dumps(snapshot)
    assert restored.readable_ranges() == [[0, 9], [20, 30]]


def test_a_format_3_snapshot_loads_with_no_table_until_init_slots() -> None:
    machine = owning([[0, SLOT_COUNT - 1]])
    machine.apply(add(1, request_id="r"))
    snapshot = ujson.loads(ujson.dumps(machine.snapshot()))
    for key in ("slots", "moves", "incoming", "members"):
        del snapshot[key]
    snapshot["format"] = 3
    snapshot["recent_requests"] = [entry[:3] for entry in snapshot["recent_requests"]]
    restored = StateMachine(COUNTERS)
    restored.restore(snapshot)
    assert not restored.slots_report()["initialized"]
    assert restored.apply(add(1, request_id="r")) == {"ok": {"id": 1, "value": 1}}  # remembered: the first answer
    assert restored.apply(add(1, request_id="s")) == {"ok": {"id": 1, "value": 2}}  # logged after it: replayed
    restored.apply(OWN_ALL)
    assert restored.apply(add(1, request_id="t")) == {"ok": {"id": 1, "value": 3}}
