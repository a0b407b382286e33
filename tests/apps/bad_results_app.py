"""A test app whose mutations write, then return or raise something that is not JSON.

The state machine must answer each with an error, undo the write, and keep
applying: a result every replica fails to encode would otherwise stop the shard.
"""

from __future__ import annotations

import datetime
from typing import Any

from models import Model, field
from models.errors import ValidationError
from query import WriteView, mutation


class Thing(Model):
    id: int = field(primary_key=True)
    colour: str = "grey"


@mutation(shard_key="id")
def add_thing(db: WriteView, id: int) -> dict[str, Any]:
    return db.insert(Thing, {"id": id})


@mutation(shard_key="id")
def add_then_return_set(db: WriteView, id: int) -> Any:
    db.insert(Thing, {"id": id})
    return {id, id + 1}


@mutation(shard_key="id")
def add_then_return_bytes(db: WriteView, id: int) -> Any:
    db.insert(Thing, {"id": id})
    return {"id": id, "raw": b"\x00\x01"}


@mutation(shard_key="id")
def add_then_return_datetime(db: WriteView, id: int) -> Any:
    db.insert(Thing, {"id": id})
    return [datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)]


@mutation(shard_key="id")
def add_then_return_nan(db: WriteView, id: int) -> Any:
    db.insert(Thing, {"id": id})
    return {"score": float("nan")}


@mutation(shard_key="id")
def add_then_return_infinity(db: WriteView, id: int) -> Any:
    db.insert(Thing, {"id": id})
    return [1.0, float("-inf")]


@mutation(shard_key="id")
def add_then_return_bad_json_hook(db: WriteView, id: int) -> Any:
    """ujson calls ``__json__`` and trusts its text: this one writes text that is not JSON."""

    class Sneaky:
        def __json__(self) -> str:
            return "{not json"

    db.insert(Thing, {"id": id})
    return Sneaky()


@mutation(shard_key="id")
def add_then_raise_error_with_a_set(db: WriteView, id: int) -> None:
    """A docraft error whose details ujson cannot encode."""
    db.insert(Thing, {"id": id})
    raise ValidationError("raised by the app on purpose", ids={id})


@mutation(shard_key="id")
def add_then_return_tuple(db: WriteView, id: int) -> Any:
    """A tuple encodes as a JSON array: accepted, and answered as a list."""
    db.insert(Thing, {"id": id})
    return (id, "added")
