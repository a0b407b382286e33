"""Hash slots, and the table of the slots one replica group holds.

A key's slot is the CRC-32 of its canonical JSON text modulo ``SLOT_COUNT``
(so the int ``5`` and the string ``"5"`` are different keys). Each group's
state machine keeps a ``SlotTable``: the authority for the slots *it* holds,
changed only by committed commands, so every replica of the group agrees.

A range of slots is in one of four states:

- ``owned``: read and written here;
- ``frozen``: this group is the source of a move: read here, writes wait;
- ``importing``: this group is the target of a move: nothing served yet;
- ``moved``: a tombstone naming the shard the range went to (``owner``, ``replicas``).

A slot in no range is absent: never held here. Each range carries the
``version`` (epoch) of the move that gave it to this group, 0 for the ranges
of the cluster file; ``epoch`` is the highest version the group committed.
Everything is pure and JSON round-trips through ``to_json``/``from_json``.
"""

from __future__ import annotations

import bisect
import itertools
import zlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from typing import Any

import ujson

from models.errors import (
    BadRequest,
    CrossShardWrite,
    DocraftError,
    SlotFrozen,
    SlotImporting,
    SlotsUnknown,
    WrongShard,
)

SLOT_COUNT = 16384

OWNED, FROZEN, IMPORTING, MOVED = "owned", "frozen", "importing", "moved"
STATES = (OWNED, FROZEN, IMPORTING, MOVED)

# Which states let a request through: writes run only on owned slots, reads also on frozen ones,
# and a replica proposes a routed write unless the slot is plainly elsewhere (the fence at apply decides).
WRITABLE = frozenset({OWNED})
READABLE = frozenset({OWNED, FROZEN})
ROUTABLE = frozenset({OWNED, FROZEN, IMPORTING})

# The error codes of a slot refusal: a write refused with one of them was not applied and is not
# remembered under its request id (a retry once the slots have moved may apply it).
REFUSAL_CODES = frozenset(
    {WrongShard.code, SlotFrozen.code, SlotImporting.code, SlotsUnknown.code, CrossShardWrite.code}
)

# How long a client should wait before retrying a slot that is moving, or a group still starting.
MOVING_RETRY_AFTER = 0.05
UNKNOWN_RETRY_AFTER = 0.1

Ranges = list[tuple[int, int]]


def slot_of(key: Any) -> int:
    """The hash slot of a partition key value."""
    return zlib.crc32(ujson.dumps(key, sort_keys=True).encode()) % SLOT_COUNT


def parse_ranges(value: Any, what: str) -> Ranges:
    """``value`` as sorted, disjoint ``(first, last)`` slot ranges; raises ``BadRequest`` naming ``what``."""
    if not isinstance(value, list):
        raise BadRequest(f"{what} must be a list of [first, last] slot ranges", param=what)
    ranges: Ranges = []
    for pair in value:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in pair)
            or not 0 <= pair[0] <= pair[1] < SLOT_COUNT
        ):
            raise BadRequest(f"{what}: {pair!r} is not a [first, last] range within 0..{SLOT_COUNT - 1}", param=what)
        ranges.append((pair[0], pair[1]))
    ranges.sort()
    for (_, last), (first, _) in itertools.pairwise(ranges):
        if first <= last:
            raise BadRequest(f"{what}: the ranges overlap at slot {first}", param=what)
    return ranges


def in_ranges(ranges: Ranges, slot: int) -> bool:
    """Whether ``slot`` lies in one of ``ranges`` (sorted and disjoint)."""
    at = bisect.bisect_right(ranges, (slot, SLOT_COUNT)) - 1
    return at >= 0 and ranges[at][0] <= slot <= ranges[at][1]


def ranges_json(ranges: Iterable[tuple[int, int]]) -> list[list[int]]:
    return [[first, last] for first, last in ranges]


