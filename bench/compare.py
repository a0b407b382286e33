"""docraft next to etcd on this machine, in one run, driven by the same compiled load generator.

    python -m bench.compare                          # both systems, 10 s a phase, 32 connections
    python -m bench.compare --duration 3 --json out.json
    python -m bench.compare --only docraft           # or --only etcd

Starts a ``docraft up``-shaped cluster (``bench.up_cluster``: 2 shards x 3
replicas and a dispatcher, its defaults, the sample users loaded, clients
sending the admin token) and runs every docraft phase; then stops it, starts a
3-member etcd (``bench.etcd_cluster``, authentication on, the same sample users
stored as ``users/<id>``) and runs every etcd phase. Each phase is one ``wrk``
run with a script from ``bench/wrk/``: writes of new users (docraft
``insert_user`` through the dispatcher; etcd ``/v3/kv/put`` through its HTTP
gateway on one member), reads of sample users by key at each consistency
level (docraft stale, leader, linearizable; etcd serializable and
linearizable range), docraft's scatter query (``get_user?country=...&limit=10``),
and writes and key reads on one connection for latency. docraft's key writes
and leader key reads are also measured as a client that routes by itself
sends them (``bench.direct``): straight to the leader of the key's group,
one ``wrk`` per leader, the connections split between them (the dispatcher
path stays the headline). Around each phase the
CPU time (user + system, from ``/proc``) of every process of the system under
test is read, so each phase reports CPU milliseconds per operation and the
system (kernel) share; the cores each system uses idle, before its first phase,
are reported too. Prints a table of both systems with ratios
(docraft / etcd) and, with ``--json``, writes every figure. Without the
``etcd`` binary it measures docraft alone and says why; without ``wrk`` it
measures nothing. Exits 1 if any request failed (non-2xx, timeout, socket error).
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ujson

from bench import direct
from bench.etcd_cluster import EtcdCluster
from bench.proc_cpu import CpuTimes, cpu_times, machine_busy_s, spent
from bench.up_cluster import APP, UpCluster, stop_clusters_on_sigterm
from bench.wrk_load import LoadResult, missing_tool, run_wrk, wrk_threads
from query.app import load_app

SYSTEMS = ("docraft", "etcd")
IDLE_SECONDS = 2.0
# New ids per write phase, beyond the sample's.
FIRST_IDS = {
    "write": 1_000_000_000,
    "write_1c": 2_000_000_000,
    "write_direct": 3_000_000_000,
    "write_1c_direct": 4_000_000_000,
}


@dataclass(frozen=True)
class Phase:
    """One wrk run: ``script_args`` go to the system's Lua script; ``single`` runs it on one connection."""

    name: str
    script_args: tuple[str, ...]
    single: bool = False


@dataclass(frozen=True)
class Measured:
    """A phase's load result with the CPU the system under test spent during it."""

    load: LoadResult
    cpu: CpuTimes
    machine_busy_s: float

    @property
    def cpu_ms_per_op(self) -> float | None:
        ops = self.load.ops_per_s * self.load.seconds
        return self.cpu.total_s * 1e3 / ops if ops else None

    def as_json(self) -> dict[str, Any]:
        seconds = self.load.seconds or 1.0
        return {
            "connections": self.load.connections,
            "requests": self.load.requests,
            "seconds": round(self.load.seconds, 3),
            "ops_per_s": round(self.load.ops_per_s, 1),
            "errors": self.load.errors,
            "p50_ms": round(self.load.p50_ms, 3),
            "p99_ms": round(self.load.p99_ms, 3),
            "mean_ms": round(self.load.mean_ms, 3),
            "cpu_user_s": round(self.cpu.user_s, 3),
            "cpu_system_s": round(self.cpu.system_s, 3),
            "cpu_ms_per_op": None if self.cpu_ms_per_op is None else round(self.cpu_ms_per_op, 4),
            "system_share": round(self.cpu.system_share, 3),
            "cores_used": round(self.cpu.total_s / seconds, 2),
            "machine_busy_cores": round(self.machine_busy_s / seconds, 2),
        }


@dataclass(frozen=True)
class Row:
    """A table line: ``metric`` of docraft's phase ``docraft`` next to etcd's phase ``etcd``."""

    figure: str
    docraft: str
    etcd: str
    metric: str


