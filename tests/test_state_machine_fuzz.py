"""Fuzzing the state machine with arbitrary log entries: it never raises, and replicas agree.

Two fresh machines running the example app are fed the same entries: commands
of every type with fields of the right names and values of any JSON shape
(NaN, infinities and huge numbers included, since a log entry's JSON can hold
them), the slot table's and slot moves' commands among them (so a machine
may own slots, or none), arbitrary JSON values, and bytes that are not JSON. After every entry
both must have answered the same strict-JSON result, and hold byte-identical
snapshots and equal digests (STYLE.md: two state machines fed the same
commands produce identical snapshots).
"""

from __future__ import annotations

from typing import Any

import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consensus.slots import slot_of
from consensus.state_machine import StateMachine
from query.app import load_app

PEOPLE = load_app("examples.people")

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)

IDS = st.integers(0, 5)  # few ids: duplicates and references to existing users are common
NAMES = st.sampled_from(["a", "b", "Peru"])
FIELDS = sorted({name for model in PEOPLE.models.values() for name in model.fields})
USER = st.fixed_dictionaries(
    {"id": IDS, "first_name": NAMES, "last_name": NAMES, "country": NAMES}, optional={"city": NAMES | JSON}
)
ORDER = st.fixed_dictionaries(
    {"id": IDS, "user_id": IDS, "item": NAMES, "amount": st.floats() | st.integers()},
    optional={"created_at": st.floats()},
)
DOCUMENT = USER | ORDER | st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=4) | JSON


def either(likely: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually a value of the right kind, sometimes any JSON value."""
    return st.integers(0, 5).flatmap(lambda n: JSON if n == 0 else likely)


SLOT = either(st.sampled_from(sorted({slot_of(i) for i in range(6)})))  # a batch's routed slot
ENVELOPE = {"request_id": either(st.sampled_from(["r0", "r1", "r2"])), "time": either(st.floats(0, 2e9))}


def command(kind: str, fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A command of type ``kind``, usually with all its fields, with an optional request id and time.

    Sometimes fields are missing, and sometimes stray keys come along.
    """
    full = st.fixed_dictionaries({"type": st.just(kind), **fields}, optional=ENVELOPE)
    sparse = st.fixed_dictionaries({"type": st.just(kind)}, optional={**fields, **ENVELOPE})
    extra = st.dictionaries(st.text(max_size=6), JSON, max_size=2)
    with_extra = st.builds(lambda extra, body: {**extra, **body}, extra, full | sparse)
    return st.one_of(full, full, full, sparse, with_extra)


SIMPLE_COMMANDS = st.one_of(
    command("mutation", {"endpoint": st.just("insert_user"), "args": USER}),
    command("mutation", {"endpoint": st.just("insert_order"), "args": ORDER}),
    command(
        "mutation",
        {"endpoint": either(st.sampled_from([*sorted(PEOPLE.endpoints), "nope"])), "args": either(DOCUMENT)},
    ),
    command("insert_batch", {"model": st.just("User"), "docs": st.lists(USER | DOCUMENT, max_size=4), "slot": SLOT}),
    command(
        "insert_batch",
        {"model": either(st.sampled_from(["User", "Order", "Ghost"])), "docs": either(st.lists(DOCUMENT, max_size=4))},
    ),
    command("migrate", {"model": either(st.sampled_from(["User", "Order"])), "to": either(st.integers(0, 2))}),
    command("set_fingerprint", {"fingerprint": either(st.sampled_from(["a", "b"])), "initial": either(st.booleans())}),
    command("noop", {}),
    command("garbage", {}),
    st.fixed_dictionaries({"type": JSON}),
)
SLOTS = st.lists(st.lists(st.integers(-1, 16384), min_size=2, max_size=2), max_size=3)
REPLICAS = st.lists(st.fixed_dictionaries({"id": NAMES, "raft": NAMES, "http": NAMES}), max_size=2)
MOVE = {"move": either(st.sampled_from(["m1", "m2"])), "epoch": either(st.integers(0, 3))}
SLOT_COMMANDS = st.one_of(
    command("init_slots", {"ranges": either(st.just([[0, 16383]]) | SLOTS)}),
    command("set_members", {"voters": either(REPLICAS), "learners": either(REPLICAS)}),
    command("import_begin", {**MOVE, "source": either(NAMES), "slots": either(SLOTS)}),
    command("move_begin", {**MOVE, "target": either(NAMES), "target_replicas": either(REPLICAS), "slots": SLOTS}),
    command(
        "import_docs",
        {
            **MOVE,
            "batch": either(st.integers(0, 2)),
            "docs": either(st.fixed_dictionaries({}, optional={"User": st.lists(USER, max_size=2)})),
            "requests": either(st.lists(st.tuples(NAMES, st.none(), st.just({"ok": 1}), IDS).map(list), max_size=2)),
        },
    ),
    command("move_commit", MOVE),
    command("import_commit", {**MOVE, "count": either(st.integers(0, 3)), "hash": either(st.text(max_size=3))}),
    command("move_abort", MOVE),
    command("import_abort", MOVE),
)
SIMPLE_COMMANDS = SIMPLE_COMMANDS | SLOT_COMMANDS
COMMANDS = SIMPLE_COMMANDS | command("batch", {"commands": either(st.lists(SIMPLE_COMMANDS | JSON, max_size=4))})


@st.composite
def entries(draw: st.DrawFn) -> tuple[str, Any]:
    """How an entry reaches the machines ("entry": its JSON bytes; "command": decoded) and the entry."""
    value = draw(st.one_of(COMMANDS, COMMANDS, COMMANDS, JSON, st.binary(max_size=20)))
    if isinstance(value, bytes):
        return "entry", value
    if draw(st.booleans()):
        return "entry", ujson.dumps(value).encode()
    return "command", value


def feed(machine: StateMachine, how: str, entry: Any, index: int) -> str:
    """Apply ``entry``; return the result encoded as strict JSON (raises if it is not)."""
    result = machine.apply_entry(entry, index) if how == "entry" else machine.apply(entry, index)
    assert set(result) in ({"ok"}, {"error"}), result
    return str(ujson.dumps(result, allow_nan=False, reject_bytes=True))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=st.lists(entries(), max_size=15))
def test_arbitrary_entries_never_raise_and_two_machines_stay_identical(script: list[tuple[str, Any]]) -> None:
    first = StateMachine(PEOPLE, local_fingerprint="a", checkpoint_interval=3)
    second = StateMachine(PEOPLE, local_fingerprint="a", checkpoint_interval=3)
    for index, (how, entry) in enumerate(script, start=1):
        assert feed(first, how, entry, index) == feed(second, how, entry, index), entry
        assert first.digest() == second.digest()
        assert ujson.dumps(first.snapshot()) == ujson.dumps(second.snapshot())
    # a replica restored from the snapshot hashes the documents afresh and gets the same digest
    restored = StateMachine(PEOPLE, local_fingerprint="a", checkpoint_interval=3)
    restored.restore(ujson.loads(ujson.dumps(first.snapshot())))
    assert restored.digest() == first.digest()
    assert restored.integrity() == first.integrity()
