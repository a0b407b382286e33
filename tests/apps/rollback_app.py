"""A test app whose mutations write and then fail, to check the state machine rolls them back."""

from __future__ import annotations

from typing import Any

from models import Model, field
from models.errors import DuplicateKey
from query import ReadView, WriteView, mutation, query


class Thing(Model, indexes=("colour",)):
    id: int = field(primary_key=True)
    colour: str = "grey"


@query(shard_key="id")
def get_thing(db: ReadView, id: int | None = None, colour: str | None = None) -> Any:
    where: dict[str, Any] = {}
    if id is not None:
        where["id"] = id
    if colour is not None:
        where["colour"] = colour
    return db.find(Thing, where)


@mutation(shard_key="id")
def add_thing(db: WriteView, id: int, colour: str = "grey") -> dict[str, Any]:
    return db.insert(Thing, {"id": id, "colour": colour})


@mutation(shard_key="id")
def add_two_then_duplicate(db: WriteView, id: int) -> None:
    """Inserts ``id`` and ``id + 1``, then inserts ``id`` again: ``DuplicateKey`` after two writes."""
    db.insert(Thing, {"id": id, "colour": "red"})
    db.insert(Thing, {"id": id + 1, "colour": "red"})
    db.insert(Thing, {"id": id, "colour": "blue"})


@mutation(shard_key="id")
def add_two_then_raise_docraft_error(db: WriteView, id: int) -> None:
    db.insert(Thing, {"id": id, "colour": "red"})
    db.insert(Thing, {"id": id + 1, "colour": "red"})
    raise DuplicateKey("raised by the app on purpose", key=id)


@mutation(shard_key="id")
def add_two_then_crash(db: WriteView, id: int) -> None:
    db.insert(Thing, {"id": id, "colour": "red"})
    db.insert(Thing, {"id": id + 1, "colour": "red"})
    raise RuntimeError("app bug after two writes")


@mutation(shard_key="id")
def rewrite_then_crash(db: WriteView, id: int) -> None:
    """Updates ``id``, deletes ``id + 1``, re-inserts ``id + 1`` changed, puts ``id + 2``, then crashes."""
    db.update(Thing, id, {"colour": "changed"})
    db.delete(Thing, id + 1)
    db.insert(Thing, {"id": id + 1, "colour": "reborn"})
    db.put(Thing, {"id": id + 2, "colour": "put"})
    db.update(Thing, id + 2, {"colour": "put-then-updated"})
    raise ValueError("app bug after five writes")


@mutation(shard_key="id")
def crash_with_an_address(db: WriteView, id: int) -> None:
    """Writes, then raises an exception whose text differs in every process (an object's address)."""
    db.insert(Thing, {"id": id, "colour": "red"})
    raise TypeError(f"cannot use {object()!r} here")
