"""The cluster as a router sees it: who owns each slot, each group's replicas, and who leads each group.

No config group holds the slot map: every replica group's state machine is
the authority for the slots it holds (``consensus.slots``), and a router
assembles the map from what the groups report. A ``ClusterView`` starts from
the cluster file (every range at version 0) and then polls each known group's
``GET /_shard/slots`` every ``poll_interval`` seconds (``run``, a task the
server starts). Claims are merged per slot by version: the highest wins, so a
lagging replica's older answer never takes a slot back. A group claims the
ranges it holds (``owned`` or ``frozen``, at their version); a tombstone
(``moved`` to T at version e) is T's claim at e. A router that meets
``wrong_shard`` patches the map from the answer at once (``patch``), so a stale
map is corrected by the first refusal, and never serves wrong data: every
group checks ownership against its own applied log.

A group's replicas come from the file, then from the ``members`` its log
records (``set_members``, from the report of the replica that applied the
most), so a replica the file does not list becomes routable; a group the file
does not list is learned from tombstones and move records (with the owner's
replicas) or by re-reading the file. Leaders are tracked by ``LeaderTracker``.

Used on one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from consensus.slots import SLOT_COUNT, slot_of
from models.errors import DocraftError
from node.config import ClusterConfig, ConfigError, ReplicaConfig, ShardConfig, load_config
from node.leaders import LeaderTracker
from node.shard_client import ShardClient
from node.slot_map import SlotMap

log = logging.getLogger("docraft.view")

POLL_INTERVAL = 0.5
POLL_TIMEOUT = 0.4
# How often the view may re-read the cluster file for a group it does not know.
RELOAD_INTERVAL = 1.0
CLAIMING_STATES = ("owned", "frozen")


class ClusterView:
    """The slot map, every known group's replicas and their leaders; see the module docstring."""

    def __init__(self, config: ClusterConfig, client: ShardClient, poll_interval: float = POLL_INTERVAL) -> None:
        self.config = config
        self.client = client
        self.poll_interval = poll_interval
        self.map = SlotMap(config.shards)
        self.leaders = LeaderTracker(config, client)
        self._groups: dict[str, ShardConfig] = {s.id: s for s in config.shards}
        self._learners: dict[str, tuple[ReplicaConfig, ...]] = {}
        self._members_at: dict[str, int] = {}  # applied index of the report the members came from
        self._group_epochs: dict[str, int] = {}
        self.reports: dict[str, dict[str, Any]] = {}  # each group's latest /_shard/slots answer
        self._merged_ranges: dict[str, Any] = {}
        self._refreshing: asyncio.Future[None] | None = None
        self._reloaded_at = float("-inf")

    # -- what routers ask ----------------------------------------------------------

    @property
    def epoch(self) -> int:
        """The cluster map's epoch: the highest any group reported, or any claim the map holds."""
        return max([self.map.epoch, *self._group_epochs.values()])

    def shard_for_slot(self, slot: int) -> str:
        """The id of the group that owns ``slot`` as far as this view knows."""
        owner = self.map.owner(slot)
        assert owner is not None, "the file's map gives every slot an owner"
        return owner

    def shard_for_key(self, key: Any) -> str:
        """The id of the group that owns partition key ``key``'s slot."""
        return self.shard_for_slot(slot_of(key))

    def shard(self, shard_id: str) -> ShardConfig:
        """Group ``shard_id`` with its current voters as ``replicas``; ``ConfigError`` for an unknown id."""
        group = self._groups.get(shard_id)
        if group is None:
            raise ConfigError(f"no shard {shard_id!r} known from {self.config.path} or the cluster")
        return group

    def current(self, shard: ShardConfig) -> ShardConfig:
        """The view's copy of ``shard`` (with its current voters), or ``shard`` itself for a group it does not
        know (one a caller read from a newer cluster file, say)."""
        return self._groups.get(shard.id, shard)

    def shards(self) -> list[ShardConfig]:
        """Every known group: the file's in file order, then those learned from the cluster."""
        return list(self._groups.values())

    def serving(self) -> list[ShardConfig]:
        """The groups that own at least one slot in the view: the ones a query over every shard asks."""
        owners = self.map.ranges()
        return [group for group in self._groups.values() if group.id in owners]

    def ranges_of(self, shard_id: str) -> list[list[int]]:
        """``shard_id``'s slots in the view, as sorted inclusive ranges."""
        return self.map.ranges().get(shard_id, [])

    def learners(self, shard_id: str) -> tuple[ReplicaConfig, ...]:
        """Group ``shard_id``'s learners as its log records them (they vote for nothing and are not routed to)."""
        return self._learners.get(shard_id, ())

    def group_epoch(self, shard_id: str) -> int | None:
        """The epoch group ``shard_id`` last reported, ``None`` before it answered."""
        return self._group_epochs.get(shard_id)

    # -- learning ------------------------------------------------------------------

    def patch(self, details: dict[str, Any]) -> bool:
        """Take a ``wrong_shard`` answer's ``details`` (``slot, owner, epoch, replicas``) into the map at once.

        Returns whether the slot's owner in the view is now the one named (the
        router then retries there); ``False`` when the answer names no owner or
        the view holds a newer claim (the router refreshes the view instead).
        """
        slot, owner, epoch = details.get("slot"), details.get("owner") or details.get("shard"), details.get("epoch")
        if not isinstance(slot, int) or not 0 <= slot < SLOT_COUNT or not isinstance(owner, str):
            return False
        self._learn_group(owner, details.get("replicas") or [])
        if owner not in self._groups:
            return False
        if isinstance(epoch, int):
            self.map.claim(slot, slot, owner, epoch)
        return self.map.owner(slot) == owner

    def merge(self, shard_id: str, report: dict[str, Any]) -> None:
        """Merge group ``shard_id``'s ``/_shard/slots`` report (see ``StateMachine.slots_report``)."""
        self.reports[shard_id] = report
        epoch = report.get("epoch")
        if isinstance(epoch, int) and epoch > self._group_epochs.get(shard_id, -1):
            self._group_epochs[shard_id] = epoch
        for move in report.get("moves") or []:
            if isinstance(move, dict) and isinstance(move.get("peer"), str):
                self._learn_group(move["peer"], move.get("peer_replicas") or [])
        members = report.get("members")
        if isinstance(members, dict):
            self._take_members(shard_id, members, report.get("applied_index"))
        ranges = report.get("ranges") if report.get("initialized") else None
        if not isinstance(ranges, list) or self._merged_ranges.get(shard_id) == ranges:
            return  # nothing claimed, or exactly what was merged last time: merging is idempotent
        for entry in ranges:
            state, version = entry.get("state"), entry.get("version")
            owner = shard_id if state in CLAIMING_STATES else entry.get("owner") if state == "moved" else None
            if not isinstance(owner, str) or not isinstance(version, int):
                continue
            self._learn_group(owner, [])
            if owner in self._groups:
                self.map.claim(int(entry["first"]), int(entry["last"]), owner, version)
        self._merged_ranges[shard_id] = ranges

    def _take_members(self, shard_id: str, members: dict[str, Any], applied: Any) -> None:
        """Group ``shard_id``'s voters (routed to) and learners, if this report applied at least as much."""
        index = applied if isinstance(applied, int) else -1
        group = self._groups.get(shard_id)
        if group is None or index < self._members_at.get(shard_id, -1):
            return
        voters = self._replicas(shard_id, members.get("voters") or [])
        if not voters:
            return
        self._members_at[shard_id] = index
        self._learners[shard_id] = self._replicas(shard_id, members.get("learners") or [])
        if voters != group.replicas:
            self._groups[shard_id] = ShardConfig(group.id, group.slots, voters)

    def _learn_group(self, shard_id: str, replicas: Sequence[Any]) -> None:
        """Know group ``shard_id``: from ``replicas`` (``[{"id","raft","http"}]``), else from the file re-read."""
        if shard_id in self._groups:
            return
        known = self._replicas(shard_id, replicas)
        if known:
            self._groups[shard_id] = ShardConfig(shard_id, (), known)
            return
        now = time.monotonic()
        if now - self._reloaded_at < RELOAD_INTERVAL:
            return
        self._reloaded_at = now
        try:
            fresh = load_config(self.config.path)
            self._groups[shard_id] = fresh.shard(shard_id)
        except ConfigError as exc:
            log.warning("shard %s is named by the cluster but not known here: %s", shard_id, exc)

    def _replicas(self, shard_id: str, entries: Sequence[Any]) -> tuple[ReplicaConfig, ...]:
        """``entries`` (``{"id","raft","http"}``) as replicas of ``shard_id``: the file's own entry when it
        lists the same one, else one known only by its addresses (no data dir: it is never started here)."""
        listed = {r.id: r for s in self.config.shards for r in s.replicas}
        scheme = "https" if self.config.tls is not None else "http"
        replicas = []
        for entry in entries:
            if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("id", "raft", "http")):
                continue
            same = listed.get(entry["id"])
            if same is not None and (same.raft, same.http) == (entry["raft"], entry["http"]):
                replicas.append(same)
            else:
                raft, http = entry["raft"], entry["http"]
                replicas.append(ReplicaConfig(entry["id"], shard_id, raft, http, Path(), raft, http, scheme))
        return tuple(replicas)

    # -- polling -------------------------------------------------------------------

    async def run(self) -> None:
        """Poll every known group every ``poll_interval`` seconds, until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.poll_interval)

    async def refresh(self) -> None:
        """Ask every known group for its slots now and merge the answers; concurrent callers share one round."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._poll_all())
        await asyncio.shield(self._refreshing)

    async def _poll_all(self) -> None:
        await asyncio.gather(*(self._poll(group) for group in self.shards()))

    async def _poll(self, group: ShardConfig) -> None:
        """One report from ``group``: its leader's if known, else the first replica that answers."""
        leader = self.leaders.leaders.get(group.id)
        order = [leader] if leader is not None else []
        order += [r for r in group.replicas if r is not leader]
        for replica in order:
            try:
                report = await self.client.slots(replica, POLL_TIMEOUT)
            except DocraftError:
                continue
            self.merge(group.id, report)
            return