@dataclass(frozen=True)
class SlotRange:
    """Slots ``first..last`` (inclusive) in one state; ``move`` names the move of a frozen or
    importing range, ``owner`` and ``replicas`` the holder of a moved one."""

    first: int
    last: int
    state: str
    version: int
    move: str | None = None
    owner: str | None = None
    replicas: tuple[dict[str, Any], ...] = ()

    def same_claim(self, other: SlotRange) -> bool:
        """Whether the two differ only in their bounds (so adjacent ones merge)."""
        return replace(self, first=other.first, last=other.last) == other

    def to_json(self) -> dict[str, Any]:
        return {
            "first": self.first,
            "last": self.last,
            "state": self.state,
            "version": self.version,
            "move": self.move,
            "owner": self.owner,
            "replicas": list(self.replicas),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlotRange:
        return cls(
            data["first"],
            data["last"],
            data["state"],
            data["version"],
            data["move"],
            data["owner"],
            tuple(data["replicas"]),
        )


class SlotTable:
    """The slot ranges one group holds, sorted and disjoint, adjacent equal ranges merged.

    Not thread-safe: it is part of the state machine's state (see ``StateMachine``).
    """

    def __init__(self) -> None:
        self.ranges: list[SlotRange] = []
        self._firsts: list[int] = []
        self.epoch = 0
        self.initialized = False

    def find(self, slot: int) -> SlotRange | None:
        """The range holding ``slot``, or ``None`` when the slot is absent."""
        at = bisect.bisect_right(self._firsts, slot) - 1
        if at >= 0 and self.ranges[at].last >= slot:
            return self.ranges[at]
        return None

    def within(self, first: int, last: int) -> list[SlotRange]:
        """The ranges overlapping ``first..last``, cut to it; absent slots have none."""
        return [
            replace(r, first=max(r.first, first), last=min(r.last, last))
            for r in self.ranges
            if r.first <= last and r.last >= first
        ]

    def states_of(self, ranges: Ranges) -> set[str | None]:
        """Every state found in ``ranges``, ``None`` standing for absent slots."""
        found: set[str | None] = set()
        for first, last in ranges:
            held = self.within(first, last)
            found.update(r.state for r in held)
            if sum(r.last - r.first + 1 for r in held) < last - first + 1:
                found.add(None)
        return found

    def assign(self, first: int, last: int, claim: SlotRange | None) -> None:
        """Make ``first..last`` one range like ``claim`` (its own bounds are ignored), or absent if ``None``."""
        self._replace(first, last, [] if claim is None else [replace(claim, first=first, last=last)])

    def restate(self, first: int, last: int, state: str, move: str | None) -> None:
        """Change the state and move of the ranges held in ``first..last``, keeping their versions."""
        self._replace(first, last, [replace(r, state=state, move=move) for r in self.within(first, last)])

    def _replace(self, first: int, last: int, new: list[SlotRange]) -> None:
        kept: list[SlotRange] = []
        for r in self.ranges:
            if r.last < first or r.first > last:
                kept.append(r)
                continue
            if r.first < first:
                kept.append(replace(r, last=first - 1))
            if r.last > last:
                kept.append(replace(r, first=last + 1))
        merged: list[SlotRange] = []
        for r in sorted(kept + new, key=lambda r: r.first):
            if merged and merged[-1].last + 1 == r.first and merged[-1].same_claim(r):
                merged[-1] = replace(merged[-1], last=r.last)
            else:
                merged.append(r)
        self.ranges = merged
        self._firsts = [r.first for r in merged]

    def slot_ranges(self, states: Collection[str]) -> list[list[int]]:
        """``[[first, last], ...]`` of the slots in one of ``states``, adjacent ranges joined."""
        joined: list[list[int]] = []
        for r in self.ranges:
            if r.state not in states:
                continue
            if joined and joined[-1][1] + 1 == r.first:
                joined[-1][1] = r.last
            else:
                joined.append([r.first, r.last])
        return joined

    def not_ready(self) -> SlotsUnknown | None:
        """``SlotsUnknown`` until the table is initialized (by ``init_slots`` or a snapshot), else ``None``."""
        if self.initialized:
            return None
        return SlotsUnknown(
            "this group has not committed its slot table yet; retry shortly", retry_after=UNKNOWN_RETRY_AFTER
        )

    def refusal(self, slot: int, allowed: Collection[str]) -> DocraftError | None:
        """``None`` when ``slot`` is in one of the ``allowed`` states, else the error to answer with.

        ``SlotsUnknown`` before the table is initialized; ``SlotFrozen`` or
        ``SlotImporting`` for a moving slot; ``WrongShard`` for a moved or absent one.
        """
        if (unknown := self.not_ready()) is not None:
            return unknown
        held = self.find(slot)
        state = None if held is None else held.state
        if state in allowed:
            return None
        if held is not None and state == FROZEN:
            return SlotFrozen(
                f"slot {slot} is being moved away (move {held.move}); writes to it wait for the move",
                slot=slot,
                move=held.move,
                retry_after=MOVING_RETRY_AFTER,
            )
        if held is not None and state == IMPORTING:
            return SlotImporting(
                f"slot {slot} is being moved here (move {held.move}) and is not served yet",
                slot=slot,
                move=held.move,
                retry_after=MOVING_RETRY_AFTER,
            )
        if held is not None and state == MOVED:
            return WrongShard(
                f"slot {slot} moved to shard {held.owner} at epoch {held.version}; nothing was done here",
                slot=slot,
                owner=held.owner,
                shard=held.owner,
                epoch=held.version,
                replicas=list(held.replicas),
            )
        return WrongShard(
            f"slot {slot} is not held by this group; nothing was done here",
            slot=slot,
            owner=None,
            shard=None,
            epoch=self.epoch,
            replicas=[],
        )

    def touch_refusal(self, slot: int, routed: int | None) -> DocraftError | None:
        """``None`` when a write routed by slot ``routed`` may read or write documents of ``slot``, else the error.

        Nothing is refused before the table is initialized: the writes applied then were logged before
        slots existed, and are replayed as they were applied (no replica proposes a write until the table
        is committed). A slot other than ``routed`` that this group does not hold (moved away, never held)
        is ``CrossShardWrite``: no group can run such a write, so routers must not resend it. Otherwise
        (``routed`` itself, a moving slot, or ``routed`` ``None``) the answer is ``refusal``'s.
        """
        if not self.initialized:
            return None
        found = self.refusal(slot, WRITABLE)
        if isinstance(found, WrongShard) and routed is not None and slot != routed:
            return CrossShardWrite(
                f"slot {slot} is not this write's slot {routed} and is not held here; a mutation touches only "
                "its own slot and the documents co-located with it; nothing was stored",
                slot=slot,
                owner=found.details["owner"],
            )
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "initialized": self.initialized,
            "epoch": self.epoch,
            "ranges": [r.to_json() for r in self.ranges],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlotTable:
        table = cls()
        table.initialized = bool(data["initialized"])
        table.epoch = int(data["epoch"])
        table.ranges = [SlotRange.from_json(r) for r in data["ranges"]]
        table._firsts = [r.first for r in table.ranges]
        return table
