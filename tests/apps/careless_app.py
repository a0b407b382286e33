"""A test app whose endpoints change, in place, every document they are handed.

Reads must hand out copies, so none of this may reach the stored documents:
only ``insert``, ``put``, ``update`` and ``delete`` change what is stored.
"""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import ReadView, WriteView, mutation, query


class Note(Model, indexes=("topic",)):
    id: int = field(primary_key=True)
    topic: str = "misc"
    tags: list[list[str]] = field(default=[["new"]])


def scribble(doc: dict[str, Any]) -> dict[str, Any]:
    """Change ``doc`` in place at every depth and return it."""
    doc["topic"] = "scribbled"
    doc["tags"].append(["scribbled"])
    doc["tags"][0].append("scribbled")
    return doc


@mutation(shard_key="id")
def add_note(db: WriteView, id: int, topic: str = "misc") -> dict[str, Any]:
    return db.insert(Note, {"id": id, "topic": topic})


@query(shard_key="id")
def read_and_scribble(db: ReadView, id: int | None = None) -> Any:
    """Scribbles on the documents a get and every access path of find return."""
    page = db.find(Note, {} if id is None else {"id": id})
    by_topic = db.find(Note, {"topic": "misc"}).items + db.find(Note, {}, order_by="topic").items
    got = [] if id is None else [db.get(Note, id)]
    return [scribble(doc) for doc in [*page.items, *by_topic, *got] if doc is not None]


@mutation(shard_key="id")
def scribble_on_get(db: WriteView, id: int) -> dict[str, Any] | None:
    """Changes what ``get`` returned without calling ``put``: nothing stored may change."""
    doc = db.get(Note, id)
    return None if doc is None else scribble(doc)


@mutation(shard_key="id")
def scribble_on_written(db: WriteView, id: int) -> list[dict[str, Any]]:
    """Changes what ``insert``, ``put`` and ``update`` returned: the stored documents are what was validated."""
    inserted = db.insert(Note, {"id": id})
    put = db.put(Note, {"id": id + 1, "topic": "put"})
    updated = db.update(Note, id + 1, {"topic": "updated"})
    return [scribble(doc) for doc in (inserted, put, updated)]


@mutation(shard_key="id")
def delete_scribble_and_fail(db: WriteView, id: int) -> None:
    """Deletes, changes the returned document, then fails: rollback must restore the original."""
    scribble(db.delete(Note, id))
    raise ValueError("fail after the delete")
