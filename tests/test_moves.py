"""Moving slots between two groups' state machines, S (source) and T (target): design section 3.

Each step is a command in one group's log (``consensus.moves``); the export is a read of S. Checked here:
documents, co-located children and remembered request ids arrive on T and leave S; a request id retried on T
returns its first result; S refuses writes to a frozen range and T serves nothing before ``import_commit``;
every step is idempotent by move id; epochs and endings are compare-and-set; abort restores both and raises
their epochs, so a new plan can retry; a primary key collision is refused by ``import_docs``, before S
decides, and T's writes keep the keys arriving free; a mutation on S reading a moved document is refused; a
snapshot taken mid-move continues identically; and, with hypothesis, random interleavings of retried writes
and (resent) move steps end with every document on exactly one group and every request id applied once.
"""

from __future__ import annotations

from typing import Any

import pytest
import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.slots import SLOT_COUNT, slot_of
from consensus.state_machine import Result, StateMachine
from models.errors import BadRequest, MoveRefused, SlotImporting
from query import WriteView, mutation
from query.app import App, load_app
from tests.apps.slots_app import Counter, Tag


@mutation(shard_key="counter_id")
def retag(db: WriteView, id: int, counter_id: int) -> dict[str, Any]:
    """Put tag ``id`` under counter ``counter_id``, replacing any tag with that id."""
    return db.put(Tag, {"id": id, "counter_id": counter_id})


@mutation(shard_key="id")
def copy_from(db: WriteView, id: int, other: int) -> dict[str, Any]:
    """Set counter ``id`` to counter ``other``'s value (0 if there is none): a mutation reading another slot."""
    found = db.get(Counter, other)
    return db.put(Counter, {"id": id, "value": 0 if found is None else found["value"]})


SLOTS_APP = load_app("tests.apps.slots_app")
COUNTERS = App(
    "tests.test_moves", dict(SLOTS_APP.models), {**SLOTS_APP.endpoints, "retag": retag, "copy_from": copy_from}
)
TARGET_REPLICAS = [{"id": "s1r0", "raft": "127.0.0.1:7001", "http": "127.0.0.1:8001"}]
KEY = 1
SLOT = slot_of(KEY)
MOVING = [[SLOT, SLOT]]


def add(key: int, amount: int = 1, request_id: str | None = None) -> dict[str, Any]:
    command: dict[str, Any] = {"type": "mutation", "endpoint": "add", "args": {"id": key, "amount": amount}}
    return command if request_id is None else {**command, "request_id": request_id}


def tag(child: int, parent: int, request_id: str) -> dict[str, Any]:
    args = {"id": child, "counter_id": parent}
    return {"type": "mutation", "endpoint": "tag", "args": args, "request_id": request_id}


def code_of(result: Result) -> str | None:
    return result["error"]["code"] if "error" in result else None


def reason_of(result: Result) -> str | None:
    return result["error"]["details"]["reason"] if code_of(result) == "move_refused" else None


def groups() -> tuple[StateMachine, StateMachine]:
    """S owns every slot, T none: a cluster that just gained the empty shard T."""
    source, target = StateMachine(COUNTERS), StateMachine(COUNTERS)
    source.apply({"type": "init_slots", "ranges": [[0, SLOT_COUNT - 1]]})
    target.apply({"type": "init_slots", "ranges": []})
    return source, target


def import_begin(move: str = "m1", slots: Any = None, epoch: int = 1) -> dict[str, Any]:
    return {"type": "import_begin", "move": move, "source": "s0", "slots": slots or MOVING, "epoch": epoch}


def move_begin(move: str = "m1", slots: Any = None, epoch: int = 1) -> dict[str, Any]:
    return {
        "type": "move_begin",
        "move": move,
        "target": "s1",
        "target_replicas": TARGET_REPLICAS,
        "slots": slots or MOVING,
        "epoch": epoch,
    }


def pages(source: StateMachine, move: str = "m1", limit: int = 2) -> list[dict[str, Any]]:
    """Every export page of ``move``, read from S as the rebalancer reads them."""
    found = [source.export_page(move, None, limit)]
    while found[-1]["next"] is not None:
        found.append(source.export_page(move, found[-1]["next"], limit))
    return found


