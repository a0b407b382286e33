"""Moving slot ranges between groups: the state machine's move commands and reads.

A move takes ``slots`` from a source group S to a target group T. Each group
keeps a ``Move`` record, and every step is one command in one group's log,
idempotent by move id (a resent step changes nothing and answers ok):

    T  import_begin {move, source, slots, epoch}         ranges -> importing
    S  move_begin   {move, target, target_replicas, slots, epoch}   owned -> frozen
       (a reader pages S's frozen documents with ``export_page``)
    T  import_docs  {move, batch, docs: {model: [...]}, requests: [[rid, digest, result, slot]]}
    S  move_commit  {move, epoch}           frozen -> moved; S's documents and request ids of the range deleted
    T  import_commit {move, epoch, count, hash}           importing -> owned; documents and ids installed
    S  move_abort {move} / T import_abort {move}          before the commits only

Why a write lands once: S refuses writes to the range from ``move_begin`` on
and T accepts none before ``import_commit``, which installs exactly what S
froze (count and hash must match what arrived). Imported documents wait in
``incoming`` until then, so T's queries never see them early.

Why ``import_commit`` cannot fail once S committed (except for a count or
hash that S's decision already checked): a primary key can be taken on T only
by a co-located child (placed by its parent, so its own key may exist in
another slot). ``import_docs`` refuses a page holding a key stored on T or
already received, before S decides; and while T imports, its writes treat a
key waiting in ``incoming`` as taken (``WriteView``).

Commits and aborts raise the group's epoch to the move's, so the next plan
(epoch ``1 +`` the highest) gets a new move id even after an abort.

Refusals are ``MoveRefused`` with a ``reason``: ``stale_epoch`` (an epoch not
above the group's), ``busy`` (another move is active here), ``slots_held`` /
``not_owned`` (the range is not in the state the step needs), ``unknown_move``,
``not_importing``, ``epoch`` (a commit naming another epoch than its begin),
``mismatch`` (count or hash differ), ``collision`` (an imported primary key is
stored on T or arrives twice), ``committed`` / ``aborted`` (the move already
ended the other way), ``conflict`` (a begin reusing a move id for other slots
or peers).

Handlers follow ``consensus.state_machine.Command``: they check everything
that can fail first and change state last.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ujson

from consensus.slots import (
    FROZEN,
    IMPORTING,
    MOVED,
    OWNED,
    Ranges,
    SlotRange,
    in_ranges,
    parse_ranges,
    ranges_json,
)
from models.errors import BadRequest, MoveRefused
from models.json_values import copy_document, copy_json
from models.model import Model
from query.collection import HASH_MODULUS, document_hash
from query.ordering import SortKey, value_key

if TYPE_CHECKING:
    from consensus.state_machine import Result, StateMachine
    from query.views import WriteView

SOURCE, TARGET = "source", "target"
ACTIVE = frozenset({FROZEN, IMPORTING})
COMMITTED, ABORTED = "committed", "aborted"
FINISHED_KEPT = 16  # finished moves listed per group; older ones are forgotten


@dataclass
class Move:
    """One group's record of one move. ``state``: ``importing`` (T) or ``frozen`` (S) while active,
    then ``committed`` or ``aborted``. ``previous`` (T only) is the table over the range before
    ``import_begin``, put back by ``import_abort``; ``received`` the batch numbers T took."""

    id: str
    role: str
    slots: Ranges
    peer: str
    peer_replicas: list[dict[str, Any]]
    epoch: int
    state: str
    started_at: float
    touched_at: float
    docs_copied: int = 0
    count: int | None = None
    hash: str | None = None
    received: list[int] = field(default_factory=list)
    previous: list[SlotRange] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        """The move as ``slots_report`` lists it."""
        return {
            "id": self.id,
            "role": self.role,
            "slots": ranges_json(self.slots),
            "peer": self.peer,
            "peer_replicas": self.peer_replicas,
            "epoch": self.epoch,
            "state": self.state,
            "docs_copied": self.docs_copied,
            "batches": len(self.received),
            "count": self.count,
            "hash": self.hash,
            "started_at": self.started_at,
            "touched_at": self.touched_at,
        }

    def to_json(self) -> dict[str, Any]:
        """The whole record, for snapshots."""
        return {
            **self.report(),
            "received": self.received,
            "previous": [r.to_json() for r in self.previous],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Move:
        return cls(
            id=data["id"],
            role=data["role"],
            slots=[(first, last) for first, last in data["slots"]],
            peer=data["peer"],
            peer_replicas=data["peer_replicas"],
            epoch=data["epoch"],
            state=data["state"],
            started_at=data["started_at"],
            touched_at=data["touched_at"],
            docs_copied=data["docs_copied"],
            count=data["count"],
            hash=data["hash"],
            received=data["received"],
            previous=[SlotRange.from_json(r) for r in data["previous"]],
        )


@dataclass
class Incoming:
    """What T received for a move and has not installed: documents per model and request ids, in
    arrival order, with their running count and hash (the sum of ``document_hash``, as S computes it).
    ``keys`` holds their primary keys per model (derived from ``docs``; not in snapshots)."""

    docs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    requests: list[list[Any]] = field(default_factory=list)
    count: int = 0
    hash: int = 0
    keys: dict[str, set[SortKey]] = field(default_factory=dict, init=False, compare=False, repr=False)

    def holds(self, model: str, key: Any) -> bool:
        """Whether a document of ``model`` with primary key ``key`` waits here."""
        return value_key(key) in self.keys.get(model, ())

    def add(self, model: type[Model], docs: list[dict[str, Any]]) -> None:
        """Keep ``docs`` (validated documents of ``model``, which this record now owns)."""
        self.docs.setdefault(model.name, []).extend(docs)
        self.keys.setdefault(model.name, set()).update(value_key(doc[model.primary_key]) for doc in docs)
        for doc in docs:
            self.hash = (self.hash + document_hash(model.name, doc)) % HASH_MODULUS
        self.count += len(docs)

    def to_json(self) -> dict[str, Any]:
        return {"docs": self.docs, "requests": self.requests, "count": self.count, "hash": self.hash}

    @classmethod
    def from_json(cls, data: dict[str, Any], models: Mapping[str, type[Model]]) -> Incoming:
        """The record ``to_json`` gave, for an app defining ``models`` (by name)."""
        incoming = cls(data["docs"], data["requests"], data["count"], data["hash"])
        for name, docs in incoming.docs.items():
            key = models[name].primary_key
            incoming.keys[name] = {value_key(doc[key]) for doc in docs}
        return incoming


# -- the commands -------------------------------------------------------------


def import_begin(machine: StateMachine, command: dict[str, Any], view: WriteView) -> Result:
    """T: make the range ``importing``; stray documents of it (none should exist) are dropped."""
    move_id, slots, epoch = _move_id(command), _slots(command), _epoch(command)
    source = _text(command, "source")
    known = machine.moves.get(move_id)
    if known is not None:
        return _resent_begin(known, TARGET, slots, source, epoch)
    _check_new(machine, move_id, epoch)
    if machine.slots.states_of(slots) - {None, MOVED}:
        raise MoveRefused(f"this group holds some of slots {ranges_json(slots)}", move=move_id, reason="slots_held")
    previous = [r for first, last in slots for r in machine.slots.within(first, last)]
    for first, last in slots:
        for collection in machine.collections.values():
            for doc in list(collection.stored_in_slots(first, last)):
                collection.remove(doc[collection.model.primary_key])
        machine.slots.assign(first, last, SlotRange(first, last, IMPORTING, epoch, move=move_id))
    move = Move(move_id, TARGET, slots, source, [], epoch, IMPORTING, _now(command), _now(command), previous=previous)
    machine.moves[move_id] = move
    machine.incoming[move_id] = Incoming()
    return {"ok": move.report()}


def move_begin(machine: StateMachine, command: dict[str, Any], view: WriteView) -> Result:
    """S: freeze the range (reads go on, writes wait); records its document count and hash."""
    move_id, slots, epoch = _move_id(command), _slots(command), _epoch(command)
    target = _text(command, "target")
    target_replicas = replicas(command.get("target_replicas"), "target_replicas")
    known = machine.moves.get(move_id)
    if known is not None:
        return _resent_begin(known, SOURCE, slots, target, epoch)
    _check_new(machine, move_id, epoch)
    if machine.slots.states_of(slots) != {OWNED}:
        raise MoveRefused(
            f"this group does not own all of slots {ranges_json(slots)}", move=move_id, reason="not_owned"
        )
    for first, last in slots:
        machine.slots.restate(first, last, FROZEN, move_id)
    count, digest = summary(machine, slots)
    move = Move(move_id, SOURCE, slots, target, target_replicas, epoch, FROZEN, _now(command), _now(command))
    move.count, move.hash = count, digest
    machine.moves[move_id] = move
    return {"ok": move.report()}


def import_docs(machine: StateMachine, command: dict[str, Any], view: WriteView) -> Result:
    """T: keep one exported page aside in ``incoming``; a batch number already taken is ignored.
    A page with a primary key stored here or already received is refused (``collision``): the
    rebalancer then aborts both groups, before S's decision."""
    move = _move(machine, command, TARGET)
    batch = command.get("batch")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 0:
        raise BadRequest("import_docs needs a batch number (an integer, 0 or more)", param="batch")
    if batch in move.received:
        return {"ok": {**_progress(move), "batch": batch, "accepted": False}}
    if move.state != IMPORTING:
        raise MoveRefused(f"move {move.id} is {move.state}, not importing", move=move.id, reason="not_importing")
    docs = _imported_docs(machine, move, command.get("docs"))
    requests = _imported_requests(move, command.get("requests"))
    incoming = machine.incoming[move.id]
    _check_keys_free(machine, move, incoming, docs)
    for name, batch_docs in docs.items():
        incoming.add(machine.collections[name].model, batch_docs)
    incoming.requests.extend(requests)
    move.received.append(batch)
    move.docs_copied, move.count, move.hash = incoming.count, incoming.count, _hex(incoming.hash)
    move.touched_at = _now(command)
    return {"ok": {**_progress(move), "batch": batch, "accepted": True}}


