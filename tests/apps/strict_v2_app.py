"""Version 2: ages become integers; text that is not a number cannot be migrated."""

from __future__ import annotations

from typing import Any

from models import Model, field
from models.migrations import ChangeType
from query import WriteView, mutation


def to_int(text: str) -> int:
    return int(text)


class Person(Model, version=2, migrations={2: [ChangeType("age", to_int)]}):
    id: int = field(primary_key=True)
    age: int


@mutation(shard_key="id")
def add(db: WriteView, id: int, age: int) -> dict[str, Any]:
    return db.insert(Person, {"id": id, "age": age})
