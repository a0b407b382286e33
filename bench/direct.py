"""A client that routes by itself: key-addressed requests sent straight to the owning leader's replica.

Replicas embed the router, and a router calls its own replica in process
(``ShardClient``'s local path), so a request that reaches the leader of the
key's group costs one HTTP hop instead of two (client, dispatcher, leader).
``bench.compare`` measures that path beside the dispatcher's: it learns each
group's leader and slots from ``/_admin/cluster`` (``LocalCluster.wait_ready``),
writes the keys each group owns to a file, and runs one ``wrk`` per leader at
once, the connections split between them (``docraft.lua``'s ``insert_from``
and ``get_from`` modes read those files).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.wrk_load import LoadResult, run_wrk, wrk_threads
from consensus.slots import in_ranges, slot_of
from node.config import ClusterConfig

# New ids a write route may use per second of its phase: above any rate docraft reaches here.
WRITE_IDS_PER_SECOND = 6_000


@dataclass(frozen=True)
class Route:
    """One group's leader (``url``: its replica's HTTP address) and the slot ranges the group owns."""

    shard: str
    url: str
    ranges: list[tuple[int, int]]


def routes(config: ClusterConfig, shards: Sequence[dict[str, Any]]) -> list[Route]:
    """Each group's route from ``/_admin/cluster``'s ``shards``; raises ``RuntimeError`` for one with no leader."""
    replicas = {replica.id: replica for shard in config.shards for replica in shard.replicas}
    found = []
    for shard in shards:
        leader = shard.get("leader")
        if leader not in replicas:
            raise RuntimeError(f"shard {shard.get('id')} has no known leader: {leader!r}")
        ranges = [(int(first), int(last)) for first, last in shard["slots"]]
        found.append(Route(str(shard["id"]), replicas[leader].http_url, ranges))
    return found


def owned(route: Route, keys: Iterable[int], limit: int | None = None) -> list[int]:
    """The keys of ``keys`` whose slot ``route``'s group owns, in order, at most ``limit`` of them."""
    mine = []
    for key in keys:
        if in_ranges(route.ranges, slot_of(key)):
            mine.append(key)
            if limit is not None and len(mine) >= limit:
                break
    return mine


def write_keys(path: Path, keys: Sequence[int]) -> Path:
    """``keys`` one per line, as ``docraft.lua`` reads them; raises ``ValueError`` when there are none."""
    if not keys:
        raise ValueError(f"no keys for {path.name}: the group owns none of those asked for")
    path.write_text("".join(f"{key}\n" for key in keys), encoding="ascii")
    return path


def split(connections: int, ways: int) -> list[int]:
    """``connections`` shared out between ``ways`` runs, each at least one."""
    return [max(1, connections // ways + (1 if i < connections % ways else 0)) for i in range(ways)]


def combine(results: Sequence[LoadResult]) -> LoadResult:
    """Runs that went on at the same time as one: their requests, errors and connections summed over the
    longest run; the mean weighted by requests; p50 and p99 are the slowest run's (an upper bound)."""
    if not results:
        raise ValueError("nothing to combine")
    requests = sum(r.requests for r in results)
    errors: dict[str, int] = {}
    for result in results:
        for name, count in result.errors.items():
            errors[name] = errors.get(name, 0) + count
    return LoadResult(
        connections=sum(r.connections for r in results),
        requests=requests,
        seconds=max(r.seconds for r in results),
        errors=errors,
        p50_ms=max(r.p50_ms for r in results),
        p99_ms=max(r.p99_ms for r in results),
        mean_ms=sum(r.mean_ms * r.requests for r in results) / requests if requests else 0.0,
    )


def run_routes(loads: Sequence[tuple[str, int, tuple[str, ...]]], seconds: float, authorization: str) -> LoadResult:
    """Run ``docraft.lua`` once per ``(url, connections, script_args)`` in ``loads``, all at once; combined."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(loads)) as pool:
        running = [
            pool.submit(run_wrk, "docraft", url, connections, seconds, args, authorization)
            for url, connections, args in loads
        ]
        return combine([future.result() for future in running])


def insert_args(keys_file: Path, connections: int) -> tuple[str, ...]:
    """``docraft.lua``'s arguments to insert the ids in ``keys_file``, each thread taking its own share."""
    return ("insert_from", str(keys_file), str(wrk_threads(connections)))


def get_args(level: str, keys_file: Path) -> tuple[str, ...]:
    """``docraft.lua``'s arguments to read, at ``level``, keys drawn from ``keys_file``."""
    return ("get_from", level, str(keys_file))