def move_commit(machine: StateMachine, command: dict[str, Any], view: WriteView) -> Result:
    """S, the point of no return: the range becomes a tombstone naming T, its documents and
    remembered request ids are deleted here, and the group's epoch becomes the move's."""
    move = _move(machine, command, SOURCE)
    if _already(move, COMMITTED, _epoch(command)):
        return {"ok": move.report()}
    for first, last in move.slots:
        moved = SlotRange(first, last, MOVED, move.epoch, owner=move.peer, replicas=tuple(move.peer_replicas))
        machine.slots.assign(first, last, moved)
        for collection in machine.collections.values():
            for doc in list(collection.stored_in_slots(first, last)):
                collection.remove(doc[collection.model.primary_key])
    gone = [rid for rid, (_, _, slot) in machine.recent.items() if slot is not None and in_ranges(move.slots, slot)]
    for rid in gone:
        del machine.recent[rid]
    _finish(machine, move, COMMITTED, command)
    return {"ok": move.report()}


def import_commit(machine: StateMachine, command: dict[str, Any], view: WriteView) -> Result:
    """T: install what arrived, if it is what S froze (``count``, ``hash``); the range becomes owned.
    No key collides: ``import_docs`` and T's writes kept every arriving key free."""
    move = _move(machine, command, TARGET)
    if _already(move, COMMITTED, _epoch(command)):
        return {"ok": move.report()}
    incoming = machine.incoming[move.id]
    count, digest = command.get("count"), command.get("hash")
    if count != incoming.count or digest != _hex(incoming.hash):
        raise MoveRefused(
            f"move {move.id}: {incoming.count} documents with hash {_hex(incoming.hash)} arrived, "
            f"not {count} with hash {digest}",
            move=move.id,
            reason="mismatch",
        )
    for name, docs in incoming.docs.items():  # their keys are free here: see the module docstring
        for doc in docs:
            machine.collections[name].put(doc)
    for rid, request_digest, result, slot in incoming.requests:
        if rid not in machine.recent:
            machine.remember_result(rid, request_digest, result, slot)
    for first, last in move.slots:
        machine.slots.assign(first, last, SlotRange(first, last, OWNED, move.epoch))
    del machine.incoming[move.id]
    _finish(machine, move, COMMITTED, command)
    return {"ok": move.report()}


