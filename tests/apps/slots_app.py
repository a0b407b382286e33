"""Counters and their co-located tags: writes whose double application shows, for slot-move tests."""

from __future__ import annotations

from typing import Any

from models import Model, Ref, field
from query import Page, ReadView, WriteView, mutation, query


class Counter(Model):
    id: int = field(primary_key=True)
    value: int = 0


class Tag(Model, partition_key="counter_id"):
    """Co-located with its counter: it lives in the counter's slot and moves with it."""

    id: int = field(primary_key=True)
    counter_id: Ref[Counter] = field(related_name="tags")


@mutation(shard_key="id")
def add(db: WriteView, id: int, amount: int) -> dict[str, Any]:
    """Add ``amount`` to counter ``id`` (created at 0): applied twice, it shows."""
    current = db.get(Counter, id) or {"id": id, "value": 0}
    return db.put(Counter, {"id": id, "value": current["value"] + amount})


@mutation(shard_key="counter_id")
def tag(db: WriteView, id: int, counter_id: int) -> dict[str, Any]:
    return db.insert(Tag, {"id": id, "counter_id": counter_id})


@mutation(shard_key="id")
def add_to_both(db: WriteView, id: int, other: int) -> dict[str, Any]:
    """Add 1 to two counters in one mutation (which may be of two slots)."""
    add(db, id, 1)
    return add(db, other, 1)


@query(shard_key="id")
def get_counter(db: ReadView, id: int | None = None) -> Page[Counter]:
    return db.find(Counter, {} if id is None else {"id": id})
