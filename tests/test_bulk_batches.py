"""A bulk insert's one command per group, ``insert_parts`` (``StateMachine._insert_parts``), and its replica check.

A router sends each group one command holding a part per hash slot, ``{"slot", "request_id", "docs"}``, each
part with the request id ``<key>:slot:<slot>``. Checked here, on state machines and slot moves as
``tests.test_moves`` builds them: each part answers as that slot's ``insert_batch`` would (a request resent in
either form is applied once); a resent request stores each document at most once, also when a slot moved
between the sends (the part's remembered id moved with it); a part of a slot not writable here is refused
alone and not remembered; a document outside its part's slot, or invalid, is refused alone and stored nowhere;
old ``insert_batch`` entries replay as before; and a replica proposes a parts command only when it holds every
part's slot.
"""

from __future__ import annotations

from typing import Any

import pytest

from consensus.slots import slot_of
from consensus.state_machine import Result, StateMachine
from models.model import Model
from tests.machines import keys_sharing_a_slot
from tests.test_moves import (
    KEY,
    SLOT,
    code_of,
    counters,
    groups,
    import_begin,
    import_commit,
    import_docs,
    machine_ok,
    move_all,
    move_begin,
    pages,
)
from tests.test_replica_checks import key_on, refused, service_of, user, write


def counter(key: int, value: int = 0) -> dict[str, Any]:
    return {"id": key, "value": value}