def move_abort(machine: StateMachine, command: dict[str, Any], view: WriteView) -> Result:
    """S, before ``move_commit``: the range is owned again. An unknown move is already aborted."""
    move = machine.moves.get(_move_id(command))
    if move is None or move.role != SOURCE:
        return {"ok": None}
    if _already(move, ABORTED, None):
        return {"ok": move.report()}
    for first, last in move.slots:
        machine.slots.restate(first, last, OWNED, None)
    _finish(machine, move, ABORTED, command)
    return {"ok": move.report()}


def import_abort(machine: StateMachine, command: dict[str, Any], view: WriteView) -> Result:
    """T, before ``import_commit``: drop what arrived; the range is as it was before ``import_begin``."""
    move = machine.moves.get(_move_id(command))
    if move is None or move.role != TARGET:
        return {"ok": None}
    if _already(move, ABORTED, None):
        return {"ok": move.report()}
    for first, last in move.slots:
        machine.slots.assign(first, last, None)
    for held in move.previous:
        machine.slots.assign(held.first, held.last, held)
    del machine.incoming[move.id]
    _finish(machine, move, ABORTED, command)
    return {"ok": move.report()}


# -- reads --------------------------------------------------------------------


def summary(machine: StateMachine, slots: Ranges) -> tuple[int, str]:
    """How many documents the slots hold here, and the sum of their hashes (hex), all models."""
    count, total = 0, 0
    for collection in machine.collections.values():
        for slot, n in collection.slot_counts.items():
            if in_ranges(slots, slot):
                count += n
                total += collection.slot_hashes[slot]
    return count, _hex(total % HASH_MODULUS)


