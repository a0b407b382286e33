"""Version 2 of ``tags_v1_app``, whose migration step is buggy app code.

The step first marks the document's tags in place, then raises for some
labels: ``ZeroDivisionError`` for "divide", ``RuntimeError`` for "crash",
``SystemError`` for "system". The state machine must refuse the migration
whole, leave every stored document as it was (tags included), and keep
applying commands.
"""

from __future__ import annotations

from typing import Any

from models import Model, field
from models.migrations import AddField, Transform
from query import WriteView, mutation

FAILURES: dict[str, type[Exception]] = {"divide": ZeroDivisionError, "crash": RuntimeError, "system": SystemError}


def mark_then_check(doc: dict[str, Any]) -> dict[str, Any]:
    doc["tags"].append("migrated")  # changes the list it was given, not a copy of it
    failure = FAILURES.get(doc["label"])
    if failure is not None:
        raise failure(f"cannot migrate {object()!r}")  # the text differs in every process
    return doc


class Gadget(Model, version=2, migrations={2: [Transform(mark_then_check), AddField("colour", "grey")]}):
    id: int = field(primary_key=True)
    label: str
    tags: list[str]
    colour: str


@mutation(shard_key="id")
def add_gadget(db: WriteView, id: int, label: str, tags: list[str]) -> dict[str, Any]:
    return db.insert(Gadget, {"id": id, "label": label, "tags": tags, "colour": "grey"})