def rows_for(connections: int) -> list[Row]:
    """The table's lines. etcd has no lease reads: docraft's leader reads stand next to its serializable ones."""
    n = connections
    return [
        Row(f"writes/s, {n} connections", "write", "write", "ops_per_s"),
        Row(f"key reads/s, {n} conn., stale | serializable", "read_stale", "read_serializable", "ops_per_s"),
        Row(f"key reads/s, {n} conn., leader | serializable", "read_leader", "read_serializable", "ops_per_s"),
        Row(
            f"key reads/s, {n} conn., linearizable | linearizable",
            "read_linearizable",
            "read_linearizable",
            "ops_per_s",
        ),
        Row(f"scatter reads/s, {n} conn. | serializable key reads", "scatter", "read_serializable", "ops_per_s"),
        Row("write p50 ms, 1 connection", "write_1c", "write_1c", "p50_ms"),
        Row("write p99 ms, 1 connection", "write_1c", "write_1c", "p99_ms"),
        Row("key read p50 ms, 1 conn., leader | serializable", "read_1c", "read_1c", "p50_ms"),
        Row("key read p99 ms, 1 conn., leader | serializable", "read_1c", "read_1c", "p99_ms"),
        Row(f"writes/s, {n} conn., client routes itself", "write_direct", "write", "ops_per_s"),
        Row(
            f"key reads/s, {n} conn., leader, client routes itself | serializable",
            "read_leader_direct",
            "read_serializable",
            "ops_per_s",
        ),
        Row("write p50 ms, 1 conn., client routes itself", "write_1c_direct", "write_1c", "p50_ms"),
        Row(
            "key read p50 ms, 1 conn., leader, client routes itself | serializable",
            "read_1c_direct",
            "read_1c",
            "p50_ms",
        ),
        Row(f"CPU ms per write, all processes, {n} conn.", "write", "write", "cpu_ms_per_op"),
        Row("  system-time share of it", "write", "write", "system_share"),
        Row(f"CPU ms per write, {n} conn., client routes itself", "write_direct", "write", "cpu_ms_per_op"),
        Row(
            f"CPU ms per key read, {n} conn., leader | serializable",
            "read_leader",
            "read_serializable",
            "cpu_ms_per_op",
        ),
        Row("  system-time share of it", "read_leader", "read_serializable", "system_share"),
    ]


def docraft_phases(lo: int, hi: int, countries: Sequence[str]) -> list[Phase]:
    keys = (str(lo), str(hi))
    return [
        Phase("write", ("insert", str(FIRST_IDS["write"]))),
        Phase("write_1c", ("insert", str(FIRST_IDS["write_1c"])), single=True),
        Phase("read_stale", ("get", "stale", *keys)),
        Phase("read_leader", ("get", "leader", *keys)),
        Phase("read_linearizable", ("get", "linearizable", *keys)),
        Phase("read_1c", ("get", "leader", *keys), single=True),
        Phase("scatter", ("scatter", "leader", *countries)),
    ]


def etcd_phases(lo: int, hi: int) -> list[Phase]:
    keys = (str(lo), str(hi))
    return [
        Phase("write", ("put", str(FIRST_IDS["write"]))),
        Phase("write_1c", ("put", str(FIRST_IDS["write_1c"])), single=True),
        Phase("read_serializable", ("range", "serializable", *keys)),
        Phase("read_linearizable", ("range", "linearizable", *keys)),
        Phase("read_1c", ("range", "serializable", *keys), single=True),
    ]


def metric_value(measured: Measured, metric: str) -> float | None:
    if metric == "cpu_ms_per_op":
        return measured.cpu_ms_per_op
    if metric == "system_share":
        return measured.cpu.system_share
    value: float = getattr(measured.load, metric)
    return value


def format_value(value: float | None, metric: str) -> str:
    """A figure as the table shows it: whole ops/s with thousands separators, ms to 2 decimals, shares in %."""
    if value is None:
        return "—"
    if metric == "ops_per_s":
        return f"{value:,.0f}"
    if metric == "system_share":
        return f"{value:.0%}"
    return f"{value:.2f}"


def ratio(docraft: float | None, etcd: float | None) -> float | None:
    """docraft / etcd, or ``None`` when either is missing or etcd's is zero."""
    if docraft is None or etcd is None or etcd == 0:
        return None
    return docraft / etcd


def table(results: dict[str, dict[str, Measured]], connections: int) -> list[dict[str, Any]]:
    """One dict per row: figure, docraft, etcd (``None`` where not measured) and ratio docraft/etcd."""
    lines = []
    for row in rows_for(connections):
        values = {}
        for system, phase in (("docraft", row.docraft), ("etcd", row.etcd)):
            measured = results.get(system, {}).get(phase)
            values[system] = None if measured is None else metric_value(measured, row.metric)
        lines.append({"figure": row.figure, "metric": row.metric, **values, "ratio": ratio(*values.values())})
    return lines


