"""Parents and co-located children, written together by one mutation."""

from __future__ import annotations

from typing import Any

from models import Model, Ref, field
from query import Page, ReadView, WriteView, mutation, query


class Parent(Model):
    id: int = field(primary_key=True)


class Child(Model, partition_key="parent_id"):
    id: int = field(primary_key=True)
    parent_id: Ref[Parent] = field(related_name="children")
    age: int = 0


@mutation(shard_key="id")
def add_family(db: WriteView, id: int, children: int) -> dict[str, Any]:
    """A parent and ``children`` children; a negative count fails after the parent is written."""
    db.insert(Parent, {"id": id})
    if children < 0:
        db.insert(Child, {"id": 99, "parent_id": id, "age": "negative"})
    kids = [db.insert(Child, {"id": 10 * id + n, "parent_id": id})["id"] for n in range(children)]
    return {"parent": id, "children": kids}


class Gift(Model):
    """Partitioned by its own key, so a parent's gifts may live on any shard."""

    id: int = field(primary_key=True)
    to: Ref[Parent] = field(related_name="gifts")


@query(shard_key="id")
def get_parent(db: ReadView, id: int | None = None) -> Page[Parent]:
    return db.find(Parent, {} if id is None else {"id": id})


@mutation(shard_key="id")
def add_gift(db: WriteView, id: int, to: int) -> dict[str, Any]:
    return db.insert(Gift, {"id": id, "to": to})
