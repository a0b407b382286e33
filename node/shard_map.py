"""Hash slots: which shard owns a partition key.

A key's slot is the CRC-32 of its canonical JSON text modulo 16384 (so the
int ``5`` and the string ``"5"`` are different keys); each shard owns one
contiguous slot range from the cluster file.
"""

from __future__ import annotations

import bisect
import zlib
from typing import Any

import ujson

from node.config import SLOT_COUNT, ClusterConfig, ShardConfig


def slot_of(key: Any) -> int:
    """The hash slot of a partition key value."""
    return zlib.crc32(ujson.dumps(key, sort_keys=True).encode()) % SLOT_COUNT


class ShardMap:
    def __init__(self, config: ClusterConfig) -> None:
        self.shards = sorted(config.shards, key=lambda s: s.first_slot)
        self._starts = [s.first_slot for s in self.shards]

    def shard_for_slot(self, slot: int) -> ShardConfig:
        return self.shards[bisect.bisect_right(self._starts, slot) - 1]

    def shard_for_key(self, key: Any) -> ShardConfig:
        """The shard that stores documents whose partition key is ``key``."""
        return self.shard_for_slot(slot_of(key))
