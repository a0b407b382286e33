"""The pure, deterministic state machine of one shard.

Every replica feeds it the same committed log entries in the same order and
so holds the same state. It does no I/O and reads no clock or randomness: time
and request ids arrive inside the command, stamped by the leader. Two state
machines fed the same entries produce byte-identical snapshots.

A log entry is the JSON encoding of one command, an object:

    {"type": "mutation", "endpoint": NAME, "args": {...}, "request_id": ID, "time": T}
    {"type": "insert_batch", "model": NAME, "docs": [...], "request_id": ID, "time": T}
    {"type": "migrate", "model": NAME, "to": VERSION, "request_id": ID}
    {"type": "insert_batch", ..., "slot": N}   the hash slot its documents were routed by (omitted in
                                               entries from before slots: each document is then fenced alone)
    {"type": "insert_parts", "model": NAME, "parts": [{"slot": N, "request_id": ID, "docs": [...]}, ...],
     "request_id": ID, "time": T}   a bulk insert's slots in one command: each part is applied (fenced,
                                    remembered) as that slot's insert_batch would be, the whole is not
                                    remembered
    {"type": "set_fingerprint", "fingerprint": F, "initial": bool}
    {"type": "init_slots", "ranges": [[first, last], ...]}   the group's slots, once
    {"type": "set_members", "voters": [...], "learners": [...]}
    {"type": "noop"}
    {"type": "batch", "commands": [...]}   several commands in one log entry

and the slot-move commands, idempotent by move id (``consensus.moves``):

    {"type": "import_begin", "move": M, "source": SHARD, "slots": [[first, last], ...], "epoch": E}
    {"type": "move_begin", "move": M, "target": SHARD, "target_replicas": [...], "slots": [...], "epoch": E}
    {"type": "import_docs", "move": M, "batch": N, "docs": {MODEL: [...]}, "requests": [...]}
    {"type": "move_commit", "move": M, "epoch": E}
    {"type": "import_commit", "move": M, "epoch": E, "count": N, "hash": H}
    {"type": "move_abort", "move": M}
    {"type": "import_abort", "move": M}

``StateMachine.COMMANDS`` maps each type to its handler. Applying returns
``{"ok": value}`` or ``{"error": {...}}`` (the one error shape) and never
raises: an entry that every replica applies must not stop them all, so bad
input, app bugs and docraft bugs alike become error results, the same bytes
on every replica. A command whose ``request_id`` was applied before returns
the first result again without changing anything, so a retried write is
applied once.

Slots (``consensus.slots``): a write is fenced at apply by the hash slot it
was routed by, against the group's own ``SlotTable``: it runs only if the slot
is owned here, and a refusal (``wrong_shard``, ``slot_frozen``,
``slot_importing``, ``cross_shard_write``) is never remembered under its
request id, so the retry at the right group or after the move applies it.
Every document a write touches must be of an owned slot too (``WriteView``):
one of another slot held elsewhere is ``cross_shard_write``, and that refusal
stands even if app code caught it. Remembered request ids keep their slot and
move with its documents. Before the table is initialized nothing is fenced:
the writes in the log then are from before the upgrade that brought slots
(``insert_batch`` without ``slot`` included), replayed as they were applied;
replicas propose no write until it is (``check_route``).

Integrity (``consensus.digests``): the digest folds every entry and its
result into a running hash, with a hash of the contents; checkpoints keep it
at every ``checkpoint_interval``-th log index. The cluster's code fingerprint
is part of the state: a machine whose local fingerprint differs applies
nothing but ``set_fingerprint`` and answers ``code_mismatch``.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar, TypeGuard

import ujson

from consensus import migration, moves
from consensus.digests import CHECKPOINTS_KEPT as CHECKPOINTS_KEPT
from consensus.digests import IntegrityLog
from consensus.slots import (
    OWNED,
    READABLE,
    REFUSAL_CODES,
    ROUTABLE,
    SLOT_COUNT,
    WRITABLE,
    SlotRange,
    SlotTable,
    parse_ranges,
    slot_of,
)
from models.errors import (
    BadRequest,
    CodeMismatch,
    DocraftError,
    EndpointFailed,
    IdempotencyKeyReused,
    MigrationRefused,
    ValidationError,
    WrongShard,
)
from models.model import Model
from query.app import App
from query.collection import HASH_MODULUS, Collection, canonical_json
from query.ordering import value_key
from query.planner import Page
from query.views import ReadView, WriteView

Result = dict[str, Any]
# A remembered request: the digest of what it asked (None before digests were kept), its result's JSON,
# the slot it was routed by (None before slots).
Remembered = tuple[str | None, bytes, int | None]
Handler = Callable[["StateMachine", dict[str, Any], WriteView], Result]
SlotFinder = Callable[["StateMachine", dict[str, Any]], int | None]

SNAPSHOT_FORMAT = 4


@dataclass(frozen=True)
class Command:
    """One row of the command table: the handler and the rules applied before it runs.

    A handler returns the command's result and raises a ``DocraftError`` to
    refuse. It writes documents only through the ``WriteView`` it is given,
    which is rolled back if it raises or returns a result that is not JSON;
    any other change it makes (a version, the fingerprint) comes last, after
    everything that can fail.
    """

    handler: Handler
    needs_cluster_code: bool  # refused with code_mismatch while this replica runs other app code
    needs_migrated_data: bool  # refused with migration_pending while stored documents are behind the code
    remembered: bool  # its result is kept under its request id
    # The hash slot a routed write was sent for (None: the handler refuses the command); the command
    # runs only if the slot is owned here. Commands without one are group-wide.
    routed_slot: SlotFinder | None = None
    # Its handler builds its result of new JSON values (dict, list, str, int, float, bool, None), or of
    # results no one changes: encoded as it is. Any other result is encoded and decoded back, a copy
    # of JSON types only that shares nothing with the state.
    fresh_result: bool = False


class NotJSON(ValueError):
    """A value that ujson cannot encode as strict JSON, or that does not decode back to JSON types."""


class StateMachine:
    """Collections of one shard plus the memory of recent request ids.

    Not thread-safe: the replica calls ``apply_entry`` from the Raft thread
    only and reads run on the same thread or between applies.
    """

    def __init__(
        self,
        app: App,
        remembered_requests: int = 100_000,
        local_fingerprint: str | None = None,
        checkpoint_interval: int = 50,
        digests: bool = True,
    ) -> None:
        self.app = app
        self.remembered_requests = remembered_requests
        self.local_fingerprint = local_fingerprint
        self.checkpoint_interval = checkpoint_interval
        self.digests = digests
        self._reset()

    def _reset(self) -> None:
        self.collections = {name: Collection(model, slot_of) for name, model in sorted(self.app.models.items())}
        # request id -> (digest of the request it named, its result's JSON bytes, the slot it was routed by
        # or None). Encoded, so a remembered request is one tuple of atomic values, which the garbage
        # collector stops tracking: 100,000 of them as dicts and lists made each full collection take
        # ~0.2 s on the Raft thread, long enough under load for followers to call an election.
        self.recent: OrderedDict[str, Remembered] = OrderedDict()
        self.slots = SlotTable()
        self.moves: dict[str, moves.Move] = {}  # this group's moves, active ones and the last finished
        self.incoming: dict[str, moves.Incoming] = {}  # documents a target received, by move id
        self.members: dict[str, Any] | None = None  # the group's voters and learners, once set
        self.integrity_log = IntegrityLog(self._content_hash, self.checkpoint_interval, self.digests)
        self.fingerprint: str | None = None
        # The model version each collection's documents were written with; a
        # migration rewrites a whole collection in one command, so one per collection.
        self.versions = {name: model.version for name, model in sorted(self.app.models.items())}

    @property
    def code_ok(self) -> bool:
        """False when the cluster's recorded code fingerprint is not this process's."""
        return self.fingerprint is None or self.local_fingerprint in (None, self.fingerprint)

    def collection(self, model: type[Model]) -> Collection:
        return self.collections[model.name]

    # -- applying log entries -------------------------------------------------

    def apply_entry(self, raw: bytes, index: int) -> Result:
        """Decode and apply the Raft log entry ``raw`` at ``index``; return its result. Never raises.

        What the replica calls for every committed entry. Bytes that are not
        JSON give a ``bad_request`` result like any other malformed command:
        raising here would make the Raft library retry the same entry forever,
        on every replica. The digest folds ``raw`` as it is.
        """
        try:
            command = ujson.loads(raw)
        except Exception:  # not JSON, not UTF-8, nested too deep, not bytes: all mean "not a command"
            return self._applied(index, raw, lambda: _encoded(BadRequest("the log entry is not JSON").to_json()))
        return self.apply(command, index, raw)

    def apply(self, command: Any, index: int | None = None, raw: bytes | None = None) -> Result:
        """Apply one decoded command and return its result. Never raises.

        ``index`` is the command's Raft log index (checkpoints are kept by
        index); ``raw`` is the log entry's bytes when the caller has them, so
        the digest folds them instead of encoding the command again. Results
        are strict JSON (no NaN or infinity), hold nothing process-specific
        (no reprs, addresses or hash orders), and are built in a fixed key
        order, so every replica encodes the same bytes.
        """
        entry = raw if raw is not None else _canonical_entry(command)
        return self._applied(index, entry, lambda: self._execute(command))

    def _applied(self, index: int | None, entry: bytes, run: Callable[[], tuple[Result, bytes]]) -> Result:
        self.integrity_log.before(index)
        result, encoded = run()
        self.integrity_log.after(index, entry, encoded)
        return result

    def _execute(self, command: Any) -> tuple[Result, bytes]:
        """The result of one command and its encoding; never raises.

        Handlers run in ``_transaction``, which rolls their writes back on any
        failure. This guard is the last resort for a bug in the checks around
        them, which change nothing until the result is remembered, last.
        """
        try:
            return self._step(command)
        except Exception as exc:
            return _internal_error(exc)

    def _step(self, command: Any) -> tuple[Result, bytes]:
        """The checks every command passes, in order, then its row of ``COMMANDS``.

        A malformed envelope, a refusal for code mismatch or a pending
        migration change nothing and are not remembered; a retried request id
        gets its first result.
        """
        if not isinstance(command, dict):
            return _encoded(BadRequest("a command must be a JSON object").to_json())
        request_id = command.get("request_id")
        if request_id is not None and not isinstance(request_id, str):
            return _encoded(BadRequest("request_id must be a string").to_json())
        if request_id is not None and request_id in self.recent:
            return _encoded(_replayed(request_id, request_digest(command), self.recent[request_id]))
        stamp = command.get("time", 0.0)
        if not isinstance(stamp, int | float) or isinstance(stamp, bool) or not _finite(stamp):
            return _encoded(BadRequest("time must be a finite number").to_json())
        kind = command.get("type")
        spec = self.COMMANDS.get(kind, UNKNOWN) if isinstance(kind, str) else UNKNOWN
        if spec.needs_cluster_code and not self.code_ok:
            return _encoded(self._code_mismatch().to_json())
        if spec.needs_migrated_data and (pending := migration.pending(self.app, self.versions)):
            return _encoded(pending.to_json())
        slot, refusal = self._fence(spec, command)
        if refusal is not None:
            return _encoded(refusal.to_json())
        # Taken before the handler runs (app code may change its arguments), and only for what is kept.
        digest = request_digest(command) if request_id is not None and spec.remembered else None
        result, encoded = self._transaction(spec, command, slot)
        if request_id is not None and spec.remembered and _error_code(result) not in REFUSAL_CODES:
            self.remember(request_id, (digest, encoded, slot))
        return result, encoded

    def _fence(self, spec: Command, command: dict[str, Any]) -> tuple[int | None, DocraftError | None]:
        """The slot a routed write was sent for, and the error to refuse it with unless it is owned here.

        Nothing is refused before the table is initialized: see the module docstring.
        """
        if spec.routed_slot is None:
            return None, None
        try:
            slot = spec.routed_slot(self, command)
        except DocraftError as exc:
            return None, exc
        return slot, None if slot is None else self._write_refusal(slot)

    def _write_refusal(self, slot: int) -> DocraftError | None:
        """The error refusing a write routed by ``slot``, or ``None`` (always before the table is initialized)."""
        return self.slots.refusal(slot, WRITABLE) if self.slots.initialized else None

    def _awaiting_import(self, model_name: str, key: Any) -> bool:
        """Whether a document of ``model_name`` with primary key ``key`` waits in ``incoming`` (see ``WriteView``)."""
        return bool(self.incoming) and any(incoming.holds(model_name, key) for incoming in self.incoming.values())

    def _transaction(self, spec: Command, command: dict[str, Any], routed: int | None) -> tuple[Result, bytes]:
        """Run ``spec``'s handler for a command routed by slot ``routed`` (``None``: by none).

        Its writes are undone on any exception, or a result that is not JSON;
        and when its ``WriteView`` raised a slot refusal, the command answers
        with the first one, whatever the handler did with it.
        """
        stamp, request_id = float(command.get("time", 0.0)), command.get("request_id") or ""
        view = WriteView(
            self.collection, stamp, request_id, partial(self.slots.touch_refusal, routed=routed), self._awaiting_import
        )
        try:
            result = spec.handler(self, command, view)
            outcome = (result, encode_json(result)) if spec.fresh_result else _json_result(result)
        except DocraftError as exc:
            view.rollback()
            outcome = _error_result(exc)
        except Exception as exc:  # a bug in docraft's own handler, or a result that is not JSON
            view.rollback()
            outcome = _internal_error(exc)
        if view.refusal is not None:  # app code caught the fence's refusal: it still refuses the whole command
            view.rollback()
            return _error_result(view.refusal)
        return outcome

    def _code_mismatch(self) -> CodeMismatch:
        return CodeMismatch(
            "this replica runs app code other than the cluster's; it applies nothing until fixed",
            cluster=self.fingerprint,
            local=self.local_fingerprint,
        )

    def remember(self, request_id: str, remembered: Remembered) -> None:
        """Keep ``remembered`` (digest, result as ``encode_json`` gives it, slot) under ``request_id``; the
        oldest is forgotten past ``remembered_requests``."""
        self.recent[request_id] = remembered
        while len(self.recent) > self.remembered_requests:
            self.recent.popitem(last=False)

    def remember_result(self, request_id: str, digest: str | None, result: Result, slot: int | None) -> None:
        """``remember`` a decoded ``result`` (one a snapshot or a slot move carried)."""
        self.remember(request_id, (digest, encode_json(result), slot))

    # -- command handlers (see ``Command``) ----------------------------------------

    def _mutation(self, command: dict[str, Any], view: WriteView) -> Result:
        """Run an app mutation; its writes are undone if it raises or returns something not JSON."""
        name = str(command.get("endpoint"))
        endpoint = self.app.endpoint(name)
        if endpoint.kind != "mutation":
            raise BadRequest(f"{endpoint.name} is a query, not a mutation")
        args = command.get("args", {})
        if not isinstance(args, dict) or set(args) - set(endpoint.params):
            raise BadRequest(f"{name} takes the arguments {sorted(endpoint.params)}")
        try:
            value = endpoint(view, **args)
        except DocraftError:
            raise
        except Exception as exc:  # a bug in app code; only the type name: the text may hold addresses
            raise EndpointFailed(f"{name} raised {type(exc).__name__}") from None
        try:
            return {"ok": _json_copy(value)}
        except NotJSON:
            raise EndpointFailed(f"{name} returned a value that is not JSON") from None

    def _mutation_slot(self, command: dict[str, Any]) -> int | None:
        """The slot of the mutation's shard key; ``None`` when the mutation is malformed (it is refused)."""
        endpoint = self.app.endpoints.get(str(command.get("endpoint")))
        args = command.get("args", {})
        if endpoint is None or endpoint.kind != "mutation" or not isinstance(args, dict):
            return None
        if endpoint.shard_key not in args:
            return None
        try:
            return slot_of(endpoint.shard_key_of(args))
        except (TypeError, ValueError, OverflowError):  # a key no document can have (an integer past 64 bits)
            return None

    def _insert_batch_slot(self, command: dict[str, Any]) -> int | None:
        """The batch's ``slot``; ``None`` when it has none (logged before slots: each document is fenced alone)."""
        if "slot" not in command:
            return None
        slot = command["slot"]
        if not _is_slot(slot):
            raise BadRequest("insert_batch's slot must be the hash slot its documents were routed by", param="slot")
        return slot

    def _insert_batch(self, command: dict[str, Any], view: WriteView) -> Result:
        """Insert documents one by one; each gets its own result so one bad row spoils nothing.

        A document whose partition key is not in the batch's ``slot`` gets a
        ``wrong_shard`` result (the fence checked that slot, not this one). A
        batch without ``slot`` checks each document's own slot instead.
        """
        model = self.app.model(str(command.get("model")))
        docs = command.get("docs")
        if not isinstance(docs, list):
            raise ValidationError("insert_batch needs a list of documents")
        return {"ok": self._insert_docs(model, docs, command.get("slot"), view)}

    def _insert_parts(self, command: dict[str, Any], view: WriteView) -> Result:
        """A bulk insert's documents of many slots in one pass: ``{"ok": [one result per part]}``.

        Each part ``{"slot", "request_id", "docs"}`` gets what the command
        ``{"type": "insert_batch", "model", "docs", "slot", "request_id"}`` would
        get (the same digest, so a part resent in either form is recognised):
        the first result if its request id was applied (``idempotency_key_reused``
        if it named other documents), the slot's refusal if the slot is not
        writable here (not remembered: the router sends the part again where
        the slot is), or one result per document, remembered with the slot
        (so it moves with the slot) once every part is stored. A malformed
        part refuses the whole command (``bad_request``), storing nothing.
        """
        model_name = command.get("model")
        model = self.app.model(str(model_name))
        parts = command.get("parts")
        if not isinstance(parts, list) or not all(map(is_insert_part, parts)):
            raise BadRequest("insert_parts needs a list of parts, each {slot, request_id, docs: [...]}", param="parts")
        applied: dict[str, Remembered] = {}
        results: list[Result] = []
        for part in parts:
            request_id, slot, docs = part["request_id"], part["slot"], part["docs"]
            texts = [canonical_json(doc) for doc in docs]
            digest = _insert_batch_digest(model_name, slot, texts)
            known = applied.get(request_id) or self.recent.get(request_id)
            if known is not None:
                results.append(_replayed(request_id, digest, known))
            elif (refusal := self._write_refusal(slot)) is not None:
                results.append(refusal.to_json())
            else:
                result = {"ok": self._insert_docs(model, docs, slot, view, texts)}
                applied[request_id] = (digest, encode_json(result), slot)
                results.append(result)
        for request_id, remembered in applied.items():
            self.remember(request_id, remembered)
        return {"ok": results}

    def _insert_docs(
        self,
        model: type[Model],
        docs: list[Any],
        routed: int | None,
        view: WriteView,
        texts: Sequence[str | None] | None = None,
    ) -> list[Result]:
        """Validate and store each of ``docs`` for an insert routed by slot ``routed`` (``None``: by none);
        one result per document, ``{"ok": primary key}`` or the error that kept it out. ``texts`` are
        the documents' ``canonical_json``, when the caller has them."""
        collection = self.collections[model.name]
        results: list[Result] = []
        for doc, text in zip(docs, texts or [None] * len(docs), strict=True):
            try:
                valid = model.validate(doc)
                slot = collection.slot_of(valid)
                if (refusal := self._batch_refusal(slot, routed)) is not None:
                    raise refusal
                kept = text if text is not None and _kept_as_is(valid, doc) else None
                results.append({"ok": view.insert_validated(model, valid, slot, kept)})
            except DocraftError as exc:  # raised before the document is stored
                results.append(exc.to_json())
        return results

    def _batch_refusal(self, slot: int, routed: int | None) -> DocraftError | None:
        """Why an ``insert_batch`` routed by ``routed`` may not store a document of ``slot`` here, or ``None``.

        Checked before the document reaches the ``WriteView``, whose refusal would refuse the whole batch.
        """
        if not self.slots.initialized or slot == routed:
            return None  # before slots, nothing is fenced; the routed slot passed the fence
        refusal = self.slots.refusal(slot, WRITABLE)
        if routed is None or refusal is not None:
            return refusal
        return WrongShard(
            f"the document is in slot {slot}, not the batch's slot {routed}",
            slot=slot,
            owner=None,
            shard=None,
            epoch=self.slots.epoch,
            replicas=[],
        )

    def _migrate(self, command: dict[str, Any], view: WriteView) -> Result:
        """Rewrite every document of a model to the code's version in this one command, or none."""
        model_name, target = command.get("model"), command.get("to")
        if not isinstance(model_name, str) or not isinstance(target, int) or isinstance(target, bool):
            raise BadRequest("migrate needs a model name and an integer version")
        if active := moves.active(self):
            raise MigrationRefused(f"slots are moving here (move {active[0]}); migrate once it ends", moves=active)
        plan = migration.plan(self.app, self.collections, self.versions, model_name, target)
        summary = plan.summary
        if summary["failure_count"]:
            count = summary["failure_count"]
            raise MigrationRefused(f"{count} {plan.model.name} documents would fail to migrate or validate", **summary)
        if summary["from"] != summary["to"]:
            for doc in plan.documents:
                view.put(plan.model, doc)
            self.versions[plan.model.name] = summary["to"]
        return {"ok": {key: summary[key] for key in ("model", "from", "to", "documents")}}

    def _set_fingerprint(self, command: dict[str, Any], view: WriteView) -> Result:
        """Record the cluster's code fingerprint; ``initial`` ones never replace a recorded one."""
        fingerprint = command.get("fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint:
            raise BadRequest("set_fingerprint needs a fingerprint string")
        if not (command.get("initial") and self.fingerprint is not None):
            self.fingerprint = fingerprint
        return {"ok": self.fingerprint}

    def _init_slots(self, command: dict[str, Any], view: WriteView) -> Result:
        """Own the ``ranges`` the cluster file gave this group, at version 0; once only (a new
        leader proposes it on every election: ignored once the table is initialized)."""
        ranges = parse_ranges(command.get("ranges"), "ranges")
        if not self.slots.initialized:
            for first, last in ranges:
                self.slots.assign(first, last, SlotRange(first, last, OWNED, 0))
            self.slots.initialized = True
        return {"ok": self.slots.slot_ranges(READABLE)}

    def _set_members(self, command: dict[str, Any], view: WriteView) -> Result:
        """Record the group's voters and learners (``[{"id", "raft", "http"}]`` each), replacing them whole."""
        self.members = {role: moves.replicas(command.get(role), role) for role in ("voters", "learners")}
        return {"ok": self.members}

    def _noop(self, command: dict[str, Any], view: WriteView) -> Result:
        """Nothing: a new leader commits one to learn what is committed (Raft section 8)."""
        return {"ok": None}

    def _batch(self, command: dict[str, Any], view: WriteView) -> Result:
        """Apply each command in order, each with its own result, request id and rollback."""
        commands = command.get("commands")
        if not isinstance(commands, list) or any(c.get("type") == "batch" for c in commands if isinstance(c, dict)):
            raise BadRequest("a batch holds a list of commands, none of them a batch")
        return {"ok": [self._execute(c)[0] for c in commands]}

    def _unknown(self, command: dict[str, Any], view: WriteView) -> Result:
        """Any type not in the table (``UNKNOWN``'s handler)."""
        raise BadRequest(f"unknown command type {command.get('type')!r}")

    COMMANDS: ClassVar[dict[str, Command]] = {
        "mutation": Command(
            _mutation,
            needs_cluster_code=True,
            needs_migrated_data=True,
            remembered=True,
            routed_slot=_mutation_slot,
            fresh_result=True,
        ),
        "insert_batch": Command(
            _insert_batch,
            needs_cluster_code=True,
            needs_migrated_data=True,
            remembered=True,
            routed_slot=_insert_batch_slot,
            fresh_result=True,
        ),
        # Fenced and remembered part by part, by the handler.
        "insert_parts": Command(
            _insert_parts, needs_cluster_code=True, needs_migrated_data=True, remembered=False, fresh_result=True
        ),
        "migrate": Command(_migrate, needs_cluster_code=True, needs_migrated_data=False, remembered=False),
        "set_fingerprint": Command(
            _set_fingerprint, needs_cluster_code=False, needs_migrated_data=False, remembered=False
        ),
        "init_slots": Command(_init_slots, needs_cluster_code=False, needs_migrated_data=False, remembered=False),
        "set_members": Command(_set_members, needs_cluster_code=False, needs_migrated_data=False, remembered=False),
        "noop": Command(_noop, needs_cluster_code=False, needs_migrated_data=False, remembered=True),
        "batch": Command(
            _batch, needs_cluster_code=False, needs_migrated_data=False, remembered=False, fresh_result=True
        ),
        # Moves: a move starts only with both groups' documents at the code's versions (and no
        # migration runs during one), so both sides hold documents of the same versions.
        "import_begin": Command(
            moves.import_begin, needs_cluster_code=True, needs_migrated_data=True, remembered=False
        ),
        "move_begin": Command(moves.move_begin, needs_cluster_code=True, needs_migrated_data=True, remembered=False),
        "import_docs": Command(moves.import_docs, needs_cluster_code=True, needs_migrated_data=False, remembered=False),
        "move_commit": Command(moves.move_commit, needs_cluster_code=True, needs_migrated_data=False, remembered=False),
        "import_commit": Command(
            moves.import_commit, needs_cluster_code=True, needs_migrated_data=False, remembered=False
        ),
        "move_abort": Command(moves.move_abort, needs_cluster_code=True, needs_migrated_data=False, remembered=False),
        "import_abort": Command(
            moves.import_abort, needs_cluster_code=True, needs_migrated_data=False, remembered=False
        ),
    }

    # -- migrations -----------------------------------------------------------

    def migration_plan(self, model_name: str, target: int, most: int = 50) -> Result:
        """What migrating ``model_name`` to ``target`` would do here, changing nothing.

        ``{"model", "from", "to", "documents", "failures": [{"key", "error"}], "failure_count"}``;
        raises ``NotFound`` or ``BadRequest`` (see ``consensus.migration.plan``).
        """
        return migration.plan(self.app, self.collections, self.versions, model_name, target, most).summary

    # -- integrity ------------------------------------------------------------

    def _content_hash(self) -> int:
        return sum(c.content_hash for c in self.collections.values()) % HASH_MODULUS

    def digest(self) -> str:
        """Hex digest of everything applied so far and of the current contents."""
        return self.integrity_log.digest()

    def integrity(self) -> dict[str, Any]:
        """What the integrity monitor compares: applied index, digest, checkpoints, code fingerprints."""
        return {
            **self.integrity_log.report(),
            "fingerprint": {"cluster": self.fingerprint, "local": self.local_fingerprint, "ok": self.code_ok},
        }

    @property
    def applied_index(self) -> int:
        """The log index of the newest entry applied with an index (0 before any)."""
        return self.integrity_log.applied_index

    @property
    def log_hash(self) -> bytes:
        """The running hash of every entry applied and its result."""
        return self.integrity_log.log_hash

    @property
    def checkpoints(self) -> list[tuple[int, str]]:
        """The newest checkpoints, ``(index, digest)``, oldest first."""
        return list(self.integrity_log.checkpoints)

    # -- reads --------------------------------------------------------------

    def lookup(self, model_name: str, field: str, values: Any) -> Result:
        """Documents of ``model_name`` whose ``field`` is one of ``values``, in primary-key order.

        Used to include related documents. Raises ``NotFound``/``BadRequest``.
        """
        if pending := migration.pending(self.app, self.versions):
            raise pending
        model = self.app.model(model_name)
        if field not in model.fields or not isinstance(values, list):
            raise BadRequest(f"lookup needs a field of {model_name} and a list of values", field=field)
        collection = self.collections[model.name]
        wanted = {ujson.dumps(v) for v in values}
        if field == model.primary_key:
            found = [d for d in (collection.get(v) for v in values) if d is not None]
        elif field in model.indexes:
            found = [d for v in values for d in collection.scan_index(field, value_key(v), value_key(v))]
        else:
            found = [d for d in collection.all() if wanted & {ujson.dumps(v) for v in _as_list(d.get(field))}]

        unique = {ujson.dumps(d[model.primary_key]): d for d in found}
        return {"kind": "docs", "items": sorted(unique.values(), key=lambda d: value_key(d[model.primary_key]))}

    def query(self, endpoint_name: str, args: dict[str, Any], explain: bool = False) -> Result:
        """Run a query endpoint on the local state; returns a page or a value as JSON."""
        if pending := migration.pending(self.app, self.versions):
            raise pending
        endpoint = self.app.endpoint(endpoint_name)
        if endpoint.kind != "query":
            raise BadRequest(f"{endpoint_name} is a mutation, not a query")
        try:
            value = endpoint(ReadView(self.collection, explain), **args)
        except DocraftError:
            raise
        except Exception as exc:
            raise EndpointFailed(f"{endpoint_name} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(value, Page):
            return value.to_json()
        return {"kind": "value", "value": value}

    # -- slots --------------------------------------------------------------

    def slots_report(self, counts: bool = False) -> dict[str, Any]:
        """The slot table, this group's moves and members; with ``counts``, documents per non-empty slot.

        ``{"initialized", "epoch", "ranges": [{"first", "last", "state", "version", "owner", "move",
        "replicas"}], "moves": [Move.report()], "members": {"voters", "learners"} | None}`` and
        ``"counts": {"<slot>": n}`` (every model, imported documents not yet committed excluded).
        """
        report: dict[str, Any] = {
            "initialized": self.slots.initialized,
            "epoch": self.slots.epoch,
            "ranges": [held.to_json() for held in self.slots.ranges],
            "moves": [move.report() for move in self.moves.values()],
            "members": self.members,
        }
        if counts:
            per_slot: dict[int, int] = {}
            for collection in self.collections.values():
                for slot, n in collection.slot_counts.items():
                    per_slot[slot] = per_slot.get(slot, 0) + n
            report["counts"] = {str(slot): per_slot[slot] for slot in sorted(per_slot)}
        return report

    def check_read(self, slot: int) -> None:
        """Raise ``WrongShard``, ``SlotImporting`` or ``SlotsUnknown`` unless ``slot`` is owned or frozen here."""
        if (refusal := self.slots.refusal(slot, READABLE)) is not None:
            raise refusal

    def check_route(self, slot: int) -> None:
        """Raise ``WrongShard`` or ``SlotsUnknown`` unless ``slot`` is held here (owned, frozen or
        importing: a write to a moving slot is proposed, and the fence at apply answers it).

        ``SlotsUnknown`` while the table is not initialized matters: the fence at apply is off until
        then (for entries logged before slots), so no new write may be proposed before it is."""
        if (refusal := self.slots.refusal(slot, ROUTABLE)) is not None:
            raise refusal

    def readable_ranges(self) -> list[list[int]]:
        """``[[first, last], ...]`` of the slots read here (owned and frozen): what a scatter answer covers."""
        return self.slots.slot_ranges(READABLE)

    def export_page(self, move: str, after: str | None, limit: int) -> dict[str, Any]:
        """One page of a frozen source move's documents and request ids; see ``consensus.moves.export_page``."""
        return moves.export_page(self, move, after, limit)

    # -- snapshots ----------------------------------------------------------

    def snapshot(self, lend: bool = False) -> dict[str, Any]:
        """The whole state as plain JSON-able data, in a canonical order.

        With ``lend`` the documents are the stored ones, lent (``query.collection``), not copies, in no
        particular order: a list of references (tens of milliseconds for 500,000 documents), quick to take
        under the replica's lock, and safe to encode after releasing it, as a stored document is replaced
        by ``put``, never changed. The caller must not change them. ``recent_requests`` is then an iterator
        (``_lent_requests``), read once.
        """
        return {
            "format": SNAPSHOT_FORMAT,
            "collections": {name: _lent(c) if lend else c.all() for name, c in self.collections.items()},
            "recent_requests": _lent_requests(self.recent) if lend else list(remembered_requests(self.recent)),
            "integrity": {**self.integrity_log.to_json(), "fingerprint": self.fingerprint},
            "versions": dict(self.versions),
            "slots": self.slots.to_json(),
            "moves": [move.to_json() for move in self.moves.values()],
            "incoming": {move: incoming.to_json() for move, incoming in self.incoming.items()},
            "members": self.members,
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the state with ``snapshot``; raises ``ValueError`` if it is not one of ours.

        Formats 2 and 3 predate slots: their table is uninitialized until ``init_slots`` is applied.
        """
        if snapshot.get("format") not in (2, 3, SNAPSHOT_FORMAT):
            raise ValueError(f"unknown snapshot format {snapshot.get('format')!r}")
        self._reset()
        for name, docs in snapshot["collections"].items():
            collection = self.collections.get(name)
            if collection is None:
                raise ValueError(f"snapshot holds collection {name!r} the app does not define")
            collection.load(docs)
        for remembered in snapshot["recent_requests"]:
            if len(remembered) == 2:  # format 2 kept no request digests
                (rid, result), digest, slot = remembered, None, None
            elif len(remembered) == 3:  # nor did formats 2 and 3 keep slots
                (rid, digest, result), slot = remembered, None
            else:
                rid, digest, result, slot = remembered
            self.remember_result(rid, digest, result, slot)
        self.integrity_log.restore(snapshot["integrity"])
        self.fingerprint = snapshot["integrity"]["fingerprint"]
        self.versions.update(snapshot.get("versions", {}))
        if "slots" in snapshot:
            self.slots = SlotTable.from_json(snapshot["slots"])
            self.moves = {m["id"]: moves.Move.from_json(m) for m in snapshot["moves"]}
            self.incoming = {
                move: moves.Incoming.from_json(data, self.app.models) for move, data in snapshot["incoming"].items()
            }
            self.members = snapshot["members"]

    def document_count(self) -> dict[str, int]:
        return {name: len(c) for name, c in self.collections.items()}


UNKNOWN = Command(StateMachine._unknown, needs_cluster_code=True, needs_migrated_data=False, remembered=True)


def _lent(collection: Collection) -> list[dict[str, Any]]:
    """The stored documents of ``collection``, lent, in storage order (its ``SortedDict`` is a ``dict``:
    reading it as one skips the sorted view's lookup per key)."""
    return list(dict.values(collection.docs))


def _lent_requests(recent: OrderedDict[str, Remembered]) -> Iterator[list[Any]]:
    """``remembered_requests`` of ``recent`` as it is now, built as they are read: from a copy of the index
    (one C-level copy; building 100,000 lists under the replica's lock costs a garbage collection pass over
    every stored document) of tuples never changed once remembered."""
    return remembered_requests(dict(recent))


def remembered_requests(recent: Mapping[str, Remembered]) -> Iterator[list[Any]]:
    """``[request id, digest, result, slot]`` of each remembered request of ``recent``, its result decoded."""
    return ([rid, digest, ujson.loads(encoded), slot] for rid, (digest, encoded, slot) in recent.items())


def request_digest(command: dict[str, Any]) -> str:
    """What a request asked for, without its envelope (request id, time): equal for a retry of it."""
    return _digest({k: v for k, v in command.items() if k not in ("request_id", "time")})


def _digest(asked: dict[str, Any]) -> str:
    return _text_digest(canonical_json(asked))


def _insert_batch_digest(model_name: Any, slot: int, texts: list[str]) -> str:
    """``_digest`` of ``{"type": "insert_batch", "model", "docs", "slot"}`` whose documents' ``canonical_json``
    are ``texts``: the same text, built around them in ``canonical_json``'s sorted key order."""
    envelope = f'],"model":{canonical_json(model_name)},"slot":{slot},"type":"insert_batch"}}'
    return _text_digest('{"docs":[' + ",".join(texts) + envelope)


def _text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _kept_as_is(valid: dict[str, Any], doc: dict[str, Any]) -> bool:
    """Whether ``valid``, what validating ``doc`` gave, holds the very values of ``doc`` and no other
    field: their ``canonical_json`` is then the same text."""
    if len(valid) != len(doc):
        return False
    for name, value in doc.items():  # noqa: SIM110 -- all() over a generator costs twice this, per document
        if valid[name] is not value:
            return False
    return True


def _replayed(request_id: str, digest: str, remembered: Remembered) -> Result:
    """What a request id applied before answers a request with ``digest``: its first result, or
    ``idempotency_key_reused`` when it named a different request (nothing is applied then)."""
    first_digest, encoded, _ = remembered
    if first_digest in (None, digest):
        result: Result = ujson.loads(encoded)
        return result
    return IdempotencyKeyReused(
        f"request id {request_id!r} already named a different request; nothing was applied", request_id=request_id
    ).to_json()


def _is_slot(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < SLOT_COUNT


def is_insert_part(part: Any) -> bool:
    """Whether ``part`` is shaped as one slot's part of an ``insert_parts``."""
    return (
        isinstance(part, dict)
        and _is_slot(part.get("slot"))
        and isinstance(part.get("request_id"), str)
        and isinstance(part.get("docs"), list)
    )


def encode_json(value: Any) -> bytes:
    """``value`` as strict JSON bytes: raises ``NotJSON`` for NaN, infinities, bytes and other non-JSON types."""
    try:
        return ujson.dumps(value, escape_forward_slashes=False, allow_nan=False, reject_bytes=True).encode()
    except Exception as exc:  # TypeError, OverflowError, or whatever a __json__ hook of app code raises
        raise NotJSON(type(exc).__name__) from None


def _json_copy(value: Any) -> Any:
    """A copy of ``value`` made of JSON types only (what every replica and every reader sees).

    Raises ``NotJSON`` when ``value`` cannot be encoded as strict JSON. ujson
    encodes tuples as arrays and calls ``__json__``/``toDict`` hooks; the copy
    is what decoding the encoding gives, so it holds lists and dicts only.
    """
    return _json_result(value)[0]


def _json_result(value: Any) -> tuple[Any, bytes]:
    """``value`` made of JSON types only, and its encoding; raises ``NotJSON``."""
    encoded = encode_json(value)
    try:
        return ujson.loads(encoded), encoded
    except ValueError:  # a __json__ hook wrote text that is not JSON
        raise NotJSON("the encoding does not decode") from None


def _encoded(result: Result) -> tuple[Result, bytes]:
    """A result docraft built from JSON values, with its encoding."""
    return result, encode_json(result)


def _error_result(exc: DocraftError) -> tuple[Result, bytes]:
    """The error's JSON body; one raised by app code with a message or details that are not JSON
    is reported by type name instead."""
    try:
        return _json_result(exc.to_json())
    except NotJSON:
        return _encoded(
            EndpointFailed(f"{type(exc).__name__} raised with a message or details that are not JSON").to_json()
        )


def _internal_error(exc: Exception) -> tuple[Result, bytes]:
    """A bug in docraft itself, reported by the exception's type name (the ``internal`` code, 500)."""
    return _encoded(DocraftError(f"docraft failed to apply the command ({type(exc).__name__})").to_json())


def _canonical_entry(command: Any) -> bytes:
    """The bytes the digest folds for a command applied without its log entry."""
    try:
        return ujson.dumps(command, sort_keys=True).encode()
    except Exception:  # only callers holding Python objects get here (never the replica); same on every run
        return f"<{type(command).__name__} that is not JSON>".encode()


def _error_code(result: Result) -> str | None:
    error = result.get("error")
    return error.get("code") if isinstance(error, dict) else None


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _finite(number: float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False