def import_docs(page: dict[str, Any], batch: int, move: str = "m1") -> dict[str, Any]:
    return {"type": "import_docs", "move": move, "batch": batch, "docs": page["docs"], "requests": page["requests"]}


def import_commit(page: dict[str, Any], move: str = "m1", epoch: int = 1) -> dict[str, Any]:
    return {"type": "import_commit", "move": move, "epoch": epoch, "count": page["count"], "hash": page["hash"]}


def move_all(source: StateMachine, target: StateMachine, move: str = "m1", epoch: int = 1) -> None:
    """The whole move, each step checked ok."""
    for machine, command in ((target, import_begin(move, epoch=epoch)), (source, move_begin(move, epoch=epoch))):
        assert "ok" in machine.apply(command), command
    exported = pages(source, move)
    for batch, page in enumerate(exported):
        assert machine_ok(target, import_docs(page, batch, move))
    assert machine_ok(source, {"type": "move_commit", "move": move, "epoch": epoch})
    assert machine_ok(target, import_commit(exported[-1], move, epoch))


def machine_ok(machine: StateMachine, command: dict[str, Any]) -> bool:
    result = machine.apply(command)
    assert "ok" in result, (command, result)
    return True


def counters(machine: StateMachine) -> dict[int, int]:
    return {doc["id"]: doc["value"] for doc in machine.collections["Counter"].all()}


# -- the whole move -------------------------------------------------------------------------------------


def test_documents_children_and_request_ids_move_and_a_retry_on_the_target_returns_the_first_result() -> None:
    source, target = groups()
    first = source.apply(add(KEY, 5, request_id="r1"))
    source.apply(tag(999, KEY, request_id="t1"))  # a child whose own id is in another slot
    source.apply(add(2, 1, request_id="r2"))  # another slot: stays
    move_all(source, target)
    assert counters(target) == {KEY: 5} and [t["id"] for t in target.collections["Tag"].all()] == [999]
    assert KEY not in counters(source) and source.collections["Tag"].all() == [] and counters(source) == {2: 1}
    assert target.apply(add(KEY, 5, request_id="r1")) == first  # applied once: the first answer
    assert counters(target) == {KEY: 5}
    moved = source.apply(add(KEY, 5, request_id="r1"))  # a stale router: S names the owner
    assert code_of(moved) == "wrong_shard"
    assert moved["error"]["details"] == {
        "slot": SLOT,
        "owner": "s1",
        "shard": "s1",
        "epoch": 1,
        "replicas": TARGET_REPLICAS,
    }
    assert [rid for rid, *_ in source.snapshot()["recent_requests"]] == ["r2"]
    assert sorted(rid for rid, *_ in target.snapshot()["recent_requests"]) == ["r1", "t1"]
    assert source.slots_report()["epoch"] == target.slots_report()["epoch"] == 1
    assert target.readable_ranges() == MOVING
    assert [m["state"] for m in source.slots_report()["moves"] + target.slots_report()["moves"]] == ["committed"] * 2


def test_during_a_move_the_source_serves_reads_not_writes_and_the_target_serves_nothing() -> None:
    source, target = groups()
    source.apply(add(KEY, 1, request_id="r1"))
    target.apply(import_begin())
    source.apply(move_begin())
    refused = source.apply(add(KEY, 1, request_id="r2"))
    assert code_of(refused) == "slot_frozen" and refused["error"]["details"]["move"] == "m1"
    assert "r2" not in source.recent  # refused: its retry after the move applies it
    source.check_read(SLOT)
    assert source.readable_ranges() == [[0, SLOT_COUNT - 1]]
    assert code_of(target.apply(add(KEY, 1, request_id="r2"))) == "slot_importing"
    for batch, page in enumerate(pages(source)):
        target.apply(import_docs(page, batch))
    assert target.query("get_counter", {})["items"] == []  # what arrived waits aside until import_commit
    assert target.slots_report(counts=True)["counts"] == {}
    assert target.slots_report()["moves"][0]["docs_copied"] == 1
    with pytest.raises(SlotImporting):
        target.check_read(SLOT)


# -- idempotency, epochs, endings ------------------------------------------------------------------------