def export_page(machine: StateMachine, move_id: str, after: str | None, limit: int) -> dict[str, Any]:
    """One page of a frozen source move's documents, then its remembered request ids.

    Documents come by model name, then (slot, primary key); request ids after
    them, by id. ``next`` resumes after this page (``None`` after the last);
    ``count`` and ``hash`` are of all the move's documents. Raises
    ``MoveRefused`` unless this group is the frozen source of ``move_id``,
    ``BadRequest`` for a cursor it did not make or a limit below 1.
    """
    move = machine.moves.get(move_id)
    if move is None or move.role != SOURCE or move.state != FROZEN:
        raise MoveRefused(f"this group is not the frozen source of move {move_id}", move=move_id, reason="not_frozen")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise BadRequest("an export page needs a limit of 1 or more", param="limit")
    cursor = _open_cursor(after)
    docs: dict[str, list[dict[str, Any]]] = {}
    requests: list[list[Any]] = []
    taken, last = 0, cursor
    if cursor is None or cursor[0] == "doc":
        for position, name, doc in _docs_after(machine, move.slots, cursor):
            if taken == limit:
                return _page(machine, move, docs, requests, last)
            docs.setdefault(name, []).append(copy_document(doc))
            taken, last = taken + 1, position
    after_rid = cursor[1] if cursor is not None and cursor[0] == "req" else None
    for rid, (digest, encoded, slot) in sorted(machine.recent.items()):
        if slot is None or not in_ranges(move.slots, slot) or (after_rid is not None and rid <= after_rid):
            continue
        if taken == limit:
            return _page(machine, move, docs, requests, last)
        requests.append([rid, digest, ujson.loads(encoded), slot])
        taken, last = taken + 1, ["req", rid]
    return _page(machine, move, docs, requests, None)


def _page(
    machine: StateMachine,
    move: Move,
    docs: dict[str, list[dict[str, Any]]],
    requests: list[list[Any]],
    resume_after: list[Any] | None,
) -> dict[str, Any]:
    count, digest = summary(machine, move.slots)
    following = None if resume_after is None else ujson.dumps(resume_after)
    return {"docs": docs, "requests": requests, "next": following, "count": count, "hash": digest}


