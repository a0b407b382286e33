"""Integrity digests of one state machine: a running hash of its log, and checkpoints.

``IntegrityLog.digest()`` combines a running hash of every applied log entry
and its result with a hash of the current contents; a checkpoint records the
digest at every ``checkpoint_interval``-th log index. Replicas fed the same log
have equal digests at equal indexes, so comparing them finds a replica whose
state changed outside the log (the integrity monitor in ``node.monitor`` does).

Pure: no I/O, clock or randomness. Not thread-safe; the state machine's owner
serialises calls.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any

CHECKPOINTS_KEPT = 64


class IntegrityLog:
    """The log hash, the index it covers and the newest checkpoints.

    ``content_hash`` returns the hash of the current contents (an integer
    below 2**128); it is called when a digest is needed. With ``enabled``
    false, entries are not hashed and the digest follows the contents only.
    """

    def __init__(self, content_hash: Callable[[], int], checkpoint_interval: int, enabled: bool) -> None:
        self.content_hash = content_hash
        self.checkpoint_interval = checkpoint_interval
        self.enabled = enabled
        self.log_hash = bytes(16)
        self.applied_index = 0
        self.next_checkpoint = checkpoint_interval
        self.checkpoints: deque[tuple[int, str]] = deque(maxlen=CHECKPOINTS_KEPT)

    def digest(self) -> str:
        """Hex digest of everything applied so far and of the current contents."""
        contents = self.content_hash().to_bytes(16, "big")
        return hashlib.blake2b(self.log_hash + contents, digest_size=16).hexdigest()

    def before(self, index: int | None) -> None:
        """Call before applying the entry at ``index``: checkpoint every boundary it passes.

        A checkpoint holds the digest as of its boundary, that is, before this
        entry. PySyncObj's own entries leave gaps in the indexes, so several
        boundaries may be passed at once; each gets the same digest.
        """
        if index is None or self.next_checkpoint >= index:
            return
        digest = self.digest()
        while self.next_checkpoint < index:
            self.checkpoints.append((self.next_checkpoint, digest))
            self.next_checkpoint += self.checkpoint_interval

    def after(self, index: int | None, entry: bytes, result: bytes) -> None:
        """Call after applying ``entry`` (its log bytes) with ``result`` (its encoded result)."""
        if self.enabled:
            self.log_hash = hashlib.blake2b(self.log_hash + entry + result, digest_size=16).digest()
        if index is not None:
            self.applied_index = index

    def report(self) -> dict[str, Any]:
        """``{"applied_index", "digest", "checkpoints"}`` as the integrity monitor reads them."""
        return {
            "applied_index": self.applied_index,
            "digest": self.digest(),
            "checkpoints": [list(c) for c in self.checkpoints],
        }

    def to_json(self) -> dict[str, Any]:
        """The part of a snapshot that ``restore`` reads back."""
        return {
            "log_hash": self.log_hash.hex(),
            "applied_index": self.applied_index,
            "next_checkpoint": self.next_checkpoint,
            "checkpoints": [list(c) for c in self.checkpoints],
        }

    def restore(self, data: dict[str, Any]) -> None:
        """Take the state ``to_json`` gave; raises ``KeyError``/``ValueError`` if it is malformed."""
        self.log_hash = bytes.fromhex(data["log_hash"])
        self.applied_index = data["applied_index"]
        self.next_checkpoint = data["next_checkpoint"]
        self.checkpoints.clear()
        self.checkpoints.extend((index, digest) for index, digest in data["checkpoints"])
