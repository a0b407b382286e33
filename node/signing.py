"""Signed internal requests: how cluster members prove to each other that they hold the cluster secret.

Every request a dispatcher, replica or docraft's own admin CLI sends to an
internal or admin route carries three headers made by ``sign``:

    X-Docraft-Date       the signer's clock, Unix seconds ("1712345678.123")
    X-Docraft-Nonce      32 random hex digits, never used twice
    X-Docraft-Signature  KEY_ID:MAC

``MAC`` is HMAC-SHA256, under a key derived from the cluster secret
(``internal_key``), of the method, the path with its query string, the
SHA-256 of the body, the date and the nonce. ``KEY_ID`` names the key
without revealing it, so a request signed under another cluster's secret is
told apart from one altered on the way.

A ``Verifier`` refuses, with ``Unauthorized`` (401), a request that is
unsigned (``missing``), signed with another key or malformed (``forged``),
changed after signing (``altered``), dated more than ``window`` seconds from
the verifier's clock either way (``expired``), or carrying a nonce it has
seen (``replayed``), and counts each refusal by reason in ``refused``.
Members' clocks must agree to within the window.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import hmac
import math
import re
import secrets
from collections import Counter
from collections.abc import Mapping
from typing import NoReturn

from models.errors import Unauthorized

DATE_HEADER = "X-Docraft-Date"
NONCE_HEADER = "X-Docraft-Nonce"
SIGNATURE_HEADER = "X-Docraft-Signature"

REASONS = ("missing", "forged", "altered", "expired", "replayed")
# How far a request's date may be from the verifier's clock, either way (seconds).
DEFAULT_WINDOW = 30.0
# Nonces a verifier remembers: the whole window up to ~3,300 requests a second (about 25 MiB at most).
NONCES_KEPT = 100_000

_KEY_LABEL = b"docraft internal request signing v1"
_KEY_ID_LABEL = b"docraft key id v1"
_DATE = re.compile(r"[0-9]{1,12}(\.[0-9]{1,6})?")
_NONCE = re.compile(r"[0-9a-f]{32}")
_SIGNATURE = re.compile(r"([0-9a-f]{16}):([0-9a-f]{64})")


def internal_key(secret: str) -> bytes:
    """The signing key of the cluster whose secret is ``secret``: HMAC-SHA256 of a fixed label.

    A key of its own, so a signature reveals nothing about the Raft password.
    """
    return hmac.new(secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


@functools.lru_cache(maxsize=16)
def key_id(key: bytes) -> str:
    """16 hex digits that name ``key`` in signatures; they do not reveal it."""
    return hmac.new(key, _KEY_ID_LABEL, hashlib.sha256).hexdigest()[:16]


def sign(key: bytes, method: str, path_with_query: str, body: bytes, now: float) -> dict[str, str]:
    """The headers that sign one request, dated ``now`` (Unix seconds), with a fresh random nonce.

    ``path_with_query`` is the request target exactly as sent (``/_shard/write``,
    ``/_admin/digest?x=1``); ``body`` is the body's bytes (``b""`` for none).
    """
    date = f"{now:.3f}"
    nonce = secrets.token_hex(16)
    mac = _mac(key, method, path_with_query, body, date, nonce)
    return {DATE_HEADER: date, NONCE_HEADER: nonce, SIGNATURE_HEADER: f"{key_id(key)}:{mac}"}


def _mac(key: bytes, method: str, path_with_query: str, body: bytes, date: str, nonce: str) -> str:
    # No field can hold a newline (HTTP request targets and methods cannot), so the text is unambiguous.
    signed = "\n".join((method.upper(), path_with_query, hashlib.sha256(body).hexdigest(), date, nonce))
    return hmac.new(key, signed.encode(), hashlib.sha256).hexdigest()


class Verifier:
    """Checks signed requests against one key; one per process, shared by its handlers.

    Not thread-safe: call ``verify`` from one thread (the event loop). The
    nonces of accepted requests are remembered until their date is
    ``window`` seconds old, at most ``nonces_kept`` of them (see ``NonceMemory``).
    """

    def __init__(self, key: bytes, window: float = DEFAULT_WINDOW, nonces_kept: int = NONCES_KEPT) -> None:
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"the replay window must be a positive number of seconds, got {window!r}")
        self.key = key
        self.key_id = key_id(key)
        self.window = window
        self.nonces = NonceMemory(nonces_kept)
        # Refusals by reason, every reason present (0 until one happens): what metrics report.
        self.refused: Counter[str] = Counter(dict.fromkeys(REASONS, 0))

    def verify(self, method: str, path_with_query: str, body: bytes, headers: Mapping[str, str], now: float) -> None:
        """Accept a request signed with this verifier's key, once; raise ``Unauthorized`` otherwise.

        ``headers`` is the request's (tornado's ``HTTPHeaders`` or any mapping
        with the names as ``sign`` writes them); ``now`` is this process's clock.
        The refusal's ``details['reason']`` is one of ``REASONS``, counted in
        ``refused``. The MAC is checked before the nonce is remembered, so
        only a key holder can fill the nonce memory.
        """
        date, nonce, signature = (headers.get(h) for h in (DATE_HEADER, NONCE_HEADER, SIGNATURE_HEADER))
        if date is None or nonce is None or signature is None:
            self._refuse("missing", f"an internal request must be signed ({DATE_HEADER}, {NONCE_HEADER}, ...)")
        parts = _SIGNATURE.fullmatch(signature)
        if parts is None or not _DATE.fullmatch(date) or not _NONCE.fullmatch(nonce):
            self._refuse("forged", "the request's signature headers are malformed")
        if parts.group(1) != self.key_id:
            self._refuse("forged", "the request is signed with a key other than this cluster's")
        expected = _mac(self.key, method, path_with_query, body, date, nonce)
        if not hmac.compare_digest(parts.group(2), expected):
            self._refuse("altered", "the request does not match its signature")
        signed_at = float(date)
        age = now - signed_at
        if abs(age) > self.window:
            when = f"{age:.1f}s ago" if age >= 0 else f"{-age:.1f}s in the future"
            self._refuse("expired", f"the request was signed {when}, beyond the {self.window:.0f}s window")
        outcome = self.nonces.remember(nonce, signed_at + self.window, now)
        if outcome == "seen":
            self._refuse("replayed", "the request was accepted before")
        if outcome == "forgotten":
            self._refuse("expired", "the request is older than this member can tell apart from a replay")

    def _refuse(self, reason: str, message: str) -> NoReturn:
        self.refused[reason] += 1
        raise Unauthorized(message, reason=reason)


class NonceMemory:
    """Nonces of accepted requests until they expire, at most ``capacity`` of them.

    When full, the nonce expiring first is forgotten and ``horizon`` rises to
    its expiry: a request expiring at or before the horizon is refused, since
    its nonce might have been forgotten. So memory stays bounded and a replay
    is never accepted; beyond ``capacity`` requests per window, only the
    window this member can vouch for shrinks (to ``capacity`` / rate seconds).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a nonce memory holds at least one nonce, not {capacity}")
        self.capacity = capacity
        self.horizon = -math.inf
        self._expiry: dict[str, float] = {}
        self._queue: list[tuple[float, str]] = []  # a heap: the nonce expiring first on top

    def __len__(self) -> int:
        return len(self._expiry)

    def remember(self, nonce: str, expires: float, now: float) -> str:
        """Record ``nonce`` until ``expires``: ``"new"``, or ``"seen"`` / ``"forgotten"`` (recorded nothing)."""
        while self._queue and self._queue[0][0] < now:
            del self._expiry[heapq.heappop(self._queue)[1]]
        if nonce in self._expiry:
            return "seen"
        if expires <= self.horizon:
            return "forgotten"
        if len(self._expiry) >= self.capacity:
            dropped, oldest = heapq.heappop(self._queue)
            del self._expiry[oldest]
            self.horizon = max(self.horizon, dropped)
        self._expiry[nonce] = expires
        heapq.heappush(self._queue, (expires, nonce))
        return "new"