def test_every_step_resent_changes_nothing() -> None:
    source, target = groups()
    source.apply(add(KEY, 3, request_id="r1"))
    assert "ok" in target.apply(import_begin()) and "ok" in target.apply(import_begin())
    assert "ok" in source.apply(move_begin()) and "ok" in source.apply(move_begin())
    (page,) = pages(source, limit=100)
    assert target.apply(import_docs(page, 0))["ok"]["accepted"] is True
    assert target.apply(import_docs(page, 0))["ok"]["accepted"] is False  # a resent page: ignored
    assert target.slots_report()["moves"][0]["docs_copied"] == 1
    commit = {"type": "move_commit", "move": "m1", "epoch": 1}
    assert "ok" in source.apply(commit) and "ok" in source.apply(commit)
    assert "ok" in target.apply(import_commit(page)) and "ok" in target.apply(import_commit(page))
    assert target.apply(import_docs(page, 0))["ok"]["accepted"] is False  # even after the commit
    assert counters(target) == {KEY: 3}


def test_a_begin_with_an_epoch_not_above_the_groups_is_refused_unless_it_is_the_same_move_resent() -> None:
    source, target = groups()
    move_all(source, target, epoch=4)
    other = next(s for s in range(SLOT_COUNT) if s != SLOT)
    assert reason_of(source.apply(move_begin("m2", [[other, other]], epoch=4))) == "stale_epoch"
    assert reason_of(target.apply(import_begin("m2", [[other, other]], epoch=3))) == "stale_epoch"
    assert reason_of(target.apply(import_begin("m1", epoch=4))) == "committed"  # the same move, ended
    assert reason_of(target.apply(import_begin("m1", [[other, other]], epoch=4))) == "conflict"
    assert "ok" in source.apply(move_begin("m2", [[other, other]], epoch=5))
    assert reason_of(source.apply(move_begin("m3", [[0, 0]] if other else [[1, 1]], epoch=6))) == "busy"


def test_refusals_for_slots_in_the_wrong_state() -> None:
    source, target = groups()
    assert reason_of(target.apply(move_begin())) == "not_owned"  # T holds none of them
    assert reason_of(source.apply(import_begin())) == "slots_held"  # S owns them
    assert reason_of(source.apply({"type": "move_commit", "move": "nope", "epoch": 1})) == "unknown_move"
    assert code_of(target.apply(import_begin(slots=[[5, 4]]))) == "bad_request"


def test_aborts_restore_both_groups_and_are_refused_after_a_commit() -> None:
    source, target = groups()
    source.apply(add(KEY, 2, request_id="r1"))
    target.apply(import_begin())
    source.apply(move_begin())
    for batch, page in enumerate(pages(source)):
        target.apply(import_docs(page, batch))
    assert "ok" in source.apply({"type": "move_abort", "move": "m1"})
    assert "ok" in target.apply({"type": "import_abort", "move": "m1"})
    assert source.apply(add(KEY, 1, request_id="r2")) == {"ok": {"id": KEY, "value": 3}}
    assert source.slots_report()["ranges"] == [
        {
            "first": 0,
            "last": SLOT_COUNT - 1,
            "state": "owned",
            "version": 0,
            "move": None,
            "owner": None,
            "replicas": [],
        }
    ]
    assert target.slots_report()["ranges"] == [] and target.incoming == {}
    assert reason_of(source.apply({"type": "move_commit", "move": "m1", "epoch": 1})) == "aborted"
    assert "ok" in source.apply({"type": "move_abort", "move": "m1"})  # resent: still aborted
    # after a commit, an abort is refused on both sides
    move_all(source, target, move="m2", epoch=2)
    assert reason_of(source.apply({"type": "move_abort", "move": "m2"})) == "committed"
    assert reason_of(target.apply({"type": "import_abort", "move": "m2"})) == "committed"


def test_an_import_commit_that_does_not_match_what_arrived_is_refused() -> None:
    source, target = groups()
    source.apply(add(KEY, 2))
    target.apply(import_begin())
    source.apply(move_begin())
    (page,) = pages(source, limit=100)
    assert reason_of(target.apply(import_commit({**page, "count": 0}))) == "mismatch"  # nothing arrived yet
    target.apply(import_docs(page, 0))
    assert reason_of(target.apply(import_commit({**page, "hash": "0" * 32}))) == "mismatch"
    assert counters(target) == {}
    assert "ok" in target.apply(import_commit(page))


