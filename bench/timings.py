"""What clients wait for under faults: failover and catch-up times per fault kind, and their targets.

- Failover: for a fault that took the leader away, the seconds from the fault
  taking effect until the first successful write invoked after it completed.
  For other faults the same figure is kept as ``next_write`` (it should be
  about one write's latency).
- Election: for a fault that took the leader away, the seconds until a
  replica was first seen leading in a newer term (``bench.nemesis.LeaderWatch``);
  failover minus election is what routers and clients added.
- Catch-up: for each replica a fault healed, the seconds until it had applied
  the leader's commit index as of the heal (measured by ``bench.nemesis``).

Targets (``targets``): for kills, pauses and both partition kinds the failover
median is under ``FAILOVER_MEDIAN_LIMIT`` and its maximum under
``FAILOVER_MAX_LIMIT``; every healed replica catches up within
``CATCH_UP_LIMIT``. A measurement that never completed (no write came, the
replica never caught up) fails its target; a target nothing measured is
``None`` (not applicable), not a failure.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.nemesis import Fault

FAILOVER_KINDS = ("kill", "pause", "partition", "partition-dispatcher")
FAILOVER_MEDIAN_LIMIT = 1.5
FAILOVER_MAX_LIMIT = 3.0
CATCH_UP_LIMIT = 2.0


def next_write(writes: Iterable[tuple[float, float]], start: float) -> float | None:
    """Seconds from ``start`` until the first write (``(invoke, complete)``) invoked at or after it completed.

    Writes already in flight at ``start`` do not count: one may have
    committed just before the fault and completed just after it.
    """
    first = min((complete for invoke, complete in writes if invoke >= start), default=None)
    return None if first is None else first - start


def new_leader(elections: list[tuple[float, str, int]], start: float) -> float | None:
    """Seconds from ``start`` until a replica was seen leading in a term newer than any seen before ``start``.

    ``elections`` are ``(time, replica, term)`` records of a replica first seen leading in a term.
    """
    known = max((term for time, _, term in elections if time < start), default=-1)
    first = min((time for time, _, term in elections if time >= start and term > known), default=None)
    return None if first is None else first - start


def record_failovers(
    faults: list[Fault], writes: list[tuple[float, float]], elections: list[tuple[float, str, int]]
) -> None:
    """Set each fault's ``failover`` (seconds to the next successful write, ``None`` if none came) and, for a
    fault that took the leader away, its ``elected`` (seconds until a newer term's leader was seen)."""
    for fault in faults:
        fault.failover = next_write(writes, fault.start)
        fault.elected = new_leader(elections, fault.start) if fault.leader else None


@dataclass(frozen=True)
class Spread:
    """Times of one kind of measurement; ``missing`` counts those that never completed."""

    times: list[float]
    missing: int = 0

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread:
        values = list(values)
        return cls(sorted(v for v in values if v is not None), sum(v is None for v in values))

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def max(self) -> float | None:
        return self.times[-1] if self.times else None

    def to_json(self) -> dict[str, Any]:
        return {
            "count": len(self.times) + self.missing,
            "median": self.median,
            "max": self.max,
            "missing": self.missing,
        }


@dataclass(frozen=True)
class KindTimings:
    """The timings of every fault of one kind."""

    kind: str
    faults: int
    failover: Spread  # faults that took the leader away
    election: Spread  # the same faults: until a newer term's leader was seen
    next_write: Spread  # the other faults
    catch_up: Spread  # every replica these faults healed

    def to_json(self) -> dict[str, Any]:
        return {
            "faults": self.faults,
            "failover": self.failover.to_json(),
            "election": self.election.to_json(),
            "next_write_after_other_faults": self.next_write.to_json(),
            "catch_up": self.catch_up.to_json(),
        }


def by_kind(faults: list[Fault]) -> dict[str, KindTimings]:
    """Timings per fault kind, in kind order; ``record_failovers`` must have run."""
    kinds = sorted({fault.kind for fault in faults})
    timings = {}
    for kind in kinds:
        mine = [fault for fault in faults if fault.kind == kind]
        timings[kind] = KindTimings(
            kind,
            len(mine),
            Spread.of(fault.failover for fault in mine if fault.leader),
            Spread.of(fault.elected for fault in mine if fault.leader),
            Spread.of(fault.failover for fault in mine if not fault.leader),
            Spread.of(time for fault in mine for time in fault.catch_up.values()),
        )
    return timings


@dataclass(frozen=True)
class Target:
    """One target: ``measured`` (``None`` if nothing was) must be under ``limit``, and nothing may be missing."""

    name: str
    limit: float
    measured: float | None
    missing: int = 0

    @property
    def passed(self) -> bool | None:
        """``None`` when nothing was measured, else whether the target was met."""
        if self.missing:
            return False
        return None if self.measured is None else self.measured < self.limit

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "limit": self.limit,
            "measured": self.measured,
            "missing": self.missing,
            "passed": self.passed,
        }


def targets(timings: dict[str, KindTimings]) -> list[Target]:
    """The failover targets of each kind in ``FAILOVER_KINDS`` that ran, then the catch-up target over all kinds."""
    found = []
    for kind in FAILOVER_KINDS:
        if kind in timings:
            failover = timings[kind].failover
            found.append(Target(f"{kind} failover median", FAILOVER_MEDIAN_LIMIT, failover.median, failover.missing))
            found.append(Target(f"{kind} failover max", FAILOVER_MAX_LIMIT, failover.max, failover.missing))
    catch_up = Spread.of(t for kind in timings.values() for t in kind.catch_up.times)
    missing = sum(kind.catch_up.missing for kind in timings.values())
    found.append(Target("catch-up max (every healed replica)", CATCH_UP_LIMIT, catch_up.max, missing))
    return found
