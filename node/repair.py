"""Repairing a replica: when it is safe, and how its state is replaced without breaking Raft.

A repair discards a replica's log and snapshot and lets its leader send them
again. Raft's safety rests on two things a repair must not take away:

- **Term and vote** (``raft.journal.meta``) are kept, so the repaired replica
  cannot vote twice in a term it already voted in.
- **What it acknowledged** (``raft.journal.acked``) is kept, so on restart it
  finds its log ending below that index, reports ``resyncing`` and neither
  votes nor stands for election until its leader has sent it that far again.
  An empty log would otherwise grant its vote to any candidate, and could help
  elect one that lacks entries this replica helped commit.

A repair is refused (``RepairRefused``) on a leader, when another replica of
the group reports a fault of its own (one repair at a time: a repaired replica
reports ``resyncing`` until it has caught up), and unless the other
replicas that have applied everything the leader had committed when the
repair was asked for form a majority of the whole group: with the repaired
replica out of elections, they must be able to elect and commit on their own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from consensus.raft_member import REPAIR_MARKER
from models.errors import DocraftError, RepairRefused
from node.config import ClusterConfig
from node.shard_client import ShardClient
from node.shard_service import ShardService

log = logging.getLogger("docraft.repair")

# Files a repair removes; raft.journal.meta (term, vote) and raft.journal.acked stay.
DISCARDED = ("raft.journal", "raft.journal.compacting", "snapshot.json", "snapshot.json.tmp")
CATCH_UP_WAIT = 3.0


@dataclass(frozen=True)
class PeerReport:
    """What one other replica of the group said, or ``None`` fields when it did not answer."""

    replica: str
    role: str | None
    applied_index: int | None
    commit_index: int | None
    fault: dict[str, Any] | None


def refusal(target: str, group_size: int, target_role: str, peers: list[PeerReport]) -> str | None:
    """Why repairing ``target`` now is unsafe, or ``None`` when it is safe.

    ``peers`` are the other replicas of the group. Pure: the caller gathers the reports.
    """
    if target_role == "leader":
        return f"{target} leads its shard; repair a follower (stop it so another replica leads, then repair)"
    faulted = [p.replica for p in peers if p.fault is not None]
    if faulted:
        return f"{', '.join(faulted)} of the same shard reports a fault (one repair at a time; wait for it)"
    leaders = [p for p in peers if p.role == "leader" and p.commit_index is not None]
    if not leaders:
        return "the shard has no leader to resynchronise from"
    committed = max(p.commit_index for p in leaders if p.commit_index is not None)
    caught_up = [p.replica for p in peers if p.applied_index is not None and p.applied_index >= committed]
    majority = group_size // 2 + 1
    if len(caught_up) < majority:
        return (
            f"only {len(caught_up)} other replicas ({', '.join(caught_up) or 'none'}) have applied index "
            f"{committed}; {majority} must have, so the group can go on without {target}"
        )
    return None


async def check_repair(config: ClusterConfig, service: ShardService, client: ShardClient) -> None:
    """Raise ``RepairRefused`` unless repairing this replica is safe now (see ``refusal``).

    Waits up to ``CATCH_UP_WAIT`` seconds for the other replicas to apply what
    the leader had committed, since under writes followers trail by a little.
    """
    me = service.config
    group = config.shard(me.shard).replicas
    others = [r for r in group if r.id != me.id]

    async def report(replica_id: str) -> PeerReport:
        try:
            status = await client.status(config.replica(replica_id), timeout=1.0)
        except DocraftError:
            return PeerReport(replica_id, None, None, None, None)
        return PeerReport(
            replica_id, status["role"], status["applied_index"], status["commit_index"], status.get("fault")
        )

    deadline = time.monotonic() + CATCH_UP_WAIT
    while True:
        peers = list(await asyncio.gather(*(report(r.id) for r in others)))
        why = refusal(me.id, len(group), service.replica.status()["role"], peers)
        if why is None:
            return
        if time.monotonic() >= deadline:
            raise RepairRefused(f"repair of {me.id} refused: {why}", replica=me.id, shard=me.shard)
        await asyncio.sleep(0.1)


def restart_empty(service: ShardService) -> None:
    """Stop Raft, discard this replica's log and snapshot (keeping term, vote and acked index), re-exec.

    The process keeps its pid (``exec``), so supervisors see no exit.
    """
    data_dir = service.config.data_dir
    log.warning("repair: discarding the log and snapshot in %s and restarting", data_dir)
    service.replica.destroy_synchronous()
    (data_dir / REPAIR_MARKER).touch()
    for name in DISCARDED:
        (data_dir / name).unlink(missing_ok=True)
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "node.cli", *sys.argv[1:]])
