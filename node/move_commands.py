"""The shapes of the slot-move commands and of the export read, checked before anything reaches the log.

The rebalancer (``node.rebalance``) proposes seven commands through a router
(see ``consensus.state_machine``'s move commands for what each does):

    import_begin  {move, source, slots, epoch}                       on the target T
    move_begin    {move, target, target_replicas, slots, epoch}      on the source S
    import_docs   {move, batch, docs: {model: [doc...]}, requests}   on T, one export page each
    move_commit   {move, epoch}                                      on S: the decision
    import_commit {move, epoch, count, hash}                         on T
    move_abort    {move}  /  import_abort {move}                     before the decision

and reads the source's frozen documents a page at a time with
``{"export": {"move", "after", "limit"}, "consistency": "linearizable"}``.
A replica checks each shape here (``ShardService``) and answers
``BadRequest`` naming the field; what the fields mean against the group's
state (a known move, a fresh epoch) is the state machine's to judge.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from consensus.slots import SLOT_COUNT
from models.errors import BadRequest

if TYPE_CHECKING:
    from node.shard_service import ShardService

# The most documents one export page may ask for: a page is one import_docs log entry on the target.
EXPORT_LIMIT_MAX = 2000


def _name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 200


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _epoch(value: Any) -> bool:
    return _count(value) and bool(value > 0)


def _slots(value: Any) -> bool:
    """A non-empty list of inclusive ``[first, last]`` ranges within the slot space."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(r, list) and len(r) == 2 and all(_count(s) for s in r) and r[0] <= r[1] < SLOT_COUNT
            for r in value
        )
    )


def _replicas(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(r, dict) and all(_name(r.get(k)) for k in ("id", "raft", "http")) for r in value
    )


def _docs(value: Any) -> bool:
    return isinstance(value, dict) and all(
        _name(model) and isinstance(docs, list) and all(isinstance(d, dict) for d in docs)
        for model, docs in value.items()
    )


def _requests(value: Any) -> bool:
    """``[[request_id, digest, result, slot], ...]`` as ``export_page`` gives them."""
    return isinstance(value, list) and all(
        isinstance(r, list)
        and len(r) == 4
        and isinstance(r[0], str)
        and (r[1] is None or isinstance(r[1], str))
        and isinstance(r[2], dict)
        and (r[3] is None or _count(r[3]))
        for r in value
    )


def _text(value: Any) -> bool:
    return isinstance(value, str)


Shape = dict[str, Callable[[Any], bool]]

SHAPES: dict[str, Shape] = {
    "import_begin": {"move": _name, "source": _name, "slots": _slots, "epoch": _epoch},
    "move_begin": {"move": _name, "target": _name, "target_replicas": _replicas, "slots": _slots, "epoch": _epoch},
    "import_docs": {"move": _name, "batch": _count, "docs": _docs, "requests": _requests},
    "move_commit": {"move": _name, "epoch": _epoch},
    "import_commit": {"move": _name, "epoch": _epoch, "count": _count, "hash": _text},
    "move_abort": {"move": _name},
    "import_abort": {"move": _name},
}

_WHAT: dict[Callable[[Any], bool], str] = {
    _name: "a non-empty string",
    _count: "a non-negative integer",
    _epoch: "a positive integer",
    _slots: f"a non-empty list of [first, last] slot ranges within 0-{SLOT_COUNT - 1}",
    _replicas: 'a list of {"id", "raft", "http"} strings',
    _docs: "an object of model name -> list of documents",
    _requests: "a list of [request_id, digest, result, slot]",
    _text: "a string",
}


def checked_move(service: ShardService, command: dict[str, Any]) -> dict[str, Any]:
    """``command`` as sent if every field of its type's shape is present and well-formed; else ``BadRequest``.

    A row of ``ShardService.ROUTED_COMMANDS`` for each of ``SHAPES``.
    """
    kind = str(command.get("type"))
    for field, valid in SHAPES[kind].items():
        if not valid(command.get(field)):
            raise BadRequest(f"{kind} needs {field} as {_WHAT[valid]}", param=field)
    return command


def export_request(request: Any) -> tuple[str, str | None, int]:
    """``(move, after, limit)`` of an ``{"export": {...}}`` read; ``BadRequest`` for a malformed one."""
    if not isinstance(request, dict):
        raise BadRequest('an export read takes {"move": ID, "after": CURSOR|null, "limit": N}')
    move, after, limit = request.get("move"), request.get("after"), request.get("limit")
    if not _name(move):
        raise BadRequest("an export read needs the move id as a non-empty string", param="move")
    if after is not None and not isinstance(after, str):
        raise BadRequest("an export read's after is the previous page's next cursor, or null", param="after")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 0 < limit <= EXPORT_LIMIT_MAX:
        raise BadRequest(f"an export read's limit is an integer from 1 to {EXPORT_LIMIT_MAX}", param="limit")
    return str(move), after, limit