def format_table(lines: list[dict[str, Any]]) -> str:
    """The rows as aligned text, with a header and a note on how to read the ratio."""
    width = max(len(line["figure"]) for line in lines)
    out = [f"{'figure':<{width}}  {'docraft':>10}  {'etcd':>10}  {'docraft/etcd':>12}"]
    for line in lines:
        metric = line["metric"]
        share = line["ratio"] is None or metric == "system_share"
        shown = "—" if share else f"{line['ratio']:.2f}"
        docraft, etcd = format_value(line["docraft"], metric), format_value(line["etcd"], metric)
        out.append(f"{line['figure']:<{width}}  {docraft:>10}  {etcd:>10}  {shown:>12}")
    out.append("docraft/etcd above 1: docraft does more per second, or takes longer / more CPU per operation.")
    return "\n".join(out)


def measure(system: str, name: str, pids: list[int], run: Callable[[], LoadResult]) -> Measured:
    """Run the load ``run`` of ``system``'s phase ``name``, reading the CPU times of ``pids`` (and their
    children) around it."""
    cpu_before, busy_before = cpu_times(pids), machine_busy_s()
    load = run()
    measured = Measured(load, spent(cpu_before, cpu_times(pids)), machine_busy_s() - busy_before)
    facts = measured.as_json()
    print(
        f"  {system} {name:<18} {facts['ops_per_s']:>9,.0f} ops/s  p50 {load.p50_ms:7.2f} ms  "
        f"p99 {load.p99_ms:7.2f} ms  errors {load.error_count}  CPU {facts['cpu_ms_per_op']} ms/op "
        f"(system {facts['system_share']:.0%}, {facts['cores_used']} cores; "
        f"machine busy {facts['machine_busy_cores']} cores)",
        flush=True,
    )
    return measured


def measure_phase(
    script: str, url: str, authorization: str, pids: list[int], phase: Phase, args: argparse.Namespace
) -> Measured:
    """Run ``phase`` against ``url`` with ``script`` (``measure``)."""
    connections = 1 if phase.single else args.connections
    run = functools.partial(run_wrk, script, url, connections, args.duration, phase.script_args, authorization)
    return measure(script, phase.name, pids, run)


def direct_loads(
    routes: list[direct.Route], users: list[dict[str, Any]], keys_dir: Path, args: argparse.Namespace
) -> dict[str, list[tuple[str, int, tuple[str, ...]]]]:
    """The phases of a client that routes by itself (``bench.direct``): each a ``(leader url, connections,
    script args)`` per leader it loads; the one-connection phases load the first group's leader alone."""
    ids = [user["id"] for user in users]
    write_ids = int(direct.WRITE_IDS_PER_SECOND * args.duration) + 1_000
    loads: dict[str, list[tuple[str, int, tuple[str, ...]]]] = {"write_direct": [], "read_leader_direct": []}
    for route, connections in zip(routes, direct.split(args.connections, len(routes)), strict=True):
        new = direct.owned(route, itertools.count(FIRST_IDS["write_direct"]), write_ids)
        writes = direct.write_keys(keys_dir / f"write-{route.shard}.txt", new)
        reads = direct.write_keys(keys_dir / f"read-{route.shard}.txt", direct.owned(route, ids))
        loads["write_direct"].append((route.url, connections, direct.insert_args(writes, connections)))
        loads["read_leader_direct"].append((route.url, connections, direct.get_args("leader", reads)))
    first = routes[0]
    new = direct.owned(first, itertools.count(FIRST_IDS["write_1c_direct"]), write_ids)
    writes = direct.write_keys(keys_dir / "write-1c.txt", new)
    loads["write_1c_direct"] = [(first.url, 1, direct.insert_args(writes, 1))]
    loads["read_1c_direct"] = [(first.url, 1, direct.get_args("leader", keys_dir / f"read-{first.shard}.txt"))]
    return loads


def idle_cores(pids: list[int], seconds: float) -> float:
    """Cores the processes ``pids`` use with no client at all (timers, heartbeats), over ``seconds``."""
    before = cpu_times(pids)
    time.sleep(seconds)  # a measuring window, not a wait for something to happen
    return spent(before, cpu_times(pids)).total_s / seconds


def sample_users() -> list[dict[str, Any]]:
    """The example app's sample users, as ``docraft up`` loads them (ids as integers)."""
    app = load_app(APP)
    with open(app.sample_data["User"], encoding="utf-8", newline="") as sample:
        return [{**row, "id": int(row["id"])} for row in csv.DictReader(sample)]