PARENT_ON_T = next(k for k in range(2, 1000) if slot_of(k) != SLOT)


def groups_sharing_a_tag_id() -> tuple[StateMachine, StateMachine]:
    """S holds counter ``KEY`` with tag 77; T owns only ``PARENT_ON_T``'s slot. Tags are placed by their
    counter, so T may hold (or later take) a tag 77 of its own."""
    source, _ = groups()
    target = StateMachine(COUNTERS)
    target.apply({"type": "init_slots", "ranges": [[slot_of(PARENT_ON_T), slot_of(PARENT_ON_T)]]})
    source.apply(add(KEY))
    source.apply(tag(77, KEY, request_id="t1"))
    target.apply(add(PARENT_ON_T))
    return source, target


def test_a_primary_key_stored_on_the_target_is_refused_by_import_docs_before_the_source_decides() -> None:
    source, target = groups_sharing_a_tag_id()
    target.apply(tag(77, PARENT_ON_T, request_id="t2"))
    target.apply(import_begin())
    source.apply(move_begin())
    (page,) = pages(source, limit=100)
    assert reason_of(target.apply(import_docs(page, 0))) == "collision"
    assert target.slots_report()["moves"][0]["docs_copied"] == 0 and target.incoming["m1"].count == 0
    # What the rebalancer does with that refusal: abort both; S owns its documents again.
    assert machine_ok(source, {"type": "move_abort", "move": "m1"})
    assert machine_ok(target, {"type": "import_abort", "move": "m1"})
    assert source.apply(add(KEY, 1)) == {"ok": {"id": KEY, "value": 2}}
    assert [t["counter_id"] for t in target.collections["Tag"].all()] == [PARENT_ON_T]


def test_a_primary_key_arriving_twice_is_refused_by_import_docs() -> None:
    source, target = groups()
    source.apply(add(KEY))
    target.apply(import_begin())
    source.apply(move_begin())
    (page,) = pages(source, limit=100)
    assert machine_ok(target, import_docs(page, 0))
    assert reason_of(target.apply(import_docs(page, 1))) == "collision"  # the same documents as another batch
    assert target.incoming["m1"].count == 1


def test_while_importing_the_target_refuses_writes_of_a_key_waiting_to_arrive_so_the_commit_installs_it() -> None:
    source, target = groups_sharing_a_tag_id()
    target.apply(import_begin())
    source.apply(move_begin())
    (page,) = pages(source, limit=100)
    assert machine_ok(target, import_docs(page, 0))
    assert code_of(target.apply(tag(77, PARENT_ON_T, request_id="t2"))) == "duplicate_key"
    put = {"type": "mutation", "endpoint": "retag", "args": {"id": 77, "counter_id": PARENT_ON_T}}
    assert code_of(target.apply(put)) == "duplicate_key"
    restarted = StateMachine(COUNTERS)  # a replica of T that loaded a snapshot taken mid-import
    restarted.restore(ujson.loads(ujson.dumps(target.snapshot())))
    assert code_of(restarted.apply(put)) == "duplicate_key"
    assert machine_ok(source, {"type": "move_commit", "move": "m1", "epoch": 1})
    assert machine_ok(target, import_commit(page))
    assert [t["counter_id"] for t in target.collections["Tag"].all()] == [KEY]
    assert code_of(target.apply(tag(77, PARENT_ON_T, request_id="t3"))) == "duplicate_key"  # taken for good


def test_after_an_abort_a_new_plan_gets_a_higher_epoch_and_a_new_move_id() -> None:
    source, target = groups()
    source.apply(add(KEY, 2))
    target.apply(import_begin())
    source.apply(move_begin())
    assert machine_ok(source, {"type": "move_abort", "move": "m1"})
    assert machine_ok(target, {"type": "import_abort", "move": "m1"})
    assert source.slots_report()["epoch"] == target.slots_report()["epoch"] == 1
    assert [r["version"] for r in source.slots_report()["ranges"]] == [0]  # slot versions unchanged
    # The rebalancer's rule: epoch 1 + the highest any group reports, and a move id made from it.
    epoch = 1 + max(group.slots_report()["epoch"] for group in (source, target))
    move_all(source, target, move=f"m{epoch}", epoch=epoch)
    assert counters(target) == {KEY: 2}


