"""A replica's side of ``docraft backup``: ``GET /_shard/backup`` streams its group's state at one Raft index.

The replica first commits a no-op through Raft, as a linearizable read does (``ShardService.read``): that
fails with ``NotLeader`` on a follower, and on the leader proves it still leads and has applied everything
its group committed before the call, so every write acknowledged before the backup asked is in the state.
Then, under the replica's lock, it takes the state machine's snapshot with the stored documents lent
(``StateMachine.snapshot(lend=True)``: lists of references, and the remembered requests' index copied, so
the lock is held for tens of milliseconds even with 500,000 documents and 100,000 requests, instead of the
seconds copying them takes) and, at the same instant, the index the state machine has applied, its digest
and counts. Encoding happens after the lock is released, a slice of ``CHUNK_ITEMS`` list items at a time,
flushed to the socket every ``FLUSH_BYTES``: the event loop serves other requests between slices, and the
replica never holds the whole encoded state in memory (but keeps alive, until the stream ends, the
documents replaced meanwhile).

Why lending is safe: nothing changes a stored document in place. Every write stores a new object
(``Model.validate`` builds one, sharing no list with its input; a move installs the documents it received;
rollback puts the replaced objects back), and every reader outside the store, app code included, gets
copies (``query.collection``). The rest of the snapshot is built fresh or never changes once written (the
remembered results, a finished move's record), except while a slot move is active here: its record and the
documents it received (``incoming``) grow with each ``import_docs``, so encoding them after the lock would
mix later state into the backup. A group with a move in progress refuses the backup (``SlotFrozen`` or
``SlotImporting``), as ``docraft backup`` would refuse the copy anyway.

The body (``application/x-ndjson``) is two lines: the header (``header``), then the snapshot, the JSON
object ``snapshot.json`` holds as ``state`` (``consensus.replica``), which ``docraft restore`` loads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from functools import partial
from itertools import islice
from typing import Any

import ujson
from tornado.iostream import StreamClosedError

from consensus.moves import ACTIVE
from consensus.slots import FROZEN, ranges_json
from consensus.state_machine import StateMachine
from models.errors import CodeMismatch, DocraftError, ReplicaFaulted, SlotFrozen, SlotImporting
from node.handlers import JSONHandler
from node.shard_service import ShardService

log = logging.getLogger("docraft.backup")

CHUNK_ITEMS = 2000  # list items (documents, remembered requests) encoded at a time
FLUSH_BYTES = 1 << 20  # bytes written before waiting for the socket to take them
CONTENT_TYPE = "application/x-ndjson"
MOVE_RETRY_AFTER = 1.0  # seconds to wait before backing up a group whose slots are moving

_dumps = partial(ujson.dumps, escape_forward_slashes=False)


async def take_snapshot(service: ShardService, timeout: float) -> dict[str, Any]:
    """``{"header", "state"}``: the group's state at one index, taken on its leader; see the module docstring.

    ``header`` is ``{"shard", "replica", "index", "term", "digest", "documents", "versions", "fingerprint",
    "slots", "moves"}``: the state machine's applied index, the term of the leader that served it, the
    digest and document counts at that index, the model versions of the stored documents, the cluster's
    code fingerprint, the slot table and the moves the state records. ``state``'s documents are lent:
    encode them, never change them. Raises ``ReplicaFaulted``, ``CodeMismatch``, ``NotLeader``,
    ``OutcomeUnknown`` (no commit within ``timeout`` seconds), or ``SlotFrozen``/``SlotImporting`` while a
    slot move is active in the group. Event loop.
    """
    replica = service.replica
    if replica.fault is not None:
        raise ReplicaFaulted(f"replica {service.config.id} serves nothing: {replica.fault.message}")
    if not replica.state_machine.code_ok:
        raise CodeMismatch(f"replica {service.config.id} runs app code other than the cluster's; it serves no data")
    await replica.submit({"type": "noop"}, timeout)
    term = replica.status()["term"]

    def take(state: StateMachine) -> dict[str, Any]:
        if (moving := move_in_progress(state)) is not None:
            raise moving
        snapshot = state.snapshot(lend=True)
        header = {
            "shard": service.config.shard,
            "replica": service.config.id,
            "index": state.applied_index,
            "term": term,
            "digest": state.digest(),
            "documents": state.document_count(),
            "versions": snapshot["versions"],
            "fingerprint": state.fingerprint,
            "slots": snapshot["slots"],
            "moves": snapshot["moves"],
        }
        return {"header": header, "state": snapshot}

    return replica.read_locally(take)


def move_in_progress(state: StateMachine) -> DocraftError | None:
    """The refusal of a backup while a slot move is active in ``state``'s group (see the module docstring),
    or ``None``: ``SlotFrozen`` on the move's source, ``SlotImporting`` on its target."""
    for move in state.moves.values():
        if move.state in ACTIVE:
            refusal = SlotFrozen if move.state == FROZEN else SlotImporting
            return refusal(
                f"slots {ranges_json(move.slots)} are moving ({move.role} of move {move.id}): "
                "back up once the move is done",
                slot=move.slots[0][0],
                move=move.id,
                retry_after=MOVE_RETRY_AFTER,
            )
    return None


def json_chunks(value: Any, items: int = CHUNK_ITEMS) -> Iterator[str]:
    """``value`` as JSON text, in pieces whose concatenation ``ujson.loads`` reads back as ``value``.

    Objects are written key by key, lists longer than ``items`` and iterators (as arrays, consumed)
    ``items`` elements at a time, so no piece encodes more than one slice of a list.
    """
    if isinstance(value, dict):
        yield "{"
        for n, (key, item) in enumerate(value.items()):
            yield ("," if n else "") + _dumps(key) + ":"
            yield from json_chunks(item, items)
        yield "}"
    elif isinstance(value, list) and len(value) > items:
        yield from json_chunks(iter(value), items)
    elif isinstance(value, Iterator):
        yield "["
        separator = ""
        while batch := list(islice(value, items)):
            yield separator + _dumps(batch)[1:-1]
            separator = ","
        yield "]"
    else:
        yield _dumps(value)


class ShardBackupHandler(JSONHandler):
    """``GET /_shard/backup``: the group's state at one index, from its leader (``docraft backup``).

    Errors before the first byte (``NotLeader`` on a follower, ...) have the one error shape; a stream
    cut short is detected by the reader (an incomplete chunked body, JSON that does not parse).
    """

    def initialize(self, service: ShardService) -> None:
        self.service = service

    async def get(self) -> None:
        taken = await take_snapshot(self.service, self.raft_timeout())
        self.set_header("Content-Type", CONTENT_TYPE)
        self.write(_dumps(taken["header"]) + "\n")
        waiting = 0
        try:
            for piece in json_chunks(taken["state"]):
                self.write(piece)
                waiting += len(piece)
                if waiting >= FLUSH_BYTES:
                    await self.flush()
                    waiting = 0
            self.write("\n")
            await self.finish()
        except StreamClosedError:
            log.info("replica %s: the backup's reader went away mid-stream", self.service.config.id)