def by_slot(docs: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """``docs`` grouped by the slot of their ``id``, in slot order, as the router groups a request's documents."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for doc in docs:
        grouped.setdefault(slot_of(doc["id"]), []).append(doc)
    return dict(sorted(grouped.items()))


def parts(key: str, grouped: dict[int, list[dict[str, Any]]], model: str = "Counter") -> dict[str, Any]:
    """The ``insert_parts`` a router sends for request ``key``'s documents of these slots."""
    return {
        "type": "insert_parts",
        "model": model,
        "parts": [{"slot": s, "request_id": f"key:{key}:slot:{s}", "docs": docs} for s, docs in grouped.items()],
        "request_id": f"key:{key}:batch",
        "time": 1.0,
    }


def per_slot(key: str, grouped: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """The same request in the form routers sent before ``insert_parts``: a batch of per-slot ``insert_batch``."""
    commands = [
        {"type": "insert_batch", "model": "Counter", "docs": docs, "slot": s, "request_id": f"key:{key}:slot:{s}"}
        for s, docs in grouped.items()
    ]
    return {"type": "batch", "commands": commands}


def codes(result: Result) -> list[Any]:
    """Each part's outcome: the list of its documents' keys or error codes, or the part's own error code."""
    return [
        [doc.get("ok", code_of(doc)) for doc in part["ok"]] if "ok" in part else code_of(part) for part in result["ok"]
    ]


OTHER = next(k for k in range(2, 1000) if slot_of(k) != SLOT)  # a key that stays on the source


def test_each_part_answers_per_document_and_is_remembered_under_its_id_with_its_slot() -> None:
    source, _ = groups()
    grouped = by_slot([counter(KEY), counter(OTHER), counter(KEY + 10_000)])
    result = source.apply(parts("k1", grouped))
    assert codes(result) == [[d["id"] for d in docs] for docs in grouped.values()]
    assert {rid: slot for rid, (_, _, slot) in source.recent.items()} == {f"key:k1:slot:{s}": s for s in grouped}
    assert sorted(counters(source)) == sorted(d["id"] for docs in grouped.values() for d in docs)


def test_a_resent_request_stores_each_document_once_and_answers_as_the_first_time() -> None:
    source, _ = groups()
    command = parts("k1", by_slot([counter(KEY), counter(OTHER)]))
    first = source.apply(command)
    assert source.apply(command) == first  # not "already exists": nothing applied again
    assert counters(source) == {KEY: 0, OTHER: 0}
    reused = source.apply(parts("k1", by_slot([counter(KEY, 7), counter(OTHER)])))  # the same key, other docs
    outcome = dict(zip(by_slot([counter(KEY), counter(OTHER)]), codes(reused), strict=True))
    assert outcome == {SLOT: "idempotency_key_reused", slot_of(OTHER): [OTHER]}
    assert counters(source) == {KEY: 0, OTHER: 0}


def test_a_part_resent_after_its_slot_moved_is_answered_by_the_new_owner_without_applying_it_again() -> None:
    source, target = groups()
    grouped = by_slot([counter(KEY), counter(OTHER)])
    first = source.apply(parts("k1", grouped))
    first_of = dict(zip(grouped, first["ok"], strict=True))
    move_all(source, target)  # SLOT moves to the target, with the part's remembered id
    again = source.apply(parts("k1", grouped))  # a stale router resends the whole request to the source
    again_of = dict(zip(grouped, again["ok"], strict=True))
    assert code_of(again_of[SLOT]) == "wrong_shard" and again_of[slot_of(OTHER)] == first_of[slot_of(OTHER)]
    assert f"key:k1:slot:{SLOT}" not in source.recent  # the refusal is not remembered
    at_owner = target.apply(parts("k1", {SLOT: grouped[SLOT]}))  # ... then the moved part to its owner
    assert at_owner["ok"] == [first_of[SLOT]]
    assert counters(target) == {KEY: 0} and counters(source) == {OTHER: 0}


def test_a_part_of_a_moving_slot_is_refused_alone_not_remembered_and_applied_after_the_move() -> None:
    source, target = groups()
    target.apply(import_begin())
    source.apply(move_begin())  # SLOT is frozen on the source, importing on the target
    grouped = by_slot([counter(KEY), counter(OTHER)])
    during = dict(zip(grouped, source.apply(parts("k1", grouped))["ok"], strict=True))
    assert code_of(during[SLOT]) == "slot_frozen" and during[slot_of(OTHER)] == {"ok": [{"ok": OTHER}]}
    assert f"key:k1:slot:{SLOT}" not in source.recent and KEY not in counters(source)
    assert codes(target.apply(parts("k1", {SLOT: grouped[SLOT]}))) == ["slot_importing"]
    exported = pages(source)
    for batch, page in enumerate(exported):
        assert machine_ok(target, import_docs(page, batch))
    assert machine_ok(source, {"type": "move_commit", "move": "m1", "epoch": 1})
    assert machine_ok(target, import_commit(exported[-1]))
    assert codes(target.apply(parts("k1", {SLOT: grouped[SLOT]}))) == [[KEY]]
    assert counters(target) == {KEY: 0} and counters(source) == {OTHER: 0}


def test_a_document_outside_its_parts_slot_or_invalid_is_refused_alone_and_stored_nowhere() -> None:
    source, target = groups()
    move_all(source, target)  # the source no longer holds SLOT
    ours, also_ours = keys_sharing_a_slot(2, OTHER)
    stranger_here = next(k for k in range(OTHER + 1, 10_000) if slot_of(k) not in (SLOT, slot_of(OTHER)))
    docs = [counter(ours), counter(KEY), counter(stranger_here), {"id": also_ours, "value": "x"}, counter(also_ours)]
    result = source.apply(parts("k1", {slot_of(OTHER): docs}))
    assert codes(result) == [[ours, "wrong_shard", "wrong_shard", "validation_failed", also_ours]]
    assert counters(source) == {ours: 0, also_ours: 0}


def test_a_malformed_part_refuses_the_whole_command_storing_and_remembering_nothing() -> None:
    source, _ = groups()
    command = parts("k1", by_slot([counter(KEY), counter(OTHER)]))
    command["parts"].append({"slot": 16384, "request_id": "key:k1:slot:16384", "docs": []})
    assert code_of(source.apply(command)) == "bad_request"
    assert counters(source) == {} and source.recent == {}


def test_a_part_applies_as_its_slots_insert_batch_would_and_a_resend_in_either_form_is_recognised() -> None:
    grouped = by_slot([counter(k) for k in (KEY, OTHER, *keys_sharing_a_slot(3, OTHER + 1))])
    old, new = groups()[0], groups()[0]
    old_result, new_result = old.apply(per_slot("k1", grouped)), new.apply(parts("k1", grouped))
    assert new_result == old_result  # one result per slot, each {"ok": [one per document]}
    assert new.snapshot()["collections"] == old.snapshot()["collections"]
    assert new.snapshot()["recent_requests"] == old.snapshot()["recent_requests"]  # same ids, digests, slots
    assert old.apply(parts("k1", grouped)) == old_result  # sent before the upgrade, resent after it
    assert new.apply(per_slot("k1", grouped)) == new_result
    assert counters(old) == counters(new) == {k: 0 for docs in grouped.values() for k in (d["id"] for d in docs)}


def test_old_insert_batch_entries_replay_as_before() -> None:
    """Entries logged before ``insert_parts``, fed to a new machine: before slots, one slot's, a routed batch."""
    machine = StateMachine(groups()[0].app)
    unrouted = {"type": "insert_batch", "model": "Counter", "docs": [counter(1), {"id": 2, "value": "x"}]}
    assert codes({"ok": [machine.apply({**unrouted, "request_id": "u"})]}) == [[1, "validation_failed"]]
    machine.apply({"type": "init_slots", "ranges": [[0, SLOT - 1]]})  # SLOT and above are not held
    below = next(k for k in range(2, 1000) if slot_of(k) < SLOT)
    routed = {
        "type": "insert_batch",
        "model": "Counter",
        "docs": [counter(below), counter(KEY)],
        "slot": slot_of(below),
    }
    assert codes({"ok": [machine.apply({**routed, "request_id": "r"})]}) == [[below, "wrong_shard"]]
    assert code_of(machine.apply(per_slot("k1", {SLOT: [counter(KEY)]}))["ok"][0]) == "wrong_shard"
    assert counters(machine) == {1: 0, below: 0}
    assert sorted(machine.recent) == ["r", "u"]


def test_a_state_machine_validates_each_document_of_a_part_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a bulk insert costs every replica: one validation per document (``WriteView.insert`` validated again)."""
    source, _ = groups()
    calls: list[Any] = []
    validate = Model.validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Model], doc: Any) -> dict[str, Any]:
        calls.append(doc)
        return validate(cls, doc)  # type: ignore[no-any-return]

    monkeypatch.setattr(Model, "validate", classmethod(counting))
    docs = [counter(k) for k in (KEY, OTHER, OTHER + 1)]
    source.apply(parts("k1", by_slot(docs)))
    assert len(calls) == len(docs) and len(counters(source)) == len(docs)


# -- the replica's check before proposing ---------------------------------------------------------------


def test_a_replica_proposes_a_parts_command_as_sent_when_it_holds_every_parts_slot() -> None:
    service, replica = service_of("s0")
    ours = [key_on("s0"), key_on("s0", key_on("s0"))]
    command = parts("k1", {slot_of(k): [user(k)] for k in ours}, model="User")
    result = write(service, command)
    assert [c["parts"] for c in replica.proposed] == [command["parts"]]
    assert codes(result) == [[k] for k in ours]


def test_a_replica_refuses_a_parts_command_with_a_part_of_another_shard_proposing_nothing() -> None:
    service, replica = service_of("s0")
    ours, stranger = key_on("s0"), key_on("s1")
    error = refused(service, parts("k1", {slot_of(ours): [user(ours)], slot_of(stranger): [user(stranger)]}, "User"))
    assert error.code == "wrong_shard" and error.details["shard"] == "s1"
    assert f"key:k1:slot:{slot_of(stranger)}" in error.message
    assert replica.proposed == []
    bad = refused(service, {"type": "insert_parts", "model": "User", "parts": [{"slot": "1", "docs": []}]})
    assert bad.code == "bad_request" and replica.proposed == []
