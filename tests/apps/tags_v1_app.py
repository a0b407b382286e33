"""Version 1 of a small app whose gadgets carry a label and a list of tags."""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import WriteView, mutation


class Gadget(Model):
    id: int = field(primary_key=True)
    label: str
    tags: list[str]


@mutation(shard_key="id")
def add_gadget(db: WriteView, id: int, label: str, tags: list[str]) -> dict[str, Any]:
    return db.insert(Gadget, {"id": id, "label": label, "tags": tags})