def run_docraft(root: Path, users: list[dict[str, Any]], args: argparse.Namespace) -> tuple[dict[str, Measured], float]:
    """docraft's phases, and the cores its processes used while idle before them."""
    ids = [user["id"] for user in users]
    countries = sorted({user["country"] for user in users})
    cluster = UpCluster(root / "docraft")
    try:
        cluster.start()
        idle = idle_cores(cluster.pids, IDLE_SECONDS)
        print(f"docraft: {cluster.url}, 2 shards x 3 replicas, {len(users)} sample users, clients send a token")
        print(f"  docraft idle: {idle:.2f} cores", flush=True)
        auth = f"Bearer {cluster.token}"
        phases = docraft_phases(min(ids), max(ids), countries)
        results = {p.name: measure_phase("docraft", cluster.url, auth, cluster.pids, p, args) for p in phases}
        routes = direct.routes(cluster.processes.config, cluster.processes.wait_ready())
        print(f"  client routes itself: {', '.join(f'{r.shard} -> {r.url}' for r in routes)}", flush=True)
        keys_dir = root / "direct-keys"
        keys_dir.mkdir(exist_ok=True)
        for name, loads in direct_loads(routes, users, keys_dir, args).items():
            run = functools.partial(direct.run_routes, loads, args.duration, auth)
            results[name] = measure("docraft", name, cluster.pids, run)
        return results, idle
    finally:
        cluster.close()


def run_etcd(
    root: Path, users: list[dict[str, Any]], args: argparse.Namespace
) -> tuple[dict[str, Measured], float, bool]:
    """etcd's phases, the cores its members used while idle, and whether the member the load went to led."""
    ids = [user["id"] for user in users]
    cluster = EtcdCluster(root / "etcd")
    try:
        cluster.start()
        token = cluster.enable_auth()
        cluster.put_all((f"users/{user['id']}", ujson.dumps(user)) for user in users)
        leader = cluster.is_leader()
        role = "the leader" if leader else "a follower"
        idle = idle_cores(cluster.pids, IDLE_SECONDS)
        print(f"etcd: {cluster.url} ({role} of 3 members), {len(users)} sample users, auth on")
        print(f"  etcd idle: {idle:.2f} cores", flush=True)
        phases = etcd_phases(min(ids), max(ids))
        return {p.name: measure_phase("etcd", cluster.url, token, cluster.pids, p, args) for p in phases}, idle, leader
    finally:
        cluster.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default 10)")
    parser.add_argument("--connections", type=int, default=32, help="connections of the throughput phases")
    parser.add_argument("--only", choices=SYSTEMS, help="measure one system")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.connections < 1:
        parser.error("--duration must be positive and --connections at least 1")

    wrk_missing = missing_tool("wrk", "wrk")
    if wrk_missing:
        print(f"cannot measure anything: {wrk_missing}", file=sys.stderr)
        return 2
    etcd_missing = missing_tool("etcd", "etcd-server")
    if args.only == "etcd" and etcd_missing:
        print(f"cannot measure etcd: {etcd_missing}", file=sys.stderr)
        return 2

    stop_clusters_on_sigterm()
    users = sample_users()
    root = Path(tempfile.mkdtemp(prefix="docraft-compare-"))
    results: dict[str, dict[str, Measured]] = {}
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": args.duration,
        "connections": args.connections,
        "cores": os.cpu_count(),
        "wrk_threads": wrk_threads(args.connections),
    }
    kept = False
    try:
        if args.only != "etcd":
            results["docraft"], idle = run_docraft(root, users, args)
            report["docraft"] = {"idle_cores": round(idle, 3)}
        if args.only == "docraft":
            report["etcd"] = {"skipped": "--only docraft"}
        elif etcd_missing:
            print(f"etcd: not measured, docraft's figures alone: {etcd_missing}", flush=True)
            report["etcd"] = {"skipped": etcd_missing}
        else:
            results["etcd"], idle, leader = run_etcd(root, users, args)
            report["etcd"] = {"idle_cores": round(idle, 3), "target_was_leader": leader}
    except Exception:
        kept = True
        print(f"failed; logs and data kept in {root}", file=sys.stderr)
        raise
    finally:
        if not kept:
            shutil.rmtree(root, ignore_errors=True)

    lines = table(results, args.connections)
    print()
    print(format_table(lines))
    if etcd_missing and args.only is None:
        print(f"etcd was not measured: {etcd_missing}")
    for system, phases in results.items():
        report[system]["phases"] = {name: m.as_json() for name, m in phases.items()}
    report["table"] = lines
    if args.json:
        args.json.write_text(ujson.dumps(report, indent=2), encoding="utf-8")
    failed = any(m.load.error_count for phases in results.values() for m in phases.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
