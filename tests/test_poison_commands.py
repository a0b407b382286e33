"""Poison commands: log entries that every replica applies and none may crash on.

Raft hands every replica the same committed entry; if applying it raises, the
Raft library retries that entry forever on every replica and the shard stops
for good. So each poison here must give an error result, change nothing, and
leave the machine applying the next command: a migrate to a version that is
not an integer, an app mutation returning or raising something that is not
JSON, a migration step that crashes, log bytes that are not a command, and a
bug in docraft's own handler code.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest
import ujson

from consensus.state_machine import StateMachine
from node.signing import sign
from query.app import load_app
from query.views import WriteView
from tests.harness import Cluster, member_key, wait_for
from tests.machines import insert_batch, owning_all

PEOPLE = load_app("examples.people")
PEOPLE_V2 = load_app("examples.people_v2")
BAD_RESULTS = load_app("tests.apps.bad_results_app")
TAGS_V1 = load_app("tests.apps.tags_v1_app")
TAGS_V2 = load_app("tests.apps.tags_v2_crashing_app")


def user(uid: int) -> dict[str, Any]:
    return {"id": uid, "first_name": f"F{uid}", "last_name": "L", "country": "Peru"}


def insert_user(uid: int, **more: Any) -> dict[str, Any]:
    return {"type": "mutation", "endpoint": "insert_user", "args": user(uid), "time": 1.0, **more}


def state_of(machine: StateMachine) -> str:
    """Everything a command could change except the running log hash and applied index."""
    snapshot = machine.snapshot()
    snapshot["integrity"] = {"fingerprint": snapshot["integrity"]["fingerprint"]}
    return ujson.dumps(snapshot)


def json_round_trip(value: Any) -> Any:
    return ujson.loads(ujson.dumps(value))


def assert_contents_hash_is_true(machine: StateMachine) -> None:
    """A replica restored from this snapshot hashes its documents afresh: equal digests mean the
    content hash follows what is stored (no document was changed behind the collection's back)."""
    restored = owning_all(machine.app)
    restored.restore(json_round_trip(machine.snapshot()))
    assert restored.digest() == machine.digest()


def assert_strict_json(result: dict[str, Any]) -> None:
    ujson.dumps(result, allow_nan=False, reject_bytes=True)  # raises for NaN, infinities, bytes, sets


def people_v2_with_users(count: int) -> StateMachine:
    """A version-2 machine holding ``count`` users written by version 1: a migration is pending."""
    v1 = owning_all(PEOPLE)
    for uid in range(count):
        assert "ok" in v1.apply(insert_user(uid))
    machine = owning_all(PEOPLE_V2)
    machine.restore(json_round_trip(v1.snapshot()))
    return machine


# -- migrate to a version that is not an integer ---------------------------------------------


@pytest.mark.parametrize(
    "target",
    [float("inf"), float("-inf"), float("nan"), "x", "2", -1, 10**400, 2**64, True, None, [2], {"to": 2}],
    ids=repr,
)
def test_migrate_to_a_version_that_is_not_the_codes_integer_is_bad_request(target: Any) -> None:
    machine = people_v2_with_users(3)
    before = state_of(machine)
    result = machine.apply({"type": "migrate", "model": "User", "to": target})
    assert result["error"]["code"] == "bad_request", result
    assert_strict_json(result)
    assert state_of(machine) == before
    good = machine.apply({"type": "migrate", "model": "User", "to": 2})
    assert good == {"ok": {"model": "User", "from": 1, "to": 2, "documents": 3}}


def test_migrate_to_1e999_in_a_log_entry_is_bad_request() -> None:
    # the finding exactly: JSON's 1e999 decodes to an infinite float, and int() of it overflows
    machine = people_v2_with_users(2)
    before = state_of(machine)
    result = machine.apply_entry(b'{"type":"migrate","model":"User","to":1e999,"request_id":"p"}', 5)
    assert result == {"error": {"code": "bad_request", "message": "migrate needs a model name and an integer version"}}
    assert state_of(machine) == before and machine.applied_index == 5
    assert machine.apply_entry(b'{"type":"migrate","model":"User","to":2,"request_id":"q"}', 6)["ok"]["documents"] == 2


# -- app mutations that return or raise something that is not JSON ----------------------------

NOT_JSON_RESULTS = [
    "add_then_return_set",
    "add_then_return_bytes",
    "add_then_return_datetime",
    "add_then_return_nan",
    "add_then_return_infinity",
    "add_then_return_bad_json_hook",
]


def mutation(endpoint: str, uid: int, **more: Any) -> dict[str, Any]:
    return {"type": "mutation", "endpoint": endpoint, "args": {"id": uid}, "time": 1.0, **more}


@pytest.mark.parametrize("endpoint", NOT_JSON_RESULTS)
def test_mutation_returning_something_that_is_not_json_is_undone(endpoint: str) -> None:
    machine = owning_all(BAD_RESULTS)
    assert machine.apply(mutation("add_thing", 1)) == {"ok": {"id": 1, "colour": "grey"}}
    before = state_of(machine)
    result = machine.apply(mutation(endpoint, 2))
    assert result == {"error": {"code": "endpoint_failed", "message": f"{endpoint} returned a value that is not JSON"}}
    assert state_of(machine) == before  # the document it inserted is gone again
    assert_contents_hash_is_true(machine)
    assert machine.apply(mutation("add_thing", 2)) == {"ok": {"id": 2, "colour": "grey"}}


def test_app_error_with_details_that_are_not_json_is_reported_by_type() -> None:
    machine = owning_all(BAD_RESULTS)
    before = state_of(machine)
    result = machine.apply(mutation("add_then_raise_error_with_a_set", 1))
    message = "ValidationError raised with a message or details that are not JSON"
    assert result == {"error": {"code": "endpoint_failed", "message": message}}
    assert state_of(machine) == before
    assert machine.apply(mutation("add_thing", 1))["ok"]["id"] == 1


def test_a_tuple_is_json_and_is_answered_as_a_list() -> None:
    machine = owning_all(BAD_RESULTS)
    assert machine.apply(mutation("add_then_return_tuple", 1, request_id="t")) == {"ok": [1, "added"]}
    remembered = machine.snapshot()["recent_requests"]
    assert [[rid, result] for rid, _, result, _ in remembered] == [["t", {"ok": [1, "added"]}]]


def test_a_failed_poison_result_is_remembered_under_its_request_id() -> None:
    machine = owning_all(BAD_RESULTS)
    first = machine.apply(mutation("add_then_return_set", 1, request_id="r"))
    assert first["error"]["code"] == "endpoint_failed"
    # a retry gets the same answer and runs nothing; another request under the same id is refused
    assert machine.apply(mutation("add_then_return_set", 1, request_id="r")) == first
    assert machine.apply(mutation("add_thing", 1, request_id="r"))["error"]["code"] == "idempotency_key_reused"
    assert machine.snapshot()["collections"]["Thing"] == []
    assert [[rid, result] for rid, _, result, _ in machine.snapshot()["recent_requests"]] == [["r", first]]


def test_poison_results_are_the_same_bytes_on_every_replica() -> None:
    first, second = owning_all(BAD_RESULTS), owning_all(BAD_RESULTS)
    for index, endpoint in enumerate([*NOT_JSON_RESULTS, "add_then_raise_error_with_a_set"], start=1):
        entry = ujson.dumps(mutation(endpoint, index, request_id=f"r{index}")).encode()
        assert ujson.dumps(first.apply_entry(entry, index)) == ujson.dumps(second.apply_entry(entry, index))
    assert first.digest() == second.digest()
    assert ujson.dumps(first.snapshot()) == ujson.dumps(second.snapshot())


# -- batches: one poison fails alone ----------------------------------------------------------


def test_a_poison_command_in_a_batch_fails_alone() -> None:
    machine = owning_all(BAD_RESULTS)
    commands = [
        mutation("add_thing", 1, request_id="a"),
        mutation("add_then_return_set", 2, request_id="b"),
        mutation("add_thing", 3, request_id="c"),
        mutation("add_then_return_nan", 4),
        mutation("add_thing", 5),
    ]
    result = machine.apply({"type": "batch", "commands": commands})
    failed = {"code": "endpoint_failed", "message": "add_then_return_set returned a value that is not JSON"}
    assert result["ok"][:3] == [
        {"ok": {"id": 1, "colour": "grey"}},
        {"error": failed},
        {"ok": {"id": 3, "colour": "grey"}},
    ]
    assert result["ok"][3]["error"]["code"] == "endpoint_failed"
    assert result["ok"][4] == {"ok": {"id": 5, "colour": "grey"}}
    assert [t["id"] for t in machine.snapshot()["collections"]["Thing"]] == [1, 3, 5]
    assert [rid for rid, *_ in machine.snapshot()["recent_requests"]] == ["a", "b", "c"]
    assert_contents_hash_is_true(machine)


def test_a_migrate_to_infinity_in_a_batch_fails_alone() -> None:
    machine = people_v2_with_users(2)
    entry = (
        b'{"type":"batch","commands":[{"type":"migrate","model":"User","to":1e999},{"type":"noop","request_id":"n"}]}'
    )
    result = machine.apply_entry(entry, 3)
    assert result["ok"][0]["error"]["code"] == "bad_request"
    assert result["ok"][1] == {"ok": None}
    assert machine.versions["User"] == 1


# -- migration steps that crash -------------------------------------------------------------


def tags_v2_with(labels: list[str]) -> StateMachine:
    """A version-2 machine holding gadgets written by version 1, one per label, tagged ["t"]."""
    v1 = owning_all(TAGS_V1)
    for uid, label in enumerate(labels):
        args = {"id": uid, "label": label, "tags": ["t"]}
        assert "ok" in v1.apply({"type": "mutation", "endpoint": "add_gadget", "args": args})
    machine = owning_all(TAGS_V2)
    machine.restore(json_round_trip(v1.snapshot()))
    return machine


def test_a_migration_whose_steps_succeed_runs_them() -> None:
    # the steps really run (so the crashing cases below are not refused for another reason)
    machine = tags_v2_with(["fine", "also fine"])
    assert machine.apply({"type": "migrate", "model": "Gadget", "to": 2})["ok"]["documents"] == 2
    gadgets = machine.snapshot()["collections"]["Gadget"]
    assert [(g["tags"], g["colour"]) for g in gadgets] == [(["t", "migrated"], "grey")] * 2
    assert_contents_hash_is_true(machine)


@pytest.mark.parametrize(("label", "error"), [("divide", "ZeroDivisionError"), ("crash", "RuntimeError")])
def test_a_migration_step_that_raises_refuses_the_migration_and_changes_nothing(label: str, error: str) -> None:
    machine = tags_v2_with(["fine", label, "fine too"])
    before = state_of(machine)
    failure = {"key": 1, "error": f"{error} in a migration step"}
    # the dry run reports the failure instead of raising it
    assert machine.migration_plan("Gadget", 2)["failures"] == [failure]
    result = machine.apply({"type": "migrate", "model": "Gadget", "to": 2, "request_id": "m"})
    assert result["error"]["code"] == "migration_refused"
    assert result["error"]["details"]["failures"] == [failure]
    # nothing changed: not the version, not the tags the step appended to before it raised
    assert state_of(machine) == before
    assert [g["tags"] for g in machine.snapshot()["collections"]["Gadget"]] == [["t"]] * 3
    assert_contents_hash_is_true(machine)
    # and the shard goes on applying
    assert machine.apply({"type": "noop", "request_id": "n"}) == {"ok": None}
    add = {"type": "mutation", "endpoint": "add_gadget", "args": {"id": 9, "label": "x", "tags": []}}
    assert machine.apply(add)["error"]["code"] == "migration_pending"


def test_migration_failures_are_the_same_bytes_in_every_replica() -> None:
    first, second = tags_v2_with(["system", "fine"]), tags_v2_with(["system", "fine"])
    entry = b'{"type":"migrate","model":"Gadget","to":2,"request_id":"m"}'
    assert ujson.dumps(first.apply_entry(entry, 1)) == ujson.dumps(second.apply_entry(entry, 1))
    assert "0x" not in ujson.dumps(first.snapshot())  # the step's exception text (an address) is left out
    assert first.digest() == second.digest()


# -- log entries that are not commands ------------------------------------------------------

NOT_COMMANDS = [
    b"",
    b"not json",
    b"\xff\xfe\x00garbage",
    b'{"type": "noop"',
    b"[1, 2]",
    b'[{"type": "noop"}]',
    b'"noop"',
    b"null",
    b"1e999",
    b"NaN",
    b"[" * 5000 + b"]" * 5000,
    b"1" * 5000,
    b'{"type": {"nested": [[[{"deeper": [null, true, 1e999]}]]]}}',
    b'{"type": ["mutation"], "endpoint": "insert_user"}',
    b'{"type": "noop", "time": NaN}',
    b'{"type": "noop", "time": -1e999}',
    b'{"type": "noop", "request_id": {"id": 1}}',
    b'{"type": "mutation", "endpoint": "insert_user", "args": {"id": 1e999}}',
    b'{"type": "mutation", "endpoint": {"name": "insert_user"}, "args": []}',
    b'{"type": "insert_batch", "model": ["User"], "docs": [1e999]}',
    b'{"type": "set_fingerprint", "fingerprint": 1e999}',
    b'{"type": "batch", "commands": {"not": "a list"}}',
]


@pytest.mark.parametrize("raw", NOT_COMMANDS, ids=lambda raw: repr(raw[:40]))
def test_log_entry_that_is_not_a_command_is_an_error_on_every_replica(raw: bytes) -> None:
    first, second = owning_all(PEOPLE), owning_all(PEOPLE)
    for machine in (first, second):
        machine.apply(insert_user(1), index=1)
    before = state_of(first)
    result = first.apply_entry(raw, 2)
    assert set(result) == {"error"} and result["error"]["message"], result
    assert_strict_json(result)
    assert second.apply_entry(raw, 2) == result
    assert first.digest() == second.digest() and first.applied_index == 2
    assert state_of(first) == before
    assert first.apply_entry(ujson.dumps(insert_user(2)).encode(), 3)["ok"]["id"] == 2


def test_a_batch_of_junk_answers_each_command_alone() -> None:
    machine = owning_all(PEOPLE)
    raw = b'{"type": "batch", "commands": [[], {"type": [{}]}, 5, null, {"type": "noop"}, {"type": "drop"}]}'
    result = machine.apply_entry(raw, 1)
    assert [next(iter(r)) for r in result["ok"]] == ["error", "error", "error", "error", "ok", "error"]
    assert machine.apply_entry(ujson.dumps(insert_user(1)).encode(), 2)["ok"]["id"] == 1


def test_entry_bytes_are_folded_into_the_digest_as_they_are() -> None:
    # two different undecodable entries are told apart by the digest, the same one is not
    first, second, third = owning_all(PEOPLE), owning_all(PEOPLE), owning_all(PEOPLE)
    first.apply_entry(b"junk", 1)
    second.apply_entry(b"junk", 1)
    third.apply_entry(b"other junk", 1)
    assert first.digest() == second.digest() != third.digest()


# -- bugs in docraft itself: the last-resort guard -------------------------------------------


def write_then_fail(failure: Exception | None, result: Any = None) -> Any:
    """The handler a command table row holds: it inserts user 1 through its view, then raises
    ``failure`` or returns ``result``."""

    def handler(machine: StateMachine, command: dict[str, Any], view: WriteView) -> dict[str, Any]:
        view.insert(PEOPLE.models["User"], user(1))
        if failure is not None:
            raise failure
        return {"ok": result}

    return handler


@pytest.mark.parametrize(
    ("handler", "error"),
    [
        (write_then_fail(KeyError("a bug's text: 0x7f00deadbeef")), "KeyError"),
        (write_then_fail(AttributeError("another bug")), "AttributeError"),
        (write_then_fail(None, result={1, 2}), "NotJSON"),
    ],
)
def test_a_bug_in_a_handler_is_an_internal_error_and_its_writes_are_undone(
    monkeypatch: pytest.MonkeyPatch, handler: Any, error: str
) -> None:
    buggy = dataclasses.replace(StateMachine.COMMANDS["insert_batch"], handler=handler)
    monkeypatch.setitem(StateMachine.COMMANDS, "insert_batch", buggy)
    machine = owning_all(PEOPLE)
    result = machine.apply(insert_batch("User", [], 0, request_id="b"))
    assert result == {"error": {"code": "internal", "message": f"docraft failed to apply the command ({error})"}}
    assert machine.snapshot()["collections"]["User"] == []
    assert_contents_hash_is_true(machine)
    # remembered like any result, and the machine goes on applying
    assert [[rid, result] for rid, _, result, _ in machine.snapshot()["recent_requests"]] == [["b", result]]
    assert machine.apply(insert_user(1))["ok"]["id"] == 1


def test_a_bug_around_the_handlers_is_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("bug")

    machine = owning_all(PEOPLE)
    before = state_of(machine)
    with monkeypatch.context() as patch:
        patch.setattr("consensus.migration.pending", broken)
        result = machine.apply(insert_user(1, request_id="r"), index=1)
    assert result == {"error": {"code": "internal", "message": "docraft failed to apply the command (RuntimeError)"}}
    assert state_of(machine) == before and machine.applied_index == 1
    assert machine.apply(insert_user(1, request_id="r"), index=2)["ok"]["id"] == 1


# -- end to end: a poison write to a leader ---------------------------------------------------


def post_text(url: str, text: bytes, timeout: float) -> tuple[int, dict[str, Any]]:
    """POST ``text`` as it is (``http_json`` would encode an infinite float as ``Infinity``), signed as a
    cluster member's call when ``url`` is an internal route."""
    headers = {"Content-Type": "application/json"}
    key = member_key(url)
    if key is not None:
        headers.update(sign(key, "POST", urllib.parse.urlsplit(url).path, text, time.time()))
    request = urllib.request.Request(url, data=text, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, ujson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, ujson.loads(exc.read())


@pytest.mark.cluster
def test_a_migrate_to_1e999_sent_to_a_leader_does_not_stop_the_shard(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(shards=1)
    assert cluster.post("/insert_user", user(1))[0] == 200
    leader = cluster.leader_of("s0")
    poison = b'{"type":"migrate","model":"User","to":1e999,"request_id":"p"}'
    # before the fix this hung: every replica raised applying the entry, and retried it forever.
    # Now it is refused: by the replica's request parsing (400), or by the state machine (200,
    # the result of the committed entry); either way the shard goes on.
    code, body = post_text(f"{cluster.replica_url(leader)}/_shard/write", poison, timeout=5.0)
    assert code in (200, 400) and body["error"]["code"] == "bad_request", body
    code, body = post_text(f"{cluster.url}/insert_user", ujson.dumps(user(2)).encode(), timeout=5.0)
    assert code == 200 and body["result"]["id"] == 2, body

    for replica in cluster.replica_ids("s0"):
        wait_for(functools.partial(holds_user_2, cluster, replica), 5, f"user 2 on {replica}")


def holds_user_2(cluster: Cluster, replica: str) -> bool:
    code, body = cluster.get("/get_user", base=cluster.replica_url(replica), id=2, consistency="stale")
    return code == 200 and bool(body["items"])
