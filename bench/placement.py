"""Where the fault benchmark's keys live: keys spread over every shard, and the end-of-run placement check.

``spread_keys`` picks workload keys so that, under a slot map, they go round
the shards in turn (with one shard: ``0 .. count-1``). ``check_placement``
asks each group's leader for its slot table (``/_shard/slots``) after the
run and checks that each key's slot is held (owned or frozen) by exactly one
group, which owns it, and that every other group's leader refuses a
key-addressed ``stale`` read of it (a slot refusal: ``wrong_shard``...).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from consensus.slots import OWNED, READABLE, REFUSAL_CODES, slot_of
from models.errors import DocraftError

if TYPE_CHECKING:  # bench.nemesis places keys with ``owner_of``
    from bench.nemesis import Harness

Ranges = Sequence[tuple[int, int]]
Probe = tuple[str, Any]  # (shard, key): a stale read of the key its leader must refuse
LEADER_PATIENCE = 10.0  # seconds to wait for each group to have a leader before the check


def owner_of(owned: Mapping[str, Ranges], key: Any) -> str | None:
    """The shard whose ``owned`` ranges hold ``key``'s slot, or ``None`` if none does."""
    slot = slot_of(key)
    return next((shard for shard, ranges in owned.items() if any(f <= slot <= last for f, last in ranges)), None)


def spread_keys(owned: Mapping[str, Ranges], count: int) -> list[int]:
    """The ``count`` smallest integer keys that, taken in turn from each shard holding slots, split evenly.

    Shard ``i`` (in ``owned``'s order, shards without slots skipped) gets
    keys ``i``, ``i + n``, ... of the ``n`` shards' turns, each the smallest
    integer on that shard not yet taken. Sorted. Raises ``ValueError`` if no
    shard holds a slot.
    """
    shards = [shard for shard, ranges in owned.items() if ranges]
    if not shards:
        raise ValueError("no shard holds a slot")
    waiting: dict[str, list[int]] = {shard: [] for shard in shards}
    candidates = itertools.count()
    keys: list[int] = []
    for turn in range(count):
        shard = shards[turn % len(shards)]
        while not waiting[shard]:
            candidate = next(candidates)
            if (owner := owner_of(owned, candidate)) in waiting:
                waiting[owner].append(candidate)
        keys.append(waiting[shard].pop(0))
    return sorted(keys)


def by_shard(placement: Mapping[Any, str | None]) -> dict[str, list[Any]]:
    """``placement`` (key -> shard) turned around: each shard's keys, shards and keys sorted."""
    shards: dict[str, list[Any]] = {}
    for key, shard in placement.items():
        shards.setdefault(shard or "none", []).append(key)
    return {shard: sorted(keys) for shard, keys in sorted(shards.items())}


def state_of(ranges: Iterable[dict[str, Any]], slot: int) -> str | None:
    """The state (``owned``, ``frozen``...) of ``slot`` in a ``slots_report``'s ``ranges``; ``None`` if absent."""
    return next((r["state"] for r in ranges if r["first"] <= slot <= r["last"]), None)


@dataclass
class PlacementVerdict:
    """Each key's slot, the groups holding it and their states, and what went wrong."""

    keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # str(key): {"slot", "holders": {shard: state}}
    refusals_checked: int = 0  # stale reads sent to groups not owning the key, all refused if no problem
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"keys": self.keys, "refusals_checked": self.refusals_checked, "problems": self.problems}


def judge(ranges: Mapping[str, list[dict[str, Any]]], keys: Sequence[Any]) -> tuple[PlacementVerdict, list[Probe]]:
    """The verdict on ``keys`` from each group's ``slots_report`` ``ranges``, and the stale reads still to send.

    A key passes if exactly one group holds its slot in a readable state and
    that state is ``owned`` (a ``frozen`` one left at the end is an unfinished
    move). Each group that does not hold it gets a ``(shard, key)`` probe.
    """
    verdict = PlacementVerdict()
    probes: list[Probe] = []
    for key in keys:
        slot = slot_of(key)
        holders = {shard: state_of(held, slot) for shard, held in ranges.items()}
        serving = {shard: state for shard, state in holders.items() if state in READABLE}
        verdict.keys[str(key)] = {"slot": slot, "holders": {s: state for s, state in holders.items() if state}}
        if list(serving.values()) != [OWNED]:
            verdict.problems.append(f"key {key!r} (slot {slot}) is held by {serving or 'no group'}, not one owner")
        probes += [(shard, key) for shard in holders if shard not in serving]
    return verdict, probes


async def check_placement(harness: Harness, keys: Sequence[Any], endpoint: str) -> PlacementVerdict:
    """Check, on each group's leader, that each of ``keys`` is held by exactly one group and read only there.

    ``endpoint`` is a query taking ``{"key": key}`` as its shard key, read
    ``stale`` on each leader whose group does not hold the key: it must be
    refused with a slot refusal. Event loop only; call it on a healed cluster.
    """
    leaders: dict[str, str] = {}
    ranges: dict[str, list[dict[str, Any]]] = {}
    unread: list[str] = []
    for shard in harness.shards():
        leader = await _leader(harness, shard)
        if leader is None:
            unread.append(f"{shard}: no leader within {LEADER_PATIENCE:.0f}s")
            continue
        try:
            report = await harness.shard_client().slots(harness.config.replica(leader), timeout=3)
        except DocraftError as exc:
            unread.append(f"{shard}: its leader {leader} did not report its slots: {exc.code}")
            continue
        leaders[shard], ranges[shard] = leader, report["ranges"]
    verdict, probes = judge(ranges, keys)
    verdict.problems += unread
    for shard, key in probes:
        verdict.refusals_checked += 1
        if (problem := await _refused(harness, leaders[shard], endpoint, key)) is not None:
            verdict.problems.append(
                f"key {key!r} (slot {slot_of(key)}) on {shard}'s leader {leaders[shard]}: {problem}"
            )
    return verdict


async def _leader(harness: Harness, shard: str) -> str | None:
    """``shard``'s leader as its replicas answer, waiting up to ``LEADER_PATIENCE`` seconds for one."""
    for _ in range(int(LEADER_PATIENCE / 0.25)):
        if (leader := (await harness.replica_statuses(shard)).leader) is not None:
            return leader
        await asyncio.sleep(0.25)
    return None


async def _refused(harness: Harness, replica: str, endpoint: str, key: Any) -> str | None:
    """``None`` if ``replica`` refuses a stale ``endpoint`` read of ``key`` for its slot, else what it did."""
    request = {"endpoint": endpoint, "args": {"key": key}, "consistency": "stale"}
    try:
        answer = await harness.shard_client().read(harness.config.replica(replica), request, 3)
    except DocraftError as exc:
        return None if exc.code in REFUSAL_CODES else f"a stale read failed with {exc.code}, not a slot refusal"
    return f"a stale read was served: {answer.get('result')!r}"
