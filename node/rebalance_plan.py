"""Which slot ranges to move where: the rebalancer's pure planner (no I/O, no clock).

The input is what the groups report (``StateMachine.slots_report``): each
shard's owned ranges, in the cluster file's shard order, and the number of
documents in each non-empty slot. The output is a list of ``Chunk``s, each one
move of a contiguous range from one shard to another, small enough that its
freeze (writes to the range wait while it is copied) stays short:

- ``even_plan``: every shard ends with an even share, ``SLOT_COUNT // G``
  slots for each of the G shards that are not drained, the first
  ``SLOT_COUNT % G`` of them one more; drained shards get none. Over-full
  shards give contiguous ranges from the high end of their ranges, so what a
  shard keeps stays contiguous.
- ``chosen_plan``: the slots an operator named (``--move 100-299,4000 --to s2``),
  from whichever shards own them.

``chunks`` then splits each range so a chunk holds at most ``max_docs``
documents (a slot holding more is the only non-empty slot of its chunk).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from consensus.slots import SLOT_COUNT, Ranges

DEFAULT_MAX_DOCS = 2000


class PlanError(ValueError):
    """The request cannot be planned: an unknown shard, a malformed slot list, slots nobody owns."""


@dataclass(frozen=True)
class Chunk:
    """One planned move: slots ``first..last`` (inclusive) from shard ``source`` to ``target``; ``docs`` held now."""

    source: str
    target: str
    first: int
    last: int
    docs: int = 0

    @property
    def slots(self) -> int:
        return self.last - self.first + 1

    def describe(self) -> str:
        return f"slots {self.first}-{self.last} ({self.slots}) {self.source} -> {self.target}, {self.docs} docs"


def parse_slots(text: str) -> Ranges:
    """``"100-299,4000"`` as merged, sorted inclusive ranges; ``PlanError`` for anything else."""
    ranges: Ranges = []
    for part in text.split(","):
        bounds = part.strip().split("-")
        if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
            raise PlanError(f"slots are a comma list of N or N-M, got {part.strip()!r}")
        first, last = int(bounds[0]), int(bounds[-1])
        if not first <= last < SLOT_COUNT:
            raise PlanError(f"slot range {first}-{last} must run upwards within 0-{SLOT_COUNT - 1}")
        ranges.append((first, last))
    return merged(ranges)


def merged(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """``ranges`` sorted, with overlapping and adjacent ones joined."""
    out: Ranges = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def size(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(last - first + 1 for first, last in ranges)


def even_shares(shards: Sequence[str], drained: Iterable[str] = ()) -> dict[str, int]:
    """Slots each shard should hold: ``SLOT_COUNT // G`` for the G undrained ones, the first ``SLOT_COUNT % G``
    of them (in ``shards`` order) one more, 0 for the drained. ``PlanError`` when every shard is drained."""
    drained = set(drained)
    keeping = [s for s in shards if s not in drained]
    if not keeping:
        raise PlanError("every shard would be drained: the slots need somewhere to go")
    base, extra = divmod(SLOT_COUNT, len(keeping))
    shares = dict.fromkeys(shards, 0)
    for i, shard in enumerate(keeping):
        shares[shard] = base + (1 if i < extra else 0)
    return shares


def even_plan(
    owned: Mapping[str, Ranges],
    counts: Mapping[int, int],
    max_docs: int = DEFAULT_MAX_DOCS,
    drained: Iterable[str] = (),
) -> list[Chunk]:
    """Chunks that leave every shard of ``owned`` (in its order) with its ``even_shares``; none if they already do.

    Surplus is taken from each over-full shard's high end and handed to the
    under-full shards in order.
    """
    drained = set(drained)
    unknown = sorted(drained - set(owned))
    if unknown:
        raise PlanError(f"no shard {unknown[0]!r} (shards: {', '.join(owned)})")
    shares = even_shares(list(owned), drained)
    needs = {shard: shares[shard] - size(ranges) for shard, ranges in owned.items()}
    takers = [shard for shard, need in needs.items() if need > 0]
    pieces: list[Chunk] = []
    for shard, ranges in owned.items():
        surplus = -needs[shard]
        for first, last in reversed(merged(ranges)):
            while surplus > 0 and first <= last:
                taker = takers[0]
                take = min(surplus, needs[taker], last - first + 1)
                pieces.append(Chunk(shard, taker, last - take + 1, last))
                last -= take
                surplus -= take
                needs[taker] -= take
                if needs[taker] == 0:
                    takers.pop(0)
    return chunks(pieces, counts, max_docs)


def chosen_plan(
    owned: Mapping[str, Ranges],
    slots: Ranges,
    target: str,
    counts: Mapping[int, int],
    max_docs: int = DEFAULT_MAX_DOCS,
) -> list[Chunk]:
    """Chunks moving ``slots`` to ``target`` from whichever shards own them; slots ``target`` holds are skipped.

    ``PlanError`` for an unknown target, or slots that no shard reports owning
    (a move in progress holds them: resume it first).
    """
    if target not in owned:
        raise PlanError(f"no shard {target!r} (shards: {', '.join(owned)})")
    pieces: list[Chunk] = []
    covered = 0
    for shard, ranges in owned.items():
        for first, last in merged(ranges):
            for want_first, want_last in slots:
                lo, hi = max(first, want_first), min(last, want_last)
                if lo <= hi:
                    covered += hi - lo + 1
                    if shard != target:
                        pieces.append(Chunk(shard, target, lo, hi))
    if covered != size(slots):
        raise PlanError(f"{size(slots) - covered} of the slots named are owned by no shard now (a move in progress?)")
    return chunks(sorted(pieces, key=lambda c: c.first), counts, max_docs)


def chunks(pieces: Iterable[Chunk], counts: Mapping[int, int], max_docs: int = DEFAULT_MAX_DOCS) -> list[Chunk]:
    """Each piece split into consecutive chunks holding at most ``max_docs`` documents by ``counts`` (per slot).

    A slot that alone holds more than ``max_docs`` is the only non-empty slot of its chunk. ``docs`` is set on
    every chunk.
    """
    if max_docs < 1:
        raise PlanError(f"a chunk must be allowed at least one document, got max_docs={max_docs}")
    out: list[Chunk] = []
    for piece in pieces:
        start, docs = piece.first, 0
        for slot in range(piece.first, piece.last + 1):
            here = counts.get(slot, 0)
            if docs and docs + here > max_docs:
                out.append(Chunk(piece.source, piece.target, start, slot - 1, docs))
                start, docs = slot, 0
            docs += here
        out.append(Chunk(piece.source, piece.target, start, piece.last, docs))
    return out
