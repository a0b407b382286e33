"""Data scale: load N users through the bulk route and measure what a large data set costs.

    python -m bench.scale_data                          # 1,000,000 users
    python -m bench.scale_data --docs 20000 --snapshot-wait 0 --json scale_data.json

Starts a ``docraft up``-shaped cluster (``bench.up_cluster``: 2 shards x 3
replicas, ``docraft up``'s ``[raft]`` compaction defaults, the sample users
loaded) and, in order:

1. key reads at the sample's ~1 K documents (``wrk``, ``get_user?id=`` with
   ``leader`` consistency, ``--connections`` connections, ``--duration`` s);
2. loads ``--docs`` generated users (deterministic, ids from ``FIRST_ID``:
   ``user_rows``) from CSV chunks of ``--chunk`` rows, ``--workers`` chunks at a
   time, each with ``node.loader.load_csv`` (what ``docraft load`` runs: bulk
   requests of ``--batch`` documents with the admin token); reports documents/s
   overall and per ``--block`` documents, and the CPU each process used;
3. the same key reads over the loaded ids, and each process's resident memory
   (``VmRSS``) against before the load;
4. waits up to ``--snapshot-wait`` s for every replica to write a snapshot
   (PySyncObj compacts every ``compaction_min_seconds``, or past
   ``compaction_min_entries`` log entries), then watches ``SETTLE_S`` more;
5. restarts one follower (SIGTERM, start) until its applied index reaches its
   leader's commit index, then the whole cluster (stop all, start all) until a
   loaded user can be read through the dispatcher.

From start to end two threads watch: one asks ``/_admin/cluster`` every 0.5 s for
each shard's leader and term (leader changes) and for how long each leader has
not heard from each follower; the other looks for ``snapshot.json.tmp`` in each
replica's data directory every 50 ms. docraft reports no snapshot timing
itself, so the time a snapshot file was being written (from the first sighting
of the temporary file to the snapshot's mtime) is the observable part of a
snapshot; building the state before the file opens is not in it. A leader change
seen within ``blame_margin`` of such a write by a replica of its group counts as caused by it.

Prints each figure and a table of the issue's targets with PASS or MISS; the
machine's other load (cores busy outside the cluster) is printed beside the load
rate. Exits 1 if a request failed or a phase did not finish.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ujson

from bench.proc_cpu import CpuTimes, cpu_times, machine_busy_s, parse_stat
from bench.up_cluster import APP, UpCluster, stop_clusters_on_sigterm
from bench.wrk_load import missing_tool, run_wrk
from consensus.raft_member import RaftTimings
from consensus.replica import SNAPSHOT_FILE
from examples.people import make_sample
from node.admin import http_json
from node.config import ClusterConfig
from node.loader import load_csv
from node.signing import internal_key
from query.app import load_app

FIRST_ID = 10_000_000  # generated users' ids: far above the sample's (make_sample.FIRST_ID, COUNT)
SEED = 20261128
HEADER = ["id", "first_name", "last_name", "country", "address", "city"]
CLUSTER_POLL_S = 0.5
SNAPSHOT_POLL_S = 0.05
SNAPSHOT_TMP = SNAPSHOT_FILE + ".tmp"  # PySyncObj's serializer writes here, then renames
SETTLE_S = 5.0  # watching on after the snapshots, so a leader change they cause is seen before the restarts
NO_SNAPSHOT_ON_STOP = "no snapshot before stopping"  # node.servers logs it when snapshot_now timed out
# Targets of issue 12's "Data scale".
LOAD_TARGET = 10_000.0  # documents/s
RESTART_TARGET_S = 30.0
READ_P50_SLACK = 1.2  # p50 at N within 20% of p50 at 1 K


# -- the data ------------------------------------------------------------------


def user_rows(first_id: int, count: int, seed: int = SEED) -> Iterator[list[Any]]:
    """``count`` users of ``examples.people``'s ``User`` (``HEADER`` order), ids ``first_id`` upward.

    The same arguments give the same rows on every machine (one seeded generator,
    names and places drawn like ``examples.people.make_sample``'s).
    """
    rng = random.Random(seed)
    countries = sorted(make_sample.PLACES)
    for uid in range(first_id, first_id + count):
        country = countries[rng.randrange(len(countries))]
        street = f"{rng.randint(1, 999)} {rng.choice(make_sample.STREETS)}"
        first, last = rng.choice(make_sample.FIRST), rng.choice(make_sample.LAST)
        yield [uid, first, last, country, street, rng.choice(make_sample.PLACES[country])]


def write_chunks(folder: Path, first_id: int, count: int, rows_per_chunk: int) -> list[tuple[Path, int]]:
    """Write ``user_rows(first_id, count)`` as CSV files of at most ``rows_per_chunk`` rows; (file, rows) each."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = user_rows(first_id, count)
    chunks = []
    for number, start in enumerate(range(0, count, rows_per_chunk)):
        size = min(rows_per_chunk, count - start)
        path = folder / f"users-{number:05d}.csv"
        with open(path, "w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(HEADER)
            writer.writerows(next(rows) for _ in range(size))
        chunks.append((path, size))
    return chunks


# -- pure measurements -----------------------------------------------------------


def block_rates(done: Sequence[tuple[float, int]], started: float, block: int) -> list[tuple[int, float]]:
    """Documents/s of each successive ``block`` documents, from (time finished, documents) of each chunk.

    A block ends at the chunk that brings the running total to its end (so
    blocks are as exact as chunks are small); the last block may be shorter.
    Returns (documents in the block, documents/s) pairs.
    """
    rates = []
    total, block_start_time, block_start_docs = 0, started, 0
    for finished, docs in sorted(done):
        total += docs
        if total - block_start_docs >= block:
            elapsed = finished - block_start_time
            rates.append((total - block_start_docs, (total - block_start_docs) / elapsed if elapsed > 0 else 0.0))
            block_start_time, block_start_docs = finished, total
    if total > block_start_docs:
        finished = max(t for t, _ in done)
        elapsed = finished - block_start_time
        rates.append((total - block_start_docs, (total - block_start_docs) / elapsed if elapsed > 0 else 0.0))
    return rates


def parse_vm_rss(status_text: str) -> int:
    """Resident memory in KiB from a ``/proc/PID/status`` text; ``ValueError`` without a ``VmRSS`` line."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError("no VmRSS line")


@dataclass(frozen=True)
class ClusterSample:
    """One ``/_admin/cluster`` answer: each shard's (leader id, term), and the longest a leader had not
    heard from each of its followers (seconds, by follower id)."""

    at: float
    phase: str
    leaders: dict[str, tuple[str | None, int | None]]
    silence: dict[str, float]


@dataclass(frozen=True)
class LeaderChange:
    at: float
    phase: str
    shard: str
    before: str | None
    after: str | None
    term: int | None


def leader_changes(samples: Sequence[ClusterSample]) -> list[LeaderChange]:
    """Every time a shard's leader or its term differs from the last sample that named a leader.

    Samples without a leader (an election under way, or no answer) are skipped: a
    change is reported once the next leader is seen, even if it is the same one in
    a new term.
    """
    known: dict[str, tuple[str | None, int | None]] = {}
    changes = []
    for sample in samples:
        for shard, (leader, term) in sample.leaders.items():
            if leader is None:
                continue
            previous = known.get(shard)
            if previous is not None and previous != (leader, term):
                changes.append(LeaderChange(sample.at, sample.phase, shard, previous[0], leader, term))
            known[shard] = (leader, term)
    return changes


@dataclass(frozen=True)
class SnapshotWrite:
    """A snapshot file written by ``replica``: first seen being written, renamed into place (wall clock)."""

    replica: str
    phase: str
    began: float
    ended: float
    size: int

    @property
    def seconds(self) -> float:
        return max(self.ended - self.began, 0.0)


@dataclass
class SnapshotLog:
    """Snapshot writes, from successive looks at one replica's files; the caller does the looking."""

    writes: list[SnapshotWrite] = field(default_factory=list)
    _writing_since: dict[str, float] = field(default_factory=dict)
    _mtime: dict[str, float] = field(default_factory=dict)

    def see(self, replica: str, phase: str, now: float, writing: bool, mtime: float | None, size: int) -> None:
        """One look at ``replica`` at ``now``: whether its temporary snapshot file exists, and the
        snapshot's mtime (``None``: no snapshot yet) and size. The first look only records the mtime; a
        changed mtime is a write, begun when the temporary file was first seen (or at the mtime, when a
        write was too quick to be seen)."""
        if writing:
            self._writing_since.setdefault(replica, now)
        if replica not in self._mtime:
            self._mtime[replica] = mtime or 0.0
            return
        if mtime is not None and mtime != self._mtime[replica] and not writing:
            began = self._writing_since.pop(replica, mtime)
            self.writes.append(SnapshotWrite(replica, phase, min(began, mtime), mtime, size))
            self._mtime[replica] = mtime

    def written_since(self, replica: str, since: float) -> bool:
        return any(w.replica == replica and w.ended >= since for w in self.writes)


def blame_margin(timings: RaftTimings) -> float:
    """How long after a snapshot write a leader change it caused may be seen: a follower's election timeout,
    then up to one poll interval and the poll's own timeout (2 s) before the answer that shows it."""
    return timings.election_max + CLUSTER_POLL_S + 2.0


def caused_by_snapshot(
    change: LeaderChange, writes: Sequence[SnapshotWrite], shard_of: dict[str, str], margin: float
) -> bool:
    """Whether ``change`` came within ``margin`` seconds of a snapshot write by a replica of its shard."""
    return any(
        shard_of.get(w.replica) == change.shard and w.began - margin <= change.at <= w.ended + margin for w in writes
    )


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    met: bool | None  # None: not measured


def verdicts(report: dict[str, Any]) -> list[Verdict]:
    """The issue's targets against ``report`` (the JSON this module writes)."""
    load = report["load"]
    rate = load["docs_per_s"]
    changes = report["leader_changes_from_snapshots"]
    counted = sum(c.get("phase") != "restart all" for c in report["leader_changes"])
    one, whole = report.get("restart_one"), report.get("restart_all")
    p50_1k, p50_n = report["reads"]["1k"]["p50_ms"], report["reads"]["n"]["p50_ms"]
    out = [
        Verdict(f"load >= {LOAD_TARGET:,.0f} docs/s", f"{rate:,.0f} docs/s", rate >= LOAD_TARGET),
        Verdict(
            "no leader change caused by snapshots",
            f"{changes} of {counted} leader changes; {len(report['snapshots'])} snapshots seen",
            None if not report["snapshots"] else changes == 0,
        ),
    ]
    for name, restart, key in (("one replica", one, "to_serving_s"), ("whole cluster", whole, "to_serving_s")):
        seconds = None if restart is None else restart[key]
        out.append(
            Verdict(
                f"restart ({name}) to serving <= {RESTART_TARGET_S:.0f} s",
                "did not serve" if seconds is None else f"{seconds:.1f} s",
                None if restart is None else seconds is not None and seconds <= RESTART_TARGET_S,
            )
        )
    out.append(
        Verdict(
            "key-read p50 at N <= 1.2 x p50 at 1 K",
            f"{p50_n:.2f} ms vs {p50_1k:.2f} ms ({p50_n / p50_1k:.2f}x)" if p50_1k else "no reads at 1 K",
            p50_n <= READ_P50_SLACK * p50_1k if p50_1k else None,
        )
    )
    return out


def format_verdicts(rows: Sequence[Verdict]) -> str:
    width = max(len(v.target) for v in rows)
    lines = [f"{'target':<{width}}  {'measured':<44}  result"]
    for v in rows:
        result = "n/a" if v.met is None else "PASS" if v.met else "MISS"
        lines.append(f"{v.target:<{width}}  {v.measured:<44}  {result}")
    return "\n".join(lines)


# -- watching the cluster ----------------------------------------------------------


class Watch(threading.Thread):
    """Calls ``look`` every ``interval`` seconds on its own thread until ``stop``; ``phase`` labels what it sees."""

    def __init__(self, interval: float) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.phase = "start"
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.look()

    def look(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopping.set()
        self.join()


class LeaderWatch(Watch):
    """``/_admin/cluster`` every ``CLUSTER_POLL_S``, signed as a cluster member; keeps every answer as a sample."""

    def __init__(self, config: ClusterConfig) -> None:
        super().__init__(CLUSTER_POLL_S)
        self.config = config
        self.key = internal_key(config.secret)
        self.samples: list[ClusterSample] = []
        self.last: dict[str, Any] = {}
        self._ids = {r.raft: r.id for s in config.shards for r in s.replicas}

    def look(self) -> None:
        url = f"{self.config.dispatcher(None).http_url}/_admin/cluster"
        try:
            code, body = http_json("GET", url, timeout=2.0, key=self.key, ca=self.config.ca)
        except OSError:
            return
        if code != 200:
            return
        self.last = body
        leaders: dict[str, tuple[str | None, int | None]] = {}
        silence: dict[str, float] = {}
        for shard in body["shards"]:
            leader = next((r for r in shard["replicas"] if r["id"] == shard["leader"]), None)
            leaders[shard["id"]] = (shard["leader"], None if leader is None else leader.get("term"))
            for address, age in ((leader or {}).get("last_response_age") or {}).items():
                silence[self._ids.get(address, address)] = age
        self.samples.append(ClusterSample(time.time(), self.phase, leaders, silence))

    def documents(self) -> dict[str, int]:
        """Documents per shard in the newest answer."""
        return {s["id"]: s["documents"] or 0 for s in self.last.get("shards", [])}

    def follower_of(self, shard: str) -> str:
        entry = next(s for s in self.last["shards"] if s["id"] == shard)
        follower: str = next(r["id"] for r in entry["replicas"] if r["id"] != entry["leader"])
        return follower


class SnapshotWatch(Watch):
    """Each replica's data directory every ``SNAPSHOT_POLL_S``, into a ``SnapshotLog``."""

    def __init__(self, config: ClusterConfig) -> None:
        super().__init__(SNAPSHOT_POLL_S)
        self.dirs = {r.id: r.data_dir for s in config.shards for r in s.replicas}
        self.log = SnapshotLog()

    def look(self) -> None:
        for replica, folder in self.dirs.items():
            writing = (folder / SNAPSHOT_TMP).exists()
            try:
                stat = (folder / SNAPSHOT_FILE).stat()
                mtime, size = stat.st_mtime, stat.st_size
            except OSError:
                mtime, size = None, 0
            self.log.see(replica, self.phase, time.time(), writing, mtime, size)


# -- the phases --------------------------------------------------------------------


def rss_kib(pid: int) -> int | None:
    """Resident memory of ``pid`` in KiB, or ``None`` if it is gone."""
    try:
        return parse_vm_rss(Path(f"/proc/{pid}/status").read_text())
    except (OSError, ValueError):
        return None


def process_rss(cluster: UpCluster) -> dict[str, int | None]:
    return {name: rss_kib(p.pid) for name, p in cluster.processes.processes.items()}


def process_cpu(cluster: UpCluster) -> dict[str, CpuTimes]:
    """CPU times of each cluster process by name, and of this process (the loader) as ``bench``."""
    by_pid = {p.pid: name for name, p in cluster.processes.processes.items()}
    times = cpu_times(by_pid)
    found = {by_pid[pid]: t for pid, t in times.items() if pid in by_pid}
    found["bench"] = parse_stat(Path("/proc/self/stat").read_text()).times
    return found


def read_keys(cluster: UpCluster, first: int, last: int, args: argparse.Namespace) -> dict[str, Any]:
    """``wrk``: ``get_user?id=K`` with ``leader`` consistency, K uniform in [first, last]; its result, with the
    cores the whole machine and the cluster were busy meanwhile (other users of the machine skew latency)."""
    script_args = ["get", "leader", str(first), str(last)]
    cpu_before, busy_before = process_cpu(cluster), machine_busy_s()
    result = run_wrk("docraft", cluster.url, args.connections, args.duration, script_args)
    cluster_s = sum((t - cpu_before.get(name, CpuTimes())).total_s for name, t in process_cpu(cluster).items())
    busy = machine_busy_s() - busy_before
    print(
        f"key reads over ids {first}-{last}: {result.ops_per_s:,.0f}/s  p50 {result.p50_ms:.2f} ms  "
        f"p99 {result.p99_ms:.2f} ms  errors {result.error_count}  (machine busy {busy / result.seconds:.2f} "
        f"cores, the cluster {cluster_s / result.seconds:.2f}: "
        f"{cluster_s * 1e3 / max(result.ops_per_s * result.seconds, 1):.2f} ms of its CPU per read)",
        flush=True,
    )
    return {
        **asdict(result),
        "ops_per_s": round(result.ops_per_s),
        "error_count": result.error_count,
        "cores_machine": round(busy / result.seconds, 2),
        "cores_cluster": round(cluster_s / result.seconds, 2),
        "cluster_cpu_ms_per_read": round(cluster_s * 1e3 / (result.ops_per_s * result.seconds), 3)
        if result.ops_per_s
        else None,
    }


def load_users(cluster: UpCluster, chunks: list[tuple[Path, int]], args: argparse.Namespace) -> dict[str, Any]:
    """Load every chunk, ``args.workers`` at a time; rates, rejections and each process's cores while loading."""
    user = load_app(APP).model("User")
    done: list[tuple[float, int]] = []
    rejected: list[str] = []
    lock = threading.Lock()

    def load(chunk: tuple[Path, int]) -> None:
        report = load_csv(chunk[0], user, cluster.url, args.batch, progress=False, token=cluster.token)
        with lock:
            done.append((time.monotonic(), report.stored))
            rejected.extend(f"{chunk[0].name}: {line}" for line in report.summary(3).splitlines()[1:])
            if len(done) % max(len(chunks) // 10, 1) == 0:
                print(f"  loaded {sum(n for _, n in done):,} documents", flush=True)

    cpu_before, busy_before = process_cpu(cluster), machine_busy_s()
    started = time.monotonic()
    with ThreadPoolExecutor(args.workers) as pool:
        list(pool.map(load, chunks))
    seconds = time.monotonic() - started
    cpu_after, busy = process_cpu(cluster), machine_busy_s() - busy_before
    used = {name: (t - cpu_before.get(name, CpuTimes())).total_s for name, t in cpu_after.items()}
    cores = {name: round(s / seconds, 2) for name, s in used.items()}
    stored = sum(n for _, n in done)
    return {
        "docs": stored,
        "seconds": round(seconds, 2),
        "docs_per_s": stored / seconds,
        "blocks": [{"docs": n, "docs_per_s": round(r)} for n, r in block_rates(done, started, args.block)],
        "rejected": rejected[:20],
        "cores_by_process": cores,
        "cpu_us_per_doc": {name: round(s * 1e6 / stored) for name, s in used.items()} if stored else {},
        "cores_machine": round(busy / seconds, 2),
        "cores_outside_cluster": round(busy / seconds - sum(cores.values()), 2),
    }


def replica_status(config: ClusterConfig, replica_id: str, key: bytes) -> dict[str, Any] | None:
    try:
        code, body = http_json(
            "GET", f"{config.replica(replica_id).http_url}/_shard/status", timeout=2.0, key=key, ca=config.ca
        )
    except OSError:
        return None
    return body if code == 200 else None


def caught_up(config: ClusterConfig, replica_id: str, key: bytes) -> bool:
    """Whether ``replica_id`` has applied its group leader's commit index (asked of the leader just now)."""
    own = replica_status(config, replica_id, key)
    if own is None or own.get("fault") is not None:
        return False
    shard = config.shard(config.replica(replica_id).shard)
    for other in shard.replicas:
        status = own if other.id == replica_id else replica_status(config, other.id, key)
        if status is not None and status.get("role") == "leader":
            return bool(own["applied_index"] >= status["commit_index"])
    return False


def wait_for(condition: Any, timeout: float, interval: float = 0.1) -> float | None:
    """Seconds until ``condition()`` held, or ``None`` if it did not within ``timeout``."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if condition():
            return time.monotonic() - began
        time.sleep(interval)
    return None


def restart_one(cluster: UpCluster, replica_id: str, timeout: float) -> dict[str, Any]:
    """SIGTERM ``replica_id``, start it again, wait until it has applied its leader's commit index."""
    local, key = cluster.processes, internal_key(cluster.processes.config.secret)
    began = time.monotonic()
    process = local.processes[replica_id]
    process.terminate()
    process.wait(timeout)
    stopped = time.monotonic()
    local.start_replica(replica_id)
    serving = wait_for(lambda: caught_up(local.config, replica_id, key), timeout)
    return {
        "replica": replica_id,
        "stop_s": round(stopped - began, 2),
        "start_to_serving_s": None if serving is None else round(serving, 2),
        "to_serving_s": None if serving is None else round(stopped - began + serving, 2),
    }


def user_readable(url: str, uid: int) -> bool:
    try:
        code, body = http_json("GET", f"{url}/get_user?id={uid}", timeout=2.0)
    except (OSError, ValueError):
        return False
    return code == 200 and any(item.get("id") == uid for item in body.get("items", []))


def restart_all(cluster: UpCluster, probe: int, timeout: float) -> dict[str, Any]:
    """Stop every process, start them all, wait until user ``probe`` reads through the dispatcher,
    then until every replica has applied its leader's commit index."""
    local, key = cluster.processes, internal_key(cluster.processes.config.secret)
    began = time.monotonic()
    local.stop(timeout)
    stopped = time.monotonic()
    local.start_all()
    serving = wait_for(lambda: user_readable(cluster.url, probe), timeout)
    replicas = [r.id for s in local.config.shards for r in s.replicas]
    every = wait_for(lambda: all(caught_up(local.config, r, key) for r in replicas), timeout)
    return {
        "stop_s": round(stopped - began, 2),
        "start_to_serving_s": None if serving is None else round(serving, 2),
        "to_serving_s": None if serving is None else round(stopped - began + serving, 2),
        "start_to_all_caught_up_s": None if every is None or serving is None else round(serving + every, 2),
    }


def memory(before: dict[str, int | None], after: dict[str, int | None], docs: dict[str, int]) -> dict[str, Any]:
    """Each process's RSS (MiB) before and after, and a replica's growth per document of its shard (bytes)."""
    out: dict[str, Any] = {}
    for name, kib in after.items():
        start = before.get(name)
        shard_docs = next((n for shard, n in docs.items() if name.startswith(shard + "r")), 0)
        growth = None if kib is None or start is None else (kib - start) * 1024
        out[name] = {
            "before_mib": None if start is None else round(start / 1024, 1),
            "after_mib": None if kib is None else round(kib / 1024, 1),
            "bytes_per_doc": round(growth / shard_docs) if growth is not None and shard_docs else None,
        }
    return out


def wait_for_snapshots(watch: SnapshotWatch, since: float, seconds: float) -> None:
    """Until every replica wrote a snapshot after ``since`` (wall clock), for at most ``seconds``; then
    ``SETTLE_S`` more, a window in which the leader watch sees what the snapshots caused."""
    wait_for(lambda: all(watch.log.written_since(r, since) for r in watch.dirs), seconds, interval=0.5)
    time.sleep(SETTLE_S)  # a measuring window, not a wait for something to happen


def longest_silence(samples: Sequence[ClusterSample]) -> dict[str, float]:
    """By phase, the longest any leader had not heard from one of its followers."""
    longest: dict[str, float] = {}
    for sample in samples:
        longest[sample.phase] = max(longest.get(sample.phase, 0.0), *sample.silence.values(), 0.0)
    return longest


def log_lines(log_dir: Path, needle: str) -> dict[str, int]:
    """How many lines of each process log in ``log_dir`` hold ``needle`` (only logs that have any)."""
    counts = {}
    for path in sorted(log_dir.glob("*.log")):
        found = sum(needle in line for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
        if found:
            counts[path.stem] = found
    return counts


def measure(cluster: UpCluster, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Every phase on a started cluster; the report as ``--json`` writes it."""
    config = cluster.processes.config
    timings = config.timings
    chunks = write_chunks(folder / "users", FIRST_ID, args.docs, args.chunk)
    leaders, snapshots = LeaderWatch(config), SnapshotWatch(config)
    leaders.start()
    snapshots.start()
    report: dict[str, Any] = {"docs": args.docs, "workers": args.workers, "batch": args.batch}
    try:
        sample_last = make_sample.FIRST_ID + make_sample.COUNT - 1
        reads_1k = read_keys(cluster, make_sample.FIRST_ID, sample_last, args)
        rss_before = process_rss(cluster)
        leaders.phase = snapshots.phase = "load"
        report["load"] = load_users(cluster, chunks, args)
        load_ended = time.time()
        leaders.phase = snapshots.phase = "after load"
        reads_n = read_keys(cluster, FIRST_ID, FIRST_ID + args.docs - 1, args)
        report["reads"] = {"1k": reads_1k, "n": reads_n}
        leaders.look()  # document counts now
        report["memory"] = memory(rss_before, process_rss(cluster), leaders.documents())
        report["documents"] = leaders.documents()
        if args.snapshot_wait > 0:
            print(f"waiting up to {args.snapshot_wait:.0f} s for every replica to write a snapshot", flush=True)
            wait_for_snapshots(snapshots, load_ended, args.snapshot_wait)
        leaders.phase = snapshots.phase = "restart one"
        report["restart_one"] = restart_one(cluster, leaders.follower_of("s0"), args.restart_timeout)
        leaders.phase = snapshots.phase = "restart all"
        report["restart_all"] = restart_all(cluster, FIRST_ID + args.docs // 2, args.restart_timeout)
        report["memory_after_restart_mib"] = {
            k: None if v is None else round(v / 1024, 1) for k, v in process_rss(cluster).items()
        }
    finally:
        leaders.stop()
        snapshots.stop()
    shard_of = {r.id: s.id for s in config.shards for r in s.replicas}
    changes = leader_changes(leaders.samples)
    margin = blame_margin(timings)
    report["leader_changes"] = [asdict(c) for c in changes]
    report["leader_changes_from_snapshots"] = sum(
        caused_by_snapshot(c, snapshots.log.writes, shard_of, margin) for c in changes if c.phase != "restart all"
    )
    report["snapshots"] = [{**asdict(w), "seconds": round(w.seconds, 2)} for w in snapshots.log.writes]
    report["longest_follower_silence_s"] = longest_silence(leaders.samples)
    report["no_snapshot_on_stop"] = log_lines(cluster.processes.log_dir, NO_SNAPSHOT_ON_STOP)
    report["election_timeout_s"] = [timings.election_min, timings.election_max]
    return report


def print_report(report: dict[str, Any]) -> None:
    load = report["load"]
    print(f"\nloaded {load['docs']:,} documents in {load['seconds']:.1f} s: {load['docs_per_s']:,.0f} docs/s")
    print("  per block: " + ", ".join(f"{b['docs_per_s']:,}/s" for b in load["blocks"]))
    print(f"  CPU microseconds per document: {load['cpu_us_per_doc']}")
    print(
        f"  cores while loading: {load['cores_by_process']} (machine {load['cores_machine']}, "
        f"outside the cluster and bench {load['cores_outside_cluster']})"
    )
    for name, m in report["memory"].items():
        print(f"  {name}: RSS {m['before_mib']} -> {m['after_mib']} MiB, {m['bytes_per_doc']} bytes/doc")
    print(f"  RSS after the whole-cluster restart (MiB): {report.get('memory_after_restart_mib')}")
    for w in report["snapshots"]:
        print(f"  snapshot {w['replica']} ({w['phase']}): {w['seconds']:.2f} s writing, {w['size'] / 1e6:.1f} MB")
    if not report["snapshots"]:
        print("  no snapshot was written")
    for c in report["leader_changes"]:
        print(f"  leader change {c['shard']} ({c['phase']}): {c['before']} -> {c['after']} term {c['term']}")
    print(
        f"  longest a leader did not hear from a follower, by phase (s): {report['longest_follower_silence_s']} "
        f"(election timeout {report['election_timeout_s']})"
    )
    print(f"  restart one: {report.get('restart_one')}\n  restart all: {report.get('restart_all')}")
    print(f"  replicas that stopped without a snapshot ('{NO_SNAPSHOT_ON_STOP}'): {report['no_snapshot_on_stop']}\n")
    print(format_verdicts(verdicts(report)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000, help="users to load")
    parser.add_argument("--workers", type=int, default=4, help="bulk requests in flight at once")
    parser.add_argument("--batch", type=int, default=1000, help="documents per bulk request")
    parser.add_argument("--chunk", type=int, default=10_000, help="rows per CSV file (one load_csv call)")
    parser.add_argument("--block", type=int, default=100_000, help="report the load rate per this many documents")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections for key reads")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of key reads at 1 K and at N")
    parser.add_argument("--snapshot-wait", type=float, default=330.0, help="most seconds to wait for snapshots")
    parser.add_argument("--restart-timeout", type=float, default=120.0)
    parser.add_argument("--json", help="also write the report to this file")
    args = parser.parse_args(argv)
    missing = missing_tool("wrk", "wrk")
    if missing is not None:
        print(f"bench.scale_data: {missing}", file=sys.stderr)
        return 1
    stop_clusters_on_sigterm()
    folder = Path(tempfile.mkdtemp(prefix="docraft-scale-data-"))
    cluster = UpCluster(folder / "cluster")
    try:
        cluster.start()
        print(f"cluster in {folder}; {os.cpu_count()} cores", flush=True)
        report = measure(cluster, args, folder)
    finally:
        cluster.close()
    print_report(report)
    if args.json:
        Path(args.json).write_text(ujson.dumps(report, indent=2))
    failed = any(r["error_count"] for r in report["reads"].values()) or report["load"]["rejected"]
    return 1 if failed or report["restart_all"]["to_serving_s"] is None else 0


if __name__ == "__main__":
    sys.exit(main())
