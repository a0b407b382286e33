"""Notes whose sample file holds a row the cluster refuses (a second note 2): ``docraft up`` must not mark it loaded."""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import WriteView, mutation


class Note(Model):
    id: int = field(primary_key=True)
    text: str = ""


@mutation(shard_key="id")
def add_note(db: WriteView, id: int, text: str) -> dict[str, Any]:
    return db.insert(Note, {"id": id, "text": text})


SAMPLE_DATA = {"Note": "flawed_sample_notes.csv"}
