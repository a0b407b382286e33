"""The cluster secret: ``new_secret`` makes one, ``secret_problem`` judges one a cluster file holds.

The secret is the Raft password and the root of the internal signing key
(``node.signing``), so it must be random, not typed. A secret passes when it
is at least ``MIN_LENGTH`` characters and ``MIN_BITS`` bits long, counting
the bits of its characters' alphabet (decimal, hex, base32, base64 or printable
ASCII: the smallest that holds it), and it looks drawn at random from that
alphabet: as many distinct characters as half of what a random string of its
length has on average, and no more repeated or consecutive neighbours
("aa", "ab", "ba") than a random one has with odd of one in a billion.
Placeholders (the README's ``…48 hex characters…``, ``changeme``) are
refused by what they contain. A secret from a generator (``new_secret``,
``openssl rand -hex 24``, ``secrets.token_urlsafe(24)``) fails these checks
with odds below one in a billion.
"""

from __future__ import annotations

import itertools
import math
import secrets
import string

SECRET_BYTES = 24  # new secrets: 192 random bits, as 48 hex digits
MIN_LENGTH = 32  # 32 hex digits (128 bits) or 24 bytes in base64
MIN_BITS = 128
IMPROBABLE = 1e-9
HOW = "make one with `openssl rand -hex 24` (docraft up writes such secrets)"
PLACEHOLDER_MARKS = ("…", "...", "<", ">", " ")
PLACEHOLDER_WORDS = ("change", "example", "placeholder", "replace", "password", "secret")
# The alphabets a secret is judged against, smallest first: generators write one of these.
ALPHABETS = (
    string.digits,
    "0123456789abcdef",
    "0123456789ABCDEF",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567=",
    "abcdefghijklmnopqrstuvwxyz234567=",
    string.ascii_letters + string.digits + "+/=-_",
    "".join(chr(c) for c in range(33, 127)),
)


def new_secret() -> str:
    """A fresh cluster secret: ``SECRET_BYTES`` random bytes as hex."""
    return secrets.token_hex(SECRET_BYTES)


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is unfit to be a cluster secret (a phrase naming the problem, then ``HOW``), or ``None``."""
    problem = _problem(secret)
    return None if problem is None else f"{problem}; {HOW}"


def _problem(secret: str) -> str | None:
    lowered = secret.lower()
    found = [mark for mark in PLACEHOLDER_MARKS + PLACEHOLDER_WORDS if mark in lowered]
    if found:
        return f"looks like a placeholder or a typed phrase (it contains {found[0]!r})"
    if len(secret) < MIN_LENGTH:
        return f"is {len(secret)} characters long, it needs at least {MIN_LENGTH}"
    alphabet = next((a for a in ALPHABETS if set(secret) <= set(a)), None)
    if alphabet is None:
        return "holds characters other than printable ASCII"
    bits = len(secret) * math.log2(len(alphabet))
    if bits < MIN_BITS:
        return f"carries at most {bits:.0f} bits ({len(secret)} of {len(alphabet)} characters), it needs {MIN_BITS}"
    distinct, expected = len(set(secret)), _expected_distinct(len(secret), len(alphabet))
    if distinct < expected / 2:
        return f"uses only {distinct} different characters where a random one uses about {expected:.0f}"
    neighbours = sum(abs(ord(a) - ord(b)) <= 1 for a, b in itertools.pairwise(secret))
    if _binomial_tail(len(secret) - 1, _neighbour_chance(alphabet), neighbours) < IMPROBABLE:
        return f"has {neighbours} repeated or consecutive neighbours (such as 'aa' or 'ab'), too many to be random"
    return None


def _expected_distinct(length: int, size: int) -> float:
    """The mean number of distinct characters in ``length`` characters drawn uniformly from ``size``."""
    return size * (1 - (1 - 1 / size) ** length)


def _neighbour_chance(alphabet: str) -> float:
    """The chance that two characters drawn uniformly from ``alphabet`` are equal or consecutive."""
    near = sum(abs(ord(a) - ord(b)) <= 1 for a in alphabet for b in alphabet)
    return near / len(alphabet) ** 2


def _binomial_tail(trials: int, chance: float, at_least: int) -> float:
    """The chance of ``at_least`` successes or more in ``trials`` independent trials."""
    return sum(math.comb(trials, k) * chance**k * (1 - chance) ** (trials - k) for k in range(at_least, trials + 1))
