"""Sealed page cursors: a client gets back only cursors docraft made, for the endpoint that made them.

A page's ``next`` (``query.ordering.encode_cursor``) names a position in the
planner's order; left open, a client could forge one that makes every shard
scan past everything to find nothing. Routers therefore hand cursors out
sealed, ``<cursor>.<mac>``, where the MAC is HMAC-SHA256, truncated to 128
bits, of the endpoint's name and the cursor under ``cursor_key`` (derived from
the cluster secret), and open them again before a read reaches a shard. A
cursor changed, made for another endpoint or by another cluster does not
open: ``BadRequest``. These are pure functions of the key they are given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from models.errors import BadRequest

_KEY_LABEL = b"docraft page cursor v1"
_MAC_BYTES = 16


def cursor_key(secret: str) -> bytes:
    """The key cursors of the cluster whose secret is ``secret`` are sealed with (not its signing key)."""
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def seal_cursor(key: bytes, endpoint: str, cursor: str) -> str:
    """``cursor`` as handed to the clients of ``endpoint``: ``<cursor>.<mac>``."""
    return f"{cursor}.{_mac(key, endpoint, cursor)}"


def open_cursor(key: bytes, endpoint: str, sealed: str, param: str) -> str:
    """The cursor ``seal_cursor`` sealed into ``sealed`` for ``endpoint``.

    Raises ``BadRequest`` naming ``param`` for anything else: a cursor
    changed, sealed for another endpoint or under another key, or not sealed.
    """
    cursor, dot, mac = sealed.rpartition(".")
    if not dot or not hmac.compare_digest(mac.encode(), _mac(key, endpoint, cursor).encode()):
        raise BadRequest(
            f"{param} is not a cursor docraft returned for {endpoint}: pass back a page's next unchanged",
            param=param,
        )
    return cursor


def _mac(key: bytes, endpoint: str, cursor: str) -> str:
    digest = hmac.new(key, f"{endpoint}\n{cursor}".encode(), hashlib.sha256).digest()[:_MAC_BYTES]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
