"""What the cheaper bulk apply path (``bench.apply_cost``) must keep exactly as it was.

Replicas of different versions compare digests, and a snapshot written by one
version is read by the next, so these are pinned to values taken from the code
before the change: the digest and snapshot bytes of a fixed log (one of
commands as old as commit d8220fd, one of ``insert_parts``); an
``insert_parts`` part's request digest equals the digest of the
``insert_batch`` it stands for; index scans and slot pages return what a
brute-force sort by ``(value key, primary key)`` and ``(slot, primary key)``
gives. And the finding that made a bulk insert dear: each document's hash slot
is computed once.
"""

from __future__ import annotations

import gc
import hashlib
from typing import Any

import pytest
import ujson
from hypothesis import given, settings
from hypothesis import strategies as st

import consensus.state_machine as state_machine_module
from consensus.slots import SLOT_COUNT, slot_of
from consensus.state_machine import StateMachine, _digest, _insert_batch_digest, remembered_requests
from models import Model, Ref, field
from query.app import load_app
from query.collection import Collection, canonical_json
from query.ordering import KEY_MAX, value_key
from tests.machines import OWN_ALL, keys_sharing_a_slot

PROPERTY = settings(max_examples=150, deadline=None)
APP = load_app("examples.people")
SHARED = keys_sharing_a_slot(3, first=500)  # three users in one slot: a part of several documents


def user(uid: int, **extra: Any) -> dict[str, Any]:
    """A user with every field, as a router sends one it validated (unless ``extra`` drops some with ``...``)."""
    doc = {"id": uid, "first_name": f"F{uid}", "last_name": "L/ü", "country": ("FR", "DE", "JP")[uid % 3]}
    doc.update({"address": f"{uid} rue", "city": "Köln"}, **extra)
    return {name: value for name, value in doc.items() if value is not ...}


def order(oid: int, uid: int, amount: Any) -> dict[str, Any]:
    return {"id": oid, "user_id": uid, "item": "book", "amount": amount}


def insert_parts(key: str, model: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    grouped: dict[int, list[dict[str, Any]]] = {}
    for doc in docs:
        grouped.setdefault(slot_of(doc[APP.model(model).partition_key]), []).append(doc)
    parts = [{"slot": s, "request_id": f"{key}:slot:{s}", "docs": d} for s, d in sorted(grouped.items())]
    return {"type": "insert_parts", "model": model, "parts": parts, "request_id": f"{key}:batch", "time": 5.0}


def insert_batch(key: str, model: str, docs: list[dict[str, Any]], slot_key: Any) -> dict[str, Any]:
    return {"type": "insert_batch", "model": model, "docs": docs, "slot": slot_of(slot_key), "request_id": key}


def mutation(key: str, endpoint: str, **args: Any) -> dict[str, Any]:
    return {"type": "mutation", "endpoint": endpoint, "args": args, "request_id": key, "time": 7.5}


# Commands as old as commit d8220fd: routed batches, mutations, an update of a stored document, errors.
CLASSIC_LOG: list[dict[str, Any]] = [
    OWN_ALL,
    insert_batch("b1", "User", [user(k) for k in SHARED], SHARED[0]),
    insert_batch("b2", "User", [user(1, address=...), user(1), {"id": 2, "bogus": 1}, user(3)], 1),
    {"type": "batch", "commands": [insert_batch(f"s{k}", "User", [user(k)], k) for k in (10, 11, 12)]},
    mutation("m1", "insert_user", id=20, first_name="A", last_name="B", country="FR"),
    mutation("m2", "insert_order", id=1, user_id=20, item="pen", amount=3),
    mutation("m3", "insert_user", id=20, first_name="A", last_name="B", country="FR"),
    insert_batch("b1", "User", [user(k) for k in SHARED], SHARED[0]),
    insert_batch("o1", "Order", [order(2, 20, 4), order(3, 99, 1.5)], 20),
]
# A bulk load as routers send it now: one insert_parts per group, resent, and reusing a part's id.
PARTS_LOG: list[dict[str, Any]] = [
    OWN_ALL,
    insert_parts("p1", "User", [*(user(k) for k in SHARED), user(30), user(31, city=..., address=...), {"id": 32}]),
    insert_parts("p2", "Order", [order(5, 30, 2), order(6, 31, 2.25), order(7, 77, 1.0)]),
    insert_parts("p1", "User", [*(user(k) for k in SHARED), user(30), user(31, city=..., address=...), {"id": 32}]),
    insert_parts("p1", "User", [user(k, city="x") for k in SHARED]),
    insert_parts("p3", "User", [user(30), user(40, address=None)]),
]
# The digest after the whole log and a hash of the snapshot's bytes as the replica writes them, taken
# from the code before the bulk apply path was made cheaper (commit d8220fd gives the classic pair too).
PINNED = {
    "classic": ("b8e9b66acb8847179d1ab54113462258", "5fa6a9e3425dd1ab4f5993127be28eb7"),
    "parts": ("c7d31d7be5751174eb2956e9d5905a74", "b13f9de79b974758b40349107a4d30ba"),
}


def applied(log: list[dict[str, Any]]) -> StateMachine:
    """A machine that applied ``log`` as a replica does: each command's JSON bytes at log indexes 1, 2, ..."""
    machine = StateMachine(APP, checkpoint_interval=2)
    for index, command in enumerate(log, start=1):
        machine.apply_entry(ujson.dumps(command).encode(), index)
    return machine


def fingerprint(machine: StateMachine) -> tuple[str, str]:
    snapshot = ujson.dumps(machine.snapshot(), escape_forward_slashes=False).encode()
    return machine.digest(), hashlib.blake2b(snapshot, digest_size=16).hexdigest()


@pytest.mark.parametrize("name, log", [("classic", CLASSIC_LOG), ("parts", PARTS_LOG)])
def test_digest_and_snapshot_of_a_fixed_log_are_what_they_were_before(name: str, log: list[dict[str, Any]]) -> None:
    assert fingerprint(applied(log)) == PINNED[name]


def test_results_of_a_bulk_load_hold_json_types_only() -> None:
    machine = StateMachine(APP)
    machine.apply(OWN_ALL)
    result = machine.apply(PARTS_LOG[1])
    assert result == ujson.loads(ujson.dumps(result))
    assert ujson.dumps(result) == ujson.dumps(ujson.loads(ujson.dumps(result)))


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(codec="utf-8")),  # no lone surrogates: no JSON document holds them
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)


