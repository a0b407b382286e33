"""Counts kept for metrics: durations by bucket (``Durations``), and what a Raft member saw (``RaftStats``).

No I/O and no clock: callers report what they saw and how long something took,
and ``node.metrics`` and ``node.collectors`` read the counts when ``/metrics``
is scraped. Each object is written by one thread only (no lock: an observation
costs a bisect and two additions); another thread may read it, and a scrape
that reads one mid-update is off by that one observation at most.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# Upper bounds (seconds) of the snapshot duration histogram.
SNAPSHOT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class Durations:
    """A histogram's state: how many observations fell in each bucket, and their sum (seconds).

    ``counts[i]`` counts observations of at most ``bounds[i]`` and more than the
    bound before it; the last entry those over every bound.
    """

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def add(self, other: Durations) -> None:
        """Add ``other``'s observations (same bounds) to these."""
        self.counts = [mine + theirs for mine, theirs in zip(self.counts, other.counts, strict=True)]
        self.total += other.total

    @property
    def count(self) -> int:
        """How many observations there were."""
        return sum(self.counts)


@dataclass
class RaftStats:
    """Leader changes a Raft member saw, and how long its snapshots took to write."""

    leader_changes: int = 0
    snapshots: Durations = field(default_factory=lambda: Durations(SNAPSHOT_BUCKETS))
    _leader: str | None = None

    def saw_leader(self, address: str | None) -> None:
        """Note the leader known now (``None``: none known); counts one change per new leader.

        A spell without a leader is no change by itself: the same leader coming
        back after one is not counted again, as etcd's ``leader_changes_seen`` does.
        """
        if address is not None and address != self._leader:
            self._leader = address
            self.leader_changes += 1

    def snapshot_took(self, seconds: float) -> None:
        """Count one snapshot written in ``seconds``."""
        self.snapshots.observe(seconds)
