"""Calls to one replica group's leader, following leadership within a deadline.

A write keeps its request id across attempts, so the state machine applies it
once even when an earlier attempt did land; when no attempt could have been
applied the caller gets ``NoLeader``, otherwise ``OutcomeUnknown`` naming the
idempotency key to retry with. Which replicas a group has and which leads it
come from the ``ClusterView``; a slow attempt starts a watcher that abandons
it as soon as another replica leads in a newer term. ``stale`` reads go to any
replica, this process's own first. Used on one event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from consensus.state_machine import Result
from models.errors import (
    DocraftError,
    NoLeader,
    NotLeader,
    OutcomeUnknown,
    ReplicaFaulted,
    ReplicaFlagged,
    ShardUnavailable,
    error_from_json,
)
from node.cluster_view import ClusterView
from node.config import ReplicaConfig, ShardConfig
from node.consistency import Consistency
from node.request_ids import key_of
from node.shard_client import ShardClient

T = TypeVar("T")

RETRY_PAUSE = 0.05


class GroupCalls:
    """Writes and reads on one group at a time, following its leader until a deadline.

    Deadlines passed in are ``time.monotonic()`` values; a call without one
    gets ``deadline`` seconds. ``flagged`` holds the replicas the integrity
    monitor flagged (divergent or wrong code): nothing is read from them.
    """

    def __init__(
        self,
        view: ClusterView,
        client: ShardClient,
        deadline: float = 10.0,
        attempt_timeout: float = 2.0,
        patience: float = 0.15,
    ) -> None:
        self.view = view
        self.client = client
        self.leaders = view.leaders
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        # How long an attempt may take before the group is asked whether leadership moved.
        self.patience = patience
        self.flagged: set[str] = set()
        self._stale_turns: defaultdict[str, itertools.count[int]] = defaultdict(itertools.count)

    async def write(self, shard: ShardConfig, command: dict[str, Any], deadline: float | None = None) -> Result:
        """Commit ``command`` on ``shard``'s leader, retrying with the same request id.

        Raises ``NoLeader`` or ``ReplicaFlagged`` (503) only when no attempt
        could have been applied, and ``OutcomeUnknown`` (504) naming the
        request id to retry with when one may have been. A slot refusal
        (``wrong_shard``...) is returned or raised as the group gave it.
        """
        return await self.write_with(shard, command, self._deadline(deadline), Attempts())

    async def write_with(self, shard: ShardConfig, command: dict[str, Any], deadline: float, tried: Attempts) -> Result:
        """``write`` by ``deadline``, with ``tried`` shared by every group the same command was sent to
        (a router following a slot to its new owner), so an earlier attempt that may have been applied
        elsewhere still makes the outcome unknown."""

        async def attempt(replica: ReplicaConfig, timeout: float) -> Result:
            try:
                return await self.client.write(replica, command, timeout)
            except (OutcomeUnknown, ShardUnavailable, asyncio.CancelledError):
                tried.maybe_applied = True  # it reached a leader, or may have; abandoned attempts too
                raise

        try:
            # Accepting new code must reach leaders flagged for running it.
            return await self._with_leader(shard, attempt, deadline, command.get("type") == "set_fingerprint")
        except (NoLeader, ReplicaFlagged) as exc:
            if tried.maybe_applied:
                raise outcome_unknown(shard, command) from exc
            raise

    async def read(
        self, shard: ShardConfig, request: dict[str, Any], consistency: Consistency, deadline: float | None = None
    ) -> Result:
        """Run ``request`` on ``shard``: a ``stale`` read on any replica, others on the leader."""
        if consistency is Consistency.STALE:
            return await self._stale_read(shard, request)

        async def attempt(replica: ReplicaConfig, timeout: float) -> Result:
            return await self.client.read(replica, request, timeout)

        return await self._with_leader(shard, attempt, self._deadline(deadline))

    def _deadline(self, deadline: float | None) -> float:
        return time.monotonic() + self.deadline if deadline is None else deadline

    async def _stale_read(self, shard: ShardConfig, request: dict[str, Any]) -> Result:
        """Any replica will do: this process's own first, then the others in turn."""
        local = [r for r in shard.replicas if self.client.is_local(r)]
        turn = next(self._stale_turns[shard.id]) % len(shard.replicas)
        others = [r for r in shard.replicas[turn:] + shard.replicas[:turn] if r not in local]

        last_error: DocraftError = NoLeader(f"shard {shard.id}: no replica answered", shard=shard.id)
        for replica in local + others:
            if replica.id in self.flagged:
                continue
            try:
                return await self.client.read(replica, request, self.attempt_timeout)
            except (ShardUnavailable, ReplicaFaulted) as exc:
                last_error = exc
        raise last_error

    async def _with_leader(
        self,
        shard: ShardConfig,
        attempt: Callable[[ReplicaConfig, float], Awaitable[T]],
        deadline: float,
        to_flagged: bool = False,
    ) -> T:
        """Run ``attempt`` on ``shard``'s leader, following leadership until ``deadline``.

        While an attempt is slow, the group is asked whether another replica
        leads in a newer term; if one does, the attempt is abandoned and the
        new leader tried (``_attempt_or_moved``). The group's replicas are the
        view's at each try, so a replica added since the call began can lead
        it. Raises ``NoLeader`` at the deadline, and ``ReplicaFlagged`` when
        the leader is flagged, unless ``to_flagged``.
        """
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.leaders.forget(shard)
                raise NoLeader(
                    f"shard {shard.id} has no reachable leader; retry shortly", shard=shard.id, retry_after=1
                )
            shard = self.view.current(shard)
            leader = self.leaders.leaders.get(shard.id) or await self.leaders.discover(shard, remaining)
            if leader is None:
                await asyncio.sleep(min(RETRY_PAUSE, remaining))
                continue
            if leader.id in self.flagged and not to_flagged:
                raise ReplicaFlagged(
                    f"the leader of shard {shard.id}, {leader.id}, is flagged by the integrity monitor "
                    "(see /_admin/alerts); repair it with docraft repair",
                    shard=shard.id,
                    replica=leader.id,
                )
            try:
                return await self._attempt_or_moved(shard, leader, attempt, min(remaining, self.attempt_timeout))
            except _LeaderMoved:
                continue
            except NotLeader as exc:
                if self.leaders.follow_hint(shard, exc.details.get("leader_raft")) is None:
                    await asyncio.sleep(min(RETRY_PAUSE, remaining))
            except (NoLeader, OutcomeUnknown, ShardUnavailable, ReplicaFaulted):
                self.leaders.forget(shard)
                await asyncio.sleep(min(RETRY_PAUSE, remaining))

    async def _attempt_or_moved(
        self,
        shard: ShardConfig,
        leader: ReplicaConfig,
        attempt: Callable[[ReplicaConfig, float], Awaitable[T]],
        timeout: float,
    ) -> T:
        """``attempt`` on ``leader``; raises ``_LeaderMoved`` (the attempt cancelled) if another replica leads now.

        Costs one timer when the attempt answers within ``patience``, as nearly
        all do; only a slow attempt starts a watcher, which cancels this task
        when the group has a newer leader.
        """
        me = asyncio.current_task()
        assert me is not None, "routers run inside asyncio tasks"
        moved = False
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            nonlocal moved
            while await self.leaders.moved(shard, leader) is None:
                await asyncio.sleep(self.leaders.probe_interval)
            moved = True
            me.cancel()

        def start_watching() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(watch())

        timer = asyncio.get_running_loop().call_later(self.patience, start_watching)
        try:
            return await attempt(leader, timeout)
        except asyncio.CancelledError:
            if not moved:
                raise
            me.uncancel()
            raise _LeaderMoved() from None
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()


class _LeaderMoved(Exception):
    """Another replica leads now; the attempt on the old leader was abandoned."""


class Attempts:
    """What the attempts at one command have risked: whether any may have been applied."""

    maybe_applied = False


def outcome_unknown(shard: ShardConfig, command: dict[str, Any]) -> OutcomeUnknown:
    key = key_of(command["request_id"])
    return OutcomeUnknown(
        f"shard {shard.id}: the write may or may not have been applied; retrying it with the header "
        f"Idempotency-Key: {key} applies it at most once",
        shard=shard.id,
        request_id=command["request_id"],
        idempotency_key=key,
    )


def unwrap(result: Result) -> Any:
    """A result's ``ok`` value; raises the error it holds instead, if any."""
    if "error" in result:
        raise error_from_json(result)
    return result.get("ok")
