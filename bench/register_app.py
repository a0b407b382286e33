"""The fault benchmark's app: integer registers (read, write, compare-and-set) and counters (read, increment)."""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import ReadView, WriteView, mutation, query


class Register(Model):
    key: int = field(primary_key=True)
    value: int | None = None


class Counter(Model):
    key: int = field(primary_key=True)
    value: int = 0


@query(shard_key="key", consistency="linearizable")
def reg_read(db: ReadView, key: int) -> int | None:
    """The register's value (``None`` before any write); linearizable unless asked otherwise."""
    doc = db.get(Register, key)
    return None if doc is None else doc["value"]


@mutation(shard_key="key")
def reg_write(db: WriteView, key: int, value: int) -> int:
    db.put(Register, {"key": key, "value": value})
    return value


@mutation(shard_key="key")
def reg_cas(db: WriteView, key: int, old: int, new: int) -> dict[str, Any]:
    """Set the register to ``new`` if it holds ``old``; ``{"swapped": bool, "value": the value it held}``."""
    found = None if (doc := db.get(Register, key)) is None else doc["value"]
    if found == old:
        db.put(Register, {"key": key, "value": new})
    return {"swapped": found == old, "value": found}


@query(shard_key="key", consistency="linearizable")
def counter_read(db: ReadView, key: int) -> int:
    """The counter's value (0 before any increment); linearizable unless asked otherwise."""
    return _count(db, key)


@mutation(shard_key="key")
def incr(db: WriteView, key: int, by: int) -> int:
    """Add ``by`` to the counter; its new value. Not idempotent by itself: retries need an Idempotency-Key."""
    value = _count(db, key) + by
    db.put(Counter, {"key": key, "value": value})
    return value


def _count(db: ReadView, key: int) -> int:
    doc = db.get(Counter, key)
    return 0 if doc is None else int(doc["value"])