@PROPERTY
@given(model=JSON_VALUES, slot=st.integers(0, SLOT_COUNT - 1), docs=st.lists(JSON_VALUES, max_size=4))
def test_a_parts_request_digest_is_its_insert_batch_digest(model: Any, slot: int, docs: list[Any]) -> None:
    texts = [canonical_json(doc) for doc in docs]
    expected = _digest({"type": "insert_batch", "model": model, "docs": docs, "slot": slot})
    assert _insert_batch_digest(model, slot, texts) == expected


class Ranked(Model, indexes=("rank",)):
    id: int = field(primary_key=True)
    rank: int | None = None


ITEMS = st.dictionaries(st.integers(-50, 50), st.none() | st.integers(-3, 3), max_size=40)
BOUNDS = st.none() | st.integers(-4, 4).map(value_key) | st.sampled_from([value_key(None), KEY_MAX])


def stored(items: dict[int, int | None], slot_of_key: Any = slot_of) -> Collection:
    collection = Collection(Ranked, slot_of_key)
    for key, rank in items.items():
        collection.put(Ranked.validate({"id": key, "rank": rank}))
    return collection


@PROPERTY
@given(
    items=ITEMS, replaced=ITEMS, removed=st.sets(st.integers(-50, 50)), low=BOUNDS, high=BOUNDS, reverse=st.booleans()
)
def test_an_index_scan_is_the_brute_force_sort_by_value_key_then_primary_key(
    items: dict[int, int | None],
    replaced: dict[int, int | None],
    removed: set[int],
    low: Any,
    high: Any,
    reverse: bool,
) -> None:
    collection = stored(items)
    for key, rank in replaced.items():
        collection.put(Ranked.validate({"id": key, "rank": rank}))
    for key in removed:
        collection.remove(key)
    final = {**items, **replaced}
    kept = [(value_key(rank), value_key(key)) for key, rank in final.items() if key not in removed]
    wanted = sorted(
        (entry for entry in kept if (low is None or entry[0] >= low) and (high is None or entry[0] <= high)),
        reverse=reverse,
    )
    scanned = [
        (value_key(d["rank"]), value_key(d["id"])) for d in collection.stored_by_index("rank", low, high, reverse)
    ]
    assert scanned == wanted


