"""An app whose endpoints declare the permissions they need: defaults, and others named in the decorators."""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import Page, ReadView, WriteView, mutation, query


class Note(Model):
    id: int = field(primary_key=True)
    text: str


@query(shard_key="id")
def get_note(db: ReadView, id: int | None = None) -> Page[Note]:
    """Needs read, the default of a query."""
    return db.find(Note, {} if id is None else {"id": id})


@mutation(shard_key="id")
def add_note(db: WriteView, id: int, text: str) -> dict[str, Any]:
    """Needs write, the default of a mutation."""
    return db.insert(Note, {"id": id, "text": text})


@mutation(shard_key="id", permission="admin")
def erase_note(db: WriteView, id: int) -> dict[str, Any]:
    """Needs admin, as declared."""
    return db.delete(Note, id)


@query(permission="status")
def count_notes(db: ReadView) -> int:
    """Needs status, as declared."""
    return len(db.find(Note, {}, limit=1000).items)
