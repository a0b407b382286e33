"""How docraft scales out on this machine: throughput by shard count, and the cost of moving slots online.

    python -m bench.scale                          # 1, 2 and 3 shards, then the move; 5 s a phase
    python -m bench.scale --duration 10 --clients 32 --move-docs 10000 --json scale.json

For each shard count it starts a ``docraft up``-shaped cluster (``bench.up_cluster``,
3 replicas a shard) and measures, with ``bench.throughput``'s load generator,
key-addressed writes (``insert_user``) and reads by key (``get_user?id=``) with
``--clients`` concurrent clients. Then, on a 2-shard cluster holding about
``2.2 * --move-docs`` users, it measures writes for ``--duration`` seconds,
then moves slots of s0 holding ``--move-docs`` documents to s1 with ``docraft
rebalance --move`` (a separate process, as an operator runs it; chunks of at
most 2,000 documents) while the same writers keep writing, and reports the
move's duration and the write throughput during it as a fraction of before.
Prints a table; ``--json`` also writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import ujson

from bench.throughput import Result, cycle_paths, drive, user_paths
from bench.up_cluster import APP, UpCluster, stop_clusters_on_sigterm
from node.launcher import Layout
from node.loader import load_csv
from node.rebalance import holdings, reports
from node.router import Router
from node.shard_client import ShardClient
from query.app import load_app

FIRST_ID = 50_000_000  # above the sample's ids and those of earlier phases


@dataclass
class MoveResult:
    docs: int
    slots: tuple[int, int]
    seconds: float
    before: Result
    during: Result
    exit_code: int

    @property
    def fraction(self) -> float:
        return self.during.ops_per_s / self.before.ops_per_s if self.before.ops_per_s else 0.0


def bearer(cluster: UpCluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.token}"}


async def throughput(cluster: UpCluster, shards: int, args: argparse.Namespace) -> list[Result]:
    """Writes, then reads of the written keys, each for ``args.duration`` seconds."""
    write_path, written = user_paths(FIRST_ID)
    writes = await drive(f"write, {shards} shard(s)", cluster.url, args.clients, args.duration, write_path)
    reads = cycle_paths([f"/get_user?id={uid}" for uid in written[:5000] or [1001]])
    read = await drive(f"read by key, {shards} shard(s)", cluster.url, args.clients, args.duration, reads)
    return [writes, read]


def preload(cluster: UpCluster, count: int, folder: Path) -> None:
    """Store ``count`` users through the bulk route (``node.loader``)."""
    ids = list(range(FIRST_ID, FIRST_ID + count))
    path = folder / "preload.csv"
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "first_name", "last_name", "country", "city"])
        writer.writerows([uid, "Scale", f"U{uid}", "Scaleland", "X"] for uid in ids)
    user = load_app(APP).model("User")
    report = load_csv(path, user, cluster.url, batch_size=500, progress=False, token=cluster.token)
    if report.rejected:
        raise RuntimeError(f"preloading users failed:\n{report.summary()}")


async def slots_holding(cluster: UpCluster, docs: int) -> tuple[tuple[int, int], int]:
    """The shortest range at the high end of s0's slots holding at least ``docs`` documents, and how many it holds
    (from the groups' own counts, ``node.rebalance.holdings``)."""
    config = cluster.processes.config
    owned, per_slot = holdings(await reports(Router(config, load_app(APP), ShardClient(config)), counts=True))
    first, last = owned["s0"][-1]
    held, start = 0, last + 1
    while held < docs and start > first:
        start -= 1
        held += per_slot.get(start, 0)
    return (start, last), held


async def move_under_writes(cluster: UpCluster, args: argparse.Namespace, folder: Path) -> MoveResult:
    """Writers for ``duration`` s, then again while ``docraft rebalance --move`` runs (1 s slices until it exits)."""
    await asyncio.to_thread(preload, cluster, int(args.move_docs * 2.2), folder)
    write_path, _ = user_paths(FIRST_ID + 10_000_000)
    before = await drive("write, before the move", cluster.url, args.clients, args.duration, write_path)
    slots, docs = await slots_holding(cluster, args.move_docs)  # as the move starts (writers wrote some meanwhile)
    command = [sys.executable, "-m", "node.cli", "rebalance", "--config", str(cluster.processes.config.path)]
    command += ["--move", f"{slots[0]}-{slots[1]}", "--to", "s1"]
    started = time.monotonic()
    mover = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    slices = []
    while mover.poll() is None:
        slices.append(await drive("", cluster.url, args.clients, 1.0, write_path))
    seconds = time.monotonic() - started
    output = mover.communicate()[0]
    print(output, end="", flush=True)
    during = Result(
        "write, during the move",
        args.clients,
        sum(s.ops for s in slices),
        sum(s.errors for s in slices),
        sum(s.seconds for s in slices),
        max((s.p50_ms for s in slices), default=0.0),
        max((s.p99_ms for s in slices), default=0.0),
    )
    return MoveResult(docs, slots, seconds, before, during, mover.returncode)


def start(shards: int, folder: Path) -> UpCluster:
    """A fresh ``shards`` x 3 cluster in a new directory under ``folder``, started, with the sample loaded."""
    cluster = UpCluster(
        Path(tempfile.mkdtemp(prefix=f"{shards}-shards-", dir=folder)), Layout(shards=shards, replicas=3)
    )
    cluster.start()
    return cluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput phase")
    parser.add_argument("--shards", default="1,2,3", help="the shard counts to measure throughput at")
    parser.add_argument("--move-docs", type=int, default=10_000, help="documents' worth of slots to move (0: skip)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    stop_clusters_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="docraft-scale-"))
    results: list[Result] = []
    move: MoveResult | None = None
    for shards in [int(n) for n in args.shards.split(",") if n.strip()]:
        cluster = start(shards, folder)
        try:
            results += asyncio.run(throughput(cluster, shards, args))
        finally:
            cluster.close()
        print("\n".join(r.line() for r in results[-2:]), flush=True)
    if args.move_docs > 0:
        cluster = start(2, folder)
        try:
            move = asyncio.run(move_under_writes(cluster, args, folder))
        finally:
            cluster.close()
    print(f"\n{'phase':<34} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for r in results + ([move.before, move.during] if move else []):
        print(f"{r.name:<34} {r.ops_per_s:8.0f} {r.p50_ms:8.2f} {r.p99_ms:8.2f} {r.errors:>7}")
    if move is not None:
        print(
            f"moved {move.docs} documents (slots {move.slots[0]}-{move.slots[1]}, s0 -> s1) in {move.seconds:.1f} s "
            f"while writing; writes during the move ran at {move.fraction:.0%} of before "
            f"(docraft rebalance exit {move.exit_code})"
        )
    if args.json:
        summary = {
            "throughput": [{**asdict(r), "ops_per_s": r.ops_per_s} for r in results],
            "move": None if move is None else {**asdict(move), "fraction": move.fraction},
        }
        Path(args.json).write_text(ujson.dumps(summary, indent=2))
    failed = move is not None and move.exit_code != 0
    return 1 if failed or any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