def _docs_after(
    machine: StateMachine, slots: Ranges, cursor: list[Any] | None
) -> Iterator[tuple[list[Any], str, dict[str, Any]]]:
    """``(cursor, model name, stored document)`` of the slots' documents after ``cursor``, in export order."""
    for name in sorted(machine.collections):
        if cursor is not None and name < cursor[1]:
            continue
        collection = machine.collections[name]
        after = (cursor[2], value_key(cursor[3])) if cursor is not None and name == cursor[1] else None
        for first, last in slots:
            for doc in collection.stored_in_slots(first, last, after):
                pk = doc[collection.model.primary_key]
                yield ["doc", name, collection.slot_of(doc), pk], name, doc


def _open_cursor(after: str | None) -> list[Any] | None:
    if after is None:
        return None
    try:
        cursor = ujson.loads(after)
    except (ValueError, TypeError):
        cursor = None
    if not isinstance(cursor, list):
        cursor = []
    of_docs = len(cursor) == 4 and cursor[0] == "doc" and isinstance(cursor[1], str) and isinstance(cursor[2], int)
    of_requests = len(cursor) == 2 and cursor[0] == "req" and isinstance(cursor[1], str)
    if not (of_docs or of_requests):
        raise BadRequest(f"{after!r} is not a cursor an export page returned", param="after")
    return cursor


# -- checks and helpers -------------------------------------------------------


def _resent_begin(known: Move, role: str, slots: Ranges, peer: str, epoch: int) -> Result:
    """The answer to a begin whose move id this group knows: ok if it is the same begin again."""
    if (known.role, known.slots, known.peer, known.epoch) != (role, slots, peer, epoch):
        raise MoveRefused(f"move id {known.id} already names another move here", move=known.id, reason="conflict")
    if known.state not in ACTIVE:
        raise MoveRefused(f"move {known.id} is already {known.state}", move=known.id, reason=known.state)
    return {"ok": known.report()}


def active(machine: StateMachine) -> list[str]:
    """The ids of the moves active in this group (at most one)."""
    return [move.id for move in machine.moves.values() if move.state in ACTIVE]


def _check_new(machine: StateMachine, move_id: str, epoch: int) -> None:
    """A new move needs an epoch above the group's and no other move active here."""
    if epoch <= machine.slots.epoch:
        raise MoveRefused(
            f"epoch {epoch} is not above this group's epoch {machine.slots.epoch}", move=move_id, reason="stale_epoch"
        )
    if busy := active(machine):
        raise MoveRefused(f"move {busy[0]} is still active here", move=move_id, reason="busy")


def _already(move: Move, ending: str, epoch: int | None) -> bool:
    """True when ``move`` already ended with ``ending`` (a resent step); raises ``MoveRefused`` when it
    ended the other way, or when a commit names another epoch than its begin."""
    if move.state == ending:
        return True
    if move.state not in ACTIVE:
        raise MoveRefused(f"move {move.id} is already {move.state}", move=move.id, reason=move.state)
    if epoch is not None and epoch != move.epoch:
        raise MoveRefused(f"move {move.id} began at epoch {move.epoch}, not {epoch}", move=move.id, reason="epoch")
    return False


def _finish(machine: StateMachine, move: Move, state: str, command: dict[str, Any]) -> None:
    """End ``move``, raising the group's epoch to the move's (slot versions are the ranges' own). An aborted
    move raises it too, so the next plan's epoch is above it and its move id differs: an ended move's id is
    refused by a begin. Only the last ``FINISHED_KEPT`` ended moves are kept."""
    move.state, move.touched_at = state, _now(command)
    machine.slots.epoch = max(machine.slots.epoch, move.epoch)
    finished = [m.id for m in machine.moves.values() if m.state not in ACTIVE]
    for old in finished[: max(0, len(finished) - FINISHED_KEPT)]:
        del machine.moves[old]


def _move(machine: StateMachine, command: dict[str, Any], role: str) -> Move:
    move_id = _move_id(command)
    move = machine.moves.get(move_id)
    if move is None or move.role != role:
        raise MoveRefused(f"this group is not the {role} of a move {move_id}", move=move_id, reason="unknown_move")
    return move