@PROPERTY
@given(
    items=ITEMS,
    first=st.integers(0, 7),
    span=st.integers(0, 7),
    after=st.none() | st.tuples(st.integers(-1, 9), st.integers(-51, 51)),
)
def test_a_slot_page_is_the_brute_force_sort_by_slot_then_primary_key(
    items: dict[int, int | None], first: int, span: int, after: tuple[int, int] | None
) -> None:
    def eight_slots(key: Any) -> int:  # many documents per slot, and empty slots
        return slot_of(key) % 8

    collection = stored(items, eight_slots)
    for key in list(items)[::3]:
        collection.remove(key)  # emptied slots must page as absent ones
    position = None if after is None else (after[0], value_key(after[1]))
    everything = sorted((eight_slots(d["id"]), value_key(d["id"])) for d in collection.all())
    wanted = [e for e in everything if first <= e[0] <= first + span and (position is None or e > position)]
    paged = [
        (eight_slots(d["id"]), value_key(d["id"])) for d in collection.stored_in_slots(first, first + span, position)
    ]
    assert paged == wanted


@PROPERTY
@given(items=ITEMS)
def test_loading_a_collection_at_once_stores_what_putting_each_document_does(items: dict[int, int | None]) -> None:
    def eight_slots(key: Any) -> int:
        return slot_of(key) % 8

    put_one_by_one = stored(items, eight_slots)
    loaded = Collection(Ranked, eight_slots)
    loaded.load(Ranked.validate({"id": key, "rank": rank}) for key, rank in items.items())
    assert list(loaded.docs.items()) == list(put_one_by_one.docs.items())
    assert list(loaded.indexes["rank"]) == list(put_one_by_one.indexes["rank"])
    assert {s: list(k) for s, k in loaded.slot_keys.items()} == {
        s: list(k) for s, k in put_one_by_one.slot_keys.items()
    }
    assert loaded.slot_counts == put_one_by_one.slot_counts
    assert loaded.slot_hashes == put_one_by_one.slot_hashes
    assert loaded.content_hash == put_one_by_one.content_hash


def test_loading_refuses_a_primary_key_twice_and_a_collection_that_is_not_empty() -> None:
    with pytest.raises(ValueError, match="primary key 1 is stored twice"):
        Collection(Ranked, slot_of).load([{"id": 1, "rank": None}, {"id": 1, "rank": 2}])
    with pytest.raises(ValueError, match="fills an empty collection only"):
        stored({1: None}).load([{"id": 2, "rank": None}])


def test_a_bulk_insert_finds_each_documents_slot_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def counted(key: Any) -> int:
        calls.append(key)
        return slot_of(key)

    monkeypatch.setattr(state_machine_module, "slot_of", counted)
    machine = StateMachine(APP)
    machine.apply(OWN_ALL)
    command = insert_parts("p1", "User", [user(k) for k in range(100, 150)])
    calls.clear()
    result = machine.apply(command)
    assert all("ok" in doc for part in result["ok"] for doc in part["ok"])
    assert sorted(calls) == list(range(100, 150))


class Shelf(Model):
    id: int = field(primary_key=True)


class Book(Model, partition_key="shelf_id"):
    id: int = field(primary_key=True)
    shelf_id: Ref[Shelf]


class Review(Model, partition_key="book_id"):  # Book is not placed by its primary key: not co-located
    id: int = field(primary_key=True)
    book_id: Ref[Book]


def test_a_co_located_model_names_its_parent_and_others_name_none() -> None:
    assert (Shelf.co_located_parent, Book.co_located_parent, Review.co_located_parent) == (None, Shelf, None)


def test_remembered_requests_are_not_tracked_by_the_garbage_collector() -> None:
    # 100,000 remembered requests kept as dicts and lists were ~400,000 tracked objects: each full
    # collection walked them (~0.2 s on the Raft thread), long enough under load for an election.
    machine = applied(PARTS_LOG)
    gc.collect()
    assert machine.recent, "the log remembers requests"
    assert not any(gc.is_tracked(remembered) for remembered in machine.recent.values())
    assert [rid for rid, *_ in remembered_requests(machine.recent)] == list(machine.recent)