def test_a_mutation_on_the_source_reading_a_moved_document_is_refused_not_read_as_absent() -> None:
    source, target = groups()
    source.apply(add(KEY, 9))
    here = next(k for k in range(2, 1000) if slot_of(k) != SLOT)
    copy = {"type": "mutation", "endpoint": "copy_from", "args": {"id": here, "other": KEY}, "request_id": "c"}
    target.apply(import_begin())
    source.apply(move_begin())
    assert code_of(source.apply(copy)) == "slot_frozen"  # moving: retried until the move settles
    exported = pages(source)
    for batch, page in enumerate(exported):
        assert machine_ok(target, import_docs(page, batch))
    assert machine_ok(source, {"type": "move_commit", "move": "m1", "epoch": 1})
    refused = source.apply(copy)
    assert code_of(refused) == "cross_shard_write"
    assert refused["error"]["details"] == {"slot": SLOT, "owner": "s1"}
    assert here not in counters(source) and "c" not in source.recent


# -- the export --------------------------------------------------------------------------------------------


def test_export_pages_cover_every_document_and_request_once_and_refuse_other_moves() -> None:
    source, target = groups()
    keys = [k for k in range(1, 200_000) if slot_of(k) == SLOT][:5]
    for n, key in enumerate(keys):
        source.apply(add(key, 1, request_id=f"r{n}"))
    with pytest.raises(MoveRefused):
        source.export_page("m1", None, 2)  # not frozen yet
    target.apply(import_begin())
    source.apply(move_begin())
    exported = pages(source, limit=2)
    assert [len(p["docs"].get("Counter", [])) + len(p["requests"]) for p in exported] == [2, 2, 2, 2, 2]
    assert sorted(d["id"] for p in exported for d in p["docs"].get("Counter", [])) == sorted(keys)
    assert sorted(r[0] for p in exported for r in p["requests"]) == [f"r{n}" for n in range(5)]
    assert {(p["count"], p["hash"]) for p in exported} == {(5, source.slots_report()["moves"][0]["hash"])}
    with pytest.raises(BadRequest):
        source.export_page("m1", "not a cursor", 2)
    with pytest.raises(MoveRefused):
        target.export_page("m1", None, 2)  # T is not the source


def test_a_snapshot_taken_mid_move_continues_byte_identically() -> None:
    source, target = groups()
    source.apply(add(KEY, 4, request_id="r1"))
    target.apply(import_begin())
    source.apply(move_begin())
    exported = pages(source, limit=1)
    target.apply(import_docs(exported[0], 0))
    copies = []
    for machine in (source, target):
        copy = StateMachine(COUNTERS)
        copy.restore(ujson.loads(ujson.dumps(machine.snapshot())))
        assert ujson.dumps(copy.snapshot()) == ujson.dumps(machine.snapshot())
        copies.append(copy)
    source_copy, target_copy = copies
    for batch, page in enumerate(exported[1:], start=1):
        assert target.apply(import_docs(page, batch)) == target_copy.apply(import_docs(page, batch))
    commit = {"type": "move_commit", "move": "m1", "epoch": 1}
    assert source.apply(commit) == source_copy.apply(commit)
    assert target.apply(import_commit(exported[-1])) == target_copy.apply(import_commit(exported[-1]))
    assert ujson.dumps(source.snapshot()) == ujson.dumps(source_copy.snapshot())
    assert ujson.dumps(target.snapshot()) == ujson.dumps(target_copy.snapshot())


# -- random interleavings ----------------------------------------------------------------------------------

KEYS = list(range(6))
WRITES = [(f"r{n}", KEYS[n % len(KEYS)], n + 1) for n in range(12)]  # request id, key, amount: fixed per id