def _imported_docs(machine: StateMachine, move: Move, value: Any) -> dict[str, list[dict[str, Any]]]:
    """The page's documents, each exactly as its model stores it and in one of the move's slots."""
    if not isinstance(value, dict):
        raise BadRequest("import_docs needs docs: {model: [document, ...]}", param="docs")
    docs: dict[str, list[dict[str, Any]]] = {}
    for name in sorted(value):
        model = machine.app.model(name)
        collection = machine.collections[model.name]
        if not isinstance(value[name], list):
            raise BadRequest(f"import_docs: docs of {name} must be a list", param="docs")
        docs[model.name] = []
        for doc in value[name]:
            clean = model.validate(doc)  # a copy this machine owns
            if clean != doc:
                raise BadRequest(f"import_docs: a {name} document is not as its model stores it", param="docs")
            if not in_ranges(move.slots, collection.slot_of(clean)):
                raise BadRequest(f"import_docs: a {name} document is not in the move's slots", param="docs")
            docs[model.name].append(clean)
    return docs


def _check_keys_free(
    machine: StateMachine, move: Move, incoming: Incoming, docs: dict[str, list[dict[str, Any]]]
) -> None:
    """Refuse (``collision``) a page with a primary key stored here, already received, or twice in the page."""
    for name, page_docs in docs.items():
        collection = machine.collections[name]
        seen: set[SortKey] = set()
        for doc in page_docs:
            key = doc[collection.model.primary_key]
            if key in collection or incoming.holds(name, key) or value_key(key) in seen:
                raise MoveRefused(
                    f"move {move.id}: {name} {collection.model.primary_key}={key!r} is stored here or arrives twice",
                    move=move.id,
                    reason="collision",
                )
            seen.add(value_key(key))


def _imported_requests(move: Move, value: Any) -> list[list[Any]]:
    """The page's remembered requests, ``[rid, digest, result, slot]`` with the slot in the move's range."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise BadRequest("import_docs: requests must be a list", param="requests")
    for entry in value:
        valid = (
            isinstance(entry, list)
            and len(entry) == 4
            and isinstance(entry[0], str)
            and (entry[1] is None or isinstance(entry[1], str))
            and isinstance(entry[2], dict)
            and isinstance(entry[3], int)
            and not isinstance(entry[3], bool)
            and in_ranges(move.slots, entry[3])
        )
        if not valid:
            raise BadRequest("import_docs: a request is not [id, digest, result, slot] of the move", param="requests")
    copied: list[list[Any]] = copy_json(value)
    return copied


def _progress(move: Move) -> dict[str, Any]:
    return {"move": move.id, "docs_copied": move.docs_copied, "batches": len(move.received)}


def replicas(value: Any, what: str) -> list[dict[str, Any]]:
    """``[{"id", "raft", "http"}, ...]`` with string values, keeping only those keys."""
    if not isinstance(value, list) or not all(
        isinstance(r, dict) and all(isinstance(r.get(k), str) for k in ("id", "raft", "http")) for r in value
    ):
        raise BadRequest(f"{what} must be a list of {{id, raft, http}} objects", param=what)
    return [{"id": r["id"], "raft": r["raft"], "http": r["http"]} for r in value]


def _move_id(command: dict[str, Any]) -> str:
    return _text(command, "move")


def _text(command: dict[str, Any], name: str) -> str:
    value = command.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{command.get('type')} needs {name} (a non-empty string)", param=name)
    return value


def _slots(command: dict[str, Any]) -> Ranges:
    slots = parse_ranges(command.get("slots"), "slots")
    if not slots:
        raise BadRequest(f"{command.get('type')} needs at least one slot range", param="slots")
    return slots


def _epoch(command: dict[str, Any]) -> int:
    value = command.get("epoch")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest(f"{command.get('type')} needs an epoch (an integer, 1 or more)", param="epoch")
    return value


def _now(command: dict[str, Any]) -> float:
    return float(command.get("time", 0.0))


def _hex(total: int) -> str:
    return f"{total:032x}"
