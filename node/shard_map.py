"""Hash slots: which shard owns a partition key.

A key's slot is ``consensus.slots.slot_of`` (re-exported here for old
importers). ``ShardMap`` is the cluster file's map only: the slots each shard
started with. Routers follow the live map, which moves, through
``node.cluster_view.ClusterView``.
"""

from __future__ import annotations

from typing import Any

from consensus.slots import slot_of
from node.config import ClusterConfig, ShardConfig
from node.slot_map import SlotMap

__all__ = ["ShardMap", "slot_of"]


class ShardMap:
    """Which shard the cluster file gives each slot (``slots`` of its ``[[shards]]``)."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self._map = SlotMap(config.shards)

    def shard_for_slot(self, slot: int) -> ShardConfig:
        owner = self._map.owner(slot)
        assert owner is not None, "a valid cluster file gives every slot a shard"
        return self.config.shard(owner)

    def shard_for_key(self, key: Any) -> ShardConfig:
        """The shard that stores documents whose partition key is ``key``."""
        return self.shard_for_slot(slot_of(key))