class Router:
    """A router that tries S, follows ``wrong_shard`` to T and leaves a moving slot for a later retry."""

    def __init__(self, groups: dict[str, list[StateMachine]]) -> None:
        self.groups = groups  # shard id -> the group's replicas (fed the same commands)
        self.acknowledged: dict[str, Result] = {}

    def apply(self, shard: str, command: dict[str, Any]) -> Result:
        results = [ujson.dumps(machine.apply(command)) for machine in self.groups[shard]]
        assert len(set(results)) == 1, results  # replicas of a group answer alike
        result: Result = ujson.loads(results[0])
        return result

    def write(self, request_id: str, key: int, amount: int) -> None:
        shard = "s0"
        for _ in range(2):
            result = self.apply(shard, add(key, amount, request_id))
            if code_of(result) != "wrong_shard":
                break
            shard = result["error"]["details"]["owner"]
        if code_of(result) in ("slot_frozen", "slot_importing"):
            return  # the client retries later
        assert "ok" in result, result
        first = self.acknowledged.setdefault(request_id, result)
        assert first == result  # a retry answers as the first application did


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[int], list[Any], bool]:
    """Move steps interleaved with writes (by index into ``WRITES``, retries common), and whether to abort."""
    moving = draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True))
    steps: list[Any] = []
    for step in ["import_begin", "move_begin", "copy", "move_commit", "import_commit"]:
        steps.extend(draw(st.lists(st.integers(0, len(WRITES) - 1), max_size=4)))
        steps.extend([step] * draw(st.integers(1, 2)))  # a step sent twice: resent after a lost answer
    steps.extend(draw(st.lists(st.integers(0, len(WRITES) - 1), max_size=4)))
    abort = draw(st.booleans())
    if abort:  # cut the move short before the commit
        cut = draw(st.integers(0, steps.index("move_commit")))
        steps = [s for n, s in enumerate(steps) if n < cut or not isinstance(s, str)]
    return moving, steps, abort


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedule=schedules())
def test_random_interleavings_leave_each_document_on_one_group_and_apply_each_request_once(
    schedule: tuple[list[int], list[Any], bool],
) -> None:
    moving_keys, steps, abort = schedule
    (s_one, t_one), (s_two, t_two) = groups(), groups()  # two replicas of each group
    router = Router({"s0": [s_one, s_two], "s1": [t_one, t_two]})
    slots = [[slot, slot] for slot in sorted({slot_of(key) for key in moving_keys})]
    exported: list[dict[str, Any]] = []
    for step in steps:
        if isinstance(step, int):
            router.write(*WRITES[step])
        elif step == "import_begin":
            router.apply("s1", import_begin(slots=slots))
        elif step == "move_begin":
            router.apply("s0", move_begin(slots=slots))
        elif step == "copy":
            exported = pages(s_one, limit=2)
            for batch, page in enumerate(exported):
                router.apply("s1", import_docs(page, batch))
        elif step == "move_commit":
            router.apply("s0", {"type": "move_commit", "move": "m1", "epoch": 1})
        elif step == "import_commit" and exported:
            router.apply("s1", import_commit(exported[-1]))
    if abort:
        router.apply("s0", {"type": "move_abort", "move": "m1"})
        router.apply("s1", {"type": "import_abort", "move": "m1"})
    for request_id, key, amount in WRITES:  # every client retries until acknowledged
        router.write(request_id, key, amount)
    source_docs, target_docs = counters(s_one), counters(t_one)
    assert not set(source_docs) & set(target_docs)  # no document on both groups
    for key in KEYS:
        applied = sum(amount for _, k, amount in WRITES if k == key)
        assert {**source_docs, **target_docs}[key] == applied  # every request id applied exactly once
        assert (key in target_docs) == (not abort and slot_of(key) in {first for first, _ in slots})
    source_ids = {rid for rid, *_ in s_one.snapshot()["recent_requests"]}
    target_ids = {rid for rid, *_ in t_one.snapshot()["recent_requests"]}
    assert not source_ids & target_ids and source_ids | target_ids == {rid for rid, _, _ in WRITES}
    assert ujson.dumps(s_one.snapshot()) == ujson.dumps(s_two.snapshot())
    assert ujson.dumps(t_one.snapshot()) == ujson.dumps(t_two.snapshot())
