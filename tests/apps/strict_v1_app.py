"""Version 1 of a small app whose ages are free text."""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import WriteView, mutation


class Person(Model):
    id: int = field(primary_key=True)
    age: str


@mutation(shard_key="id")
def add(db: WriteView, id: int, age: str) -> dict[str, Any]:
    return db.insert(Person, {"id": id, "age": age})
