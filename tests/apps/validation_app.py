"""An app whose mutation builds documents from loosely typed input, so the model rejects some (422)."""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import WriteView, mutation


class Reading(Model):
    id: int = field(primary_key=True)
    celsius: float


@mutation(shard_key="id", methods=("GET", "POST"))
def record(db: WriteView, id: int, value: str) -> dict[str, Any]:
    """Stores ``value`` as given: text that is not a number fails the model, not the parameter."""
    number: Any = float(value) if value.replace(".", "", 1).isdigit() else value
    return db.insert(Reading, {"id": id, "celsius": number})
