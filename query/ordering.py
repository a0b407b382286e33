"""Total ordering of stored values and opaque pagination cursors.

Sort keys put ``None`` before every value so optional fields can be indexed,
and pair each document's order value with its primary key, so that every
document has one position and a cursor ``(value, key)`` resumes exactly after
it, on one shard or merged across many.
"""

from __future__ import annotations

import base64
from typing import Any

import ujson

from models.errors import BadRequest
from models.types import ValueType

SortKey = tuple[Any, ...]

# Compares above every value key (0,) / (1, v): the top of a key range.
KEY_MAX: SortKey = (2,)


def value_key(value: Any) -> SortKey:
    """Key of one field value; ``None`` sorts first."""
    return (0,) if value is None else (1, value)


def position(doc: dict[str, Any], order_by: str, primary_key: str) -> tuple[SortKey, SortKey]:
    """Where ``doc`` stands when ordered by ``order_by``, ties broken by primary key."""
    return (value_key(doc.get(order_by)), value_key(doc[primary_key]))


def encode_cursor(doc: dict[str, Any], order_by: str, primary_key: str) -> str:
    """An opaque cursor that resumes right after ``doc``."""
    raw = ujson.dumps([doc.get(order_by), doc[primary_key]])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, order_type: ValueType, key_type: ValueType) -> tuple[SortKey, SortKey]:
    """The position a cursor names, for a query ordered by a field of ``order_type``.

    Raises ``BadRequest`` for a cursor docraft did not make for such a query.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value, key = ujson.loads(base64.urlsafe_b64decode(padded.encode()))
        value = None if value is None else order_type.check(value)
        key = key_type.check(key)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"cursor {cursor!r} is not a cursor docraft returned for this query", param="cursor") from exc
    return (value_key(value), value_key(key))
