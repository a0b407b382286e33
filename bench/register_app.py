"""The fault benchmark's app: one integer register per key, read, written and compared-and-set."""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import ReadView, WriteView, mutation, query


class Register(Model):
    key: int = field(primary_key=True)
    value: int | None = None


@query(shard_key="key", consistency="linearizable")
def reg_read(db: ReadView, key: int) -> int | None:
    """The register's value (``None`` before any write); linearizable unless asked otherwise."""
    doc = db.get(Register, key)
    return None if doc is None else doc["value"]


@mutation(shard_key="key", methods=("GET", "POST"))
def reg_write(db: WriteView, key: int, value: int) -> int:
    db.put(Register, {"key": key, "value": value})
    return value


@mutation(shard_key="key", methods=("GET", "POST"))
def reg_cas(db: WriteView, key: int, old: int, new: int) -> dict[str, Any]:
    """Set the register to ``new`` if it holds ``old``; ``{"swapped": bool, "value": the value it held}``."""
    found = None if (doc := db.get(Register, key)) is None else doc["value"]
    if found == old:
        db.put(Register, {"key": key, "value": new})
    return {"swapped": found == old, "value": found}
