"""Request ids: what a mutation is committed under, derived from the client's ``Idempotency-Key``."""

from __future__ import annotations

import re
import uuid

from models.errors import BadRequest

_KEY = re.compile(r"[A-Za-z0-9._-]{1,128}")


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def request_id_for(idempotency_key: str | None) -> str:
    """The request id a mutation is committed under: derived from the client's key, or from a fresh one.

    Raises ``BadRequest`` for a key that is not 1 to 128 of ``A-Z a-z 0-9 . _ -``.
    """
    key = new_idempotency_key() if idempotency_key is None else idempotency_key
    if not _KEY.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1 to 128 characters from A-Z a-z 0-9 . _ -", param="Idempotency-Key")
    return f"key:{key}"


def key_of(request_id: str) -> str:
    """The idempotency key a request id was derived from (the inverse of ``request_id_for``)."""
    return request_id.removeprefix("key:").split(":", 1)[0] if request_id.startswith("key:") else request_id
