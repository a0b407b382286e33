"""Which replica leads each shard, as a router sees it.

A router learns leaders from replicas' status (``/_shard/status``: role and
term) and from ``not_leader`` hints. ``LeaderTracker.moved`` answers the
question a router asks while an attempt on a leader is slow: has another
replica been elected since? It asks the other replicas at most once per
``probe_interval`` per shard, however many requests are waiting, and says yes
when one of them reports leading in a newer term than the router knew, so a
router follows a new leader as soon as Raft has one instead of
waiting out an attempt timeout on a paused or cut-off one.

Which replicas a group has is the caller's to say: every method takes the
group as a ``ShardConfig`` (``ClusterView.shard``: its current voters).

Used on one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from models.errors import DocraftError
from node.config import ClusterConfig, ReplicaConfig, ShardConfig
from node.shard_client import ShardClient

STATUS_TIMEOUT = 0.25


class LeaderTracker:
    def __init__(self, config: ClusterConfig, client: ShardClient, probe_interval: float = 0.1) -> None:
        self.client = client
        self.probe_interval = probe_interval
        self.leaders: dict[str, ReplicaConfig | None] = {s.id: None for s in config.shards}
        self.terms: dict[str, int] = {s.id: -1 for s in config.shards}
        self._probes: dict[tuple[str, str], tuple[float, asyncio.Future[list[dict[str, Any]]]]] = {}

    def forget(self, shard: ShardConfig) -> None:
        self.leaders[shard.id] = None

    def follow_hint(self, shard: ShardConfig, leader_raft: Any) -> ReplicaConfig | None:
        """Take a ``not_leader`` answer's hint (a Raft address) as the leader, if it names one of ``shard``'s."""
        self.leaders[shard.id] = _by_raft(shard, leader_raft)
        return self.leaders[shard.id]

    async def discover(self, shard: ShardConfig, timeout: float) -> ReplicaConfig | None:
        """Ask every replica of ``shard``; the leader with the highest term wins, else a hint."""
        answers = await self._statuses(shard.replicas, min(timeout, 1.0))
        leaders = [a for a in answers if a.get("role") == "leader"]
        found: ReplicaConfig | None
        if leaders:
            best = max(leaders, key=lambda a: a["term"])
            found = next(r for r in shard.replicas if r.id == best["id"])
            self.terms[shard.id] = best["term"]
        else:
            hints = [_by_raft(shard, a.get("leader_raft")) for a in answers]
            found = next((h for h in hints if h is not None), None)
        self.leaders[shard.id] = found
        return found

    async def moved(self, shard: ShardConfig, current: ReplicaConfig) -> ReplicaConfig | None:
        """Another replica of ``shard`` that leads in a newer term than the one known, or ``None``.

        Only the other replicas are asked: the one being tried is the slow one,
        and waiting for its answer would pace every probe by its timeout.
        """
        known = self.leaders.get(shard.id)
        if known is not None and known.id != current.id:
            return known  # another attempt already found the new leader
        answers = await self._shared_probe(shard, current)
        newer = [a for a in answers if a.get("role") == "leader" and a["term"] > self.terms.get(shard.id, -1)]
        if not newer:
            return None
        best = max(newer, key=lambda a: a["term"])
        self.terms[shard.id] = best["term"]
        self.leaders[shard.id] = next(r for r in shard.replicas if r.id == best["id"])
        return self.leaders[shard.id]

    async def _shared_probe(self, shard: ShardConfig, current: ReplicaConfig) -> list[dict[str, Any]]:
        """One status round of ``shard``'s replicas but ``current`` per ``probe_interval``, shared by callers."""
        now = time.monotonic()
        key = (shard.id, current.id)
        cached = self._probes.get(key)
        if cached is None or now - cached[0] >= self.probe_interval:
            others = [r for r in shard.replicas if r.id != current.id]
            cached = self._probes[key] = (now, asyncio.ensure_future(self._statuses(others, STATUS_TIMEOUT)))
        return await asyncio.shield(cached[1])

    async def _statuses(self, replicas: Sequence[ReplicaConfig], timeout: float) -> list[dict[str, Any]]:
        async def ask(replica: ReplicaConfig) -> dict[str, Any] | None:
            try:
                return await self.client.status(replica, timeout)
            except DocraftError:
                return None

        return [a for a in await asyncio.gather(*(ask(r) for r in replicas)) if a]


def _by_raft(shard: ShardConfig, leader_raft: Any) -> ReplicaConfig | None:
    """The replica of ``shard`` at Raft address ``leader_raft``, if it has one."""
    return next((r for r in shard.replicas if r.raft == str(leader_raft)), None)
