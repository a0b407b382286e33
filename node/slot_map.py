"""A slot map: each of the 16384 slots' owner and the version of the claim that gave it; pure, no I/O.

Claims merge per slot by version (the highest wins, an equal or older claim
changes nothing), so merging the same claims in any order, any number of
times, gives the same map. ``node.cluster_view`` builds the live map from
what groups report; ``node.shard_map`` the cluster file's.
"""

from __future__ import annotations

from collections.abc import Iterable

from consensus.slots import SLOT_COUNT
from node.config import ShardConfig


class SlotMap:
    """Each slot's owner (a shard id, ``None`` before anyone claimed it) and the version of that claim."""

    def __init__(self, shards: Iterable[ShardConfig]) -> None:
        """The file's map: every range of every shard at version 0."""
        self._owners: list[str | None] = [None] * SLOT_COUNT
        self._versions: list[int] = [-1] * SLOT_COUNT
        self._ranges: dict[str, list[list[int]]] | None = None
        for shard in shards:
            for first, last in shard.slots:
                self.claim(first, last, shard.id, 0)

    def owner(self, slot: int) -> str | None:
        return self._owners[slot]

    def version(self, slot: int) -> int:
        """The version of the claim the map holds for ``slot`` (-1 when none)."""
        return self._versions[slot]

    def claim(self, first: int, last: int, owner: str, version: int) -> bool:
        """Give every slot of ``first..last`` whose claim is older than ``version`` to ``owner``; whether any
        slot changed owner or version. An equal or older claim changes nothing (the merge rule)."""
        changed = False
        for slot in range(max(first, 0), min(last, SLOT_COUNT - 1) + 1):
            if version > self._versions[slot]:
                self._owners[slot], self._versions[slot] = owner, version
                changed = True
        if changed:
            self._ranges = None
        return changed

    def ranges(self) -> dict[str, list[list[int]]]:
        """Each owner's slots as sorted inclusive ``[first, last]`` ranges (owners with no slot are absent)."""
        if self._ranges is None:
            ranges: dict[str, list[list[int]]] = {}
            start = 0
            for slot in range(1, SLOT_COUNT + 1):
                if slot == SLOT_COUNT or self._owners[slot] != self._owners[start]:
                    owner = self._owners[start]
                    if owner is not None:
                        ranges.setdefault(owner, []).append([start, slot - 1])
                    start = slot
            self._ranges = ranges
        return self._ranges

    @property
    def epoch(self) -> int:
        """The highest claim version in the map."""
        return max(self._versions)
