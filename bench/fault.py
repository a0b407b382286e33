"""Fault-injection benchmark: registers and counters under crashes, pauses, partitions, restarts, repairs and lag.

    python -m bench.fault --duration 120 --seed 7
    python -m bench.fault --duration 60 --seed 5 --targets --port 9400
    python -m bench.fault --duration 60 --nemesis kill,restart,lag --compaction-entries 100 --keep
    python -m bench.fault --duration 120 --shards 2 --nemesis kill,pause,restart,reshard

Starts its own cluster (default 1 shard x 3 replicas + a dispatcher, app
``bench.register_app``, a snapshot and journal compaction every
``--compaction-entries`` log entries) and runs two workloads through the
dispatcher while a nemesis (``bench.nemesis``) injects faults, with several
shards each in a shard it picks at random. The register and counter keys are
chosen to span every shard under the cluster file's slot map
(``bench.placement.spread_keys``; with one shard they are 0, 1, ...), and
printed with their shards at the start:

- register clients write, read and compare-and-set integer registers; half
  of them read with ``consistency=leader`` (the default level), the others
  with ``linearizable``, and both kinds of read enter the history checked;
- counter clients (``bench.counters``) increment counters, each increment
  under its own ``Idempotency-Key``, retried under it until answered.

Then it heals everything, sends each increment whose outcome is still
unknown once more under its key, reads every register and counter a last
time and checks:

1. the history of every key is linearizable (``bench.linearizability``);
2. no acknowledged write is lost: no read or cas, the final reads included,
   that began after it completed saw a value it had overwritten for good;
3. no increment was applied twice and none acknowledged was lost: each
   counter ends between the sum of its acknowledged increments and that
   plus the ones whose outcome stayed unknown;
4. the cluster recovers: after healing, a write succeeds within 5 s;
5. every fault ran to its end (a graceful stop exits 0, a repair does not
   time out, a lagging follower catches up; a refused repair is skipped);
6. no client got an answer it should never get under these faults (a 500);
7. the integrity monitor raised no false alarm;
8. no key is held by two shards: each key's slot is owned by exactly one
   group, and every other group's leader refuses a stale read of it
   (``bench.placement.check_placement``).

It also measures, per fault, the time to the next successful write to a key
its shard owned, the time until a newer term's leader was seen in its group
(from every replica's role and term, polled throughout and kept in the
report) and each healed replica's catch-up time (``bench.timings``), and
prints them per kind with their targets; those fail the run only with
``--targets``.

Writes a JSON report (its seconds rounded to milliseconds) and a PNG
timeline (matplotlib), removes its run directory (cluster file, data, logs)
at the end, passed or failed, unless ``--keep`` is given, and exits 1 if
any check fails. With a partition
nemesis each replica gets its own network namespace and address and links
are cut with iptables; that needs root, and without it the partition
nemeses are skipped with a message saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson
from tornado.httpclient import AsyncHTTPClient

from bench.counters import Increment, check_counters, send
from bench.fault_report import plot, rounded, summary
from bench.linearizability import Op, check_history, lost_writes
from bench.nemesis import (
    NEMESES,
    PARTITIONS,
    Fault,
    Harness,
    LeaderWatch,
    Nemesis,
    SnapshotWatch,
    error_code,
    fetch,
    port_offsets,
)
from bench.netns import NetworkUnavailable, why_unavailable
from bench.placement import by_shard, check_placement, owner_of, spread_keys
from bench.ports import free_block
from bench.timings import by_kind, record_failovers, targets

RECOVERY_LIMIT = 5.0
INCREMENT_PATIENCE = 30.0  # seconds a counter client retries one increment before leaving its outcome unknown
RESOLVE_PATIENCE = 10.0  # seconds, after healing, to settle each increment whose outcome is still unknown
# Alerts that would be false under these faults: replicas lose nothing on disk, they only stop, lag or resync.
FALSE_ALARMS = ("divergence", "no_majority", "code_mismatch", "entries_lost", "snapshot_unloadable")


@dataclass
class Run:
    """Everything the workload recorded during one benchmark run; times are seconds since the start."""

    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    increments: list[Increment] = field(default_factory=list)
    # (key, invoke, complete) of each acknowledged write: a register's or a counter's key, which share slots
    writes: list[tuple[int, float, float]] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    completions: list[tuple[float, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # unexpected answers, the first 20 distinct ones

    def now(self) -> float:
        return time.monotonic() - self.started

    def record_error(self, answer: str) -> None:
        if answer in self.errors or len(self.errors) < 20:
            self.errors[answer] += 1


# -- the workload -------------------------------------------------------------------------


def read_level(process: int) -> str:
    """The consistency level register client ``process`` reads with: ``leader`` for odd ones."""
    return "leader" if process % 2 else "linearizable"


async def client(
    process: int, harness: Harness, run: Run, keys: list[int], rng: random.Random, done: asyncio.Event
) -> None:
    """Write, read and cas random registers of ``keys`` until ``done``; every written value is unique."""
    counter = 0
    last_seen: dict[int, int | None] = {}
    level = read_level(process)
    while not done.is_set():
        key = keys[rng.randrange(len(keys))]
        roll = rng.random()
        counter += 1
        value = process * 10_000_000 + counter
        op_value: Any
        post: dict[str, Any] | None  # a mutation's arguments, POSTed; reads are GETs
        if roll < 0.4:
            kind, path, op_value = "write", "/reg_write", value
            post = {"key": key, "value": value}
        elif roll < 0.8:
            kind, path, op_value, post = "read", f"/reg_read?key={key}&consistency={level}", None, None
        else:
            old = last_seen.get(key)
            old = old if old is not None else rng.randrange(1, 10)
            kind, path, op_value = "cas", "/reg_cas", (old, value)
            post = {"key": key, "old": old, "new": value}
        invoke = run.now()
        status, body = await fetch(harness.url + path, timeout=15, post=post)
        complete = run.now()
        outcome, output = classify(kind, status, body)
        label = f"read({level})" if kind == "read" else kind
        run.outcomes[f"{label}:{outcome}"] += 1
        run.completions.append((complete, kind, outcome))
        if outcome == "ok":
            run.ops.append(Op(process, key, kind, op_value, output, invoke, complete))
            last_seen[key] = value if kind == "write" or (kind == "cas" and output == op_value[0]) else output
            if kind != "read":
                run.writes.append((key, invoke, complete))
        elif outcome != "fail" and kind != "read":
            run.ops.append(Op(process, key, kind, op_value, None, invoke, None))
        if outcome == "error":
            run.record_error(f"{kind} {status}: {body[:300].decode(errors='replace')}")


async def counter_client(
    process: int, harness: Harness, run: Run, counters: list[int], rng: random.Random, done: asyncio.Event
) -> None:
    """Increment random counters of ``counters`` by 1-9 until ``done``, each under its own Idempotency-Key until
    answered."""
    sent = 0
    while not done.is_set():
        sent += 1
        counter = counters[rng.randrange(len(counters))]
        increment = Increment(process, counter, rng.randint(1, 9), f"incr-{process}-{sent}", run.now())
        for answer in await send(harness.url, increment, run.now, INCREMENT_PATIENCE):
            run.record_error(answer)
        run.increments.append(increment)
        run.outcomes[f"incr:{increment.outcome}"] += 1
        run.completions.append((run.now(), "incr", increment.outcome))
        if increment.answered is not None:
            run.writes.append((counter, *increment.answered))


async def resolve_unknown(harness: Harness, run: Run) -> None:
    """Send every increment whose outcome is still unknown again, under its key, until answered (after healing)."""
    for increment in run.increments:
        if increment.outcome == "unknown":
            for answer in await send(harness.url, increment, run.now, RESOLVE_PATIENCE):
                run.record_error(answer)
            increment.late = increment.outcome == "ok"


def classify(kind: str, status: int, body: bytes) -> tuple[str, Any]:
    """The outcome of one answer, and the op's output.

    ``ok`` (the output: a cas's is the value it found), ``fail`` (certainly not
    applied), ``unknown`` (may have applied) or ``error``: an answer a client
    should never get under these faults (a 500, say), which for a write or cas
    leaves its outcome unknown too.
    """
    if status == 200:
        result = ujson.loads(body or b"null")["result"]
        return "ok", result["value"] if kind == "cas" else result
    if status == 503 and error_code(body) == "no_leader":
        return "fail", None  # the router answers no_leader only when nothing was proposed
    if status not in (504, 599):
        return "error", None
    if kind == "read":
        return "fail", None  # a read that did not answer constrains nothing
    return "unknown", None  # outcome_unknown, or the client timed out / lost the connection


# -- checks and report ------------------------------------------------------------------------


def per_second(run: Run) -> dict[str, list[int]]:
    """Completed operations in each second of the run, by outcome."""
    seconds = int(max((t for t, _, _ in run.completions), default=0)) + 1
    series = {name: [0] * seconds for name in ("ok", "fail", "unknown", "error")}
    for t, _, outcome in run.completions:
        series[outcome][int(t)] += 1
    return series


def record_fault_timings(
    members: Mapping[str, Collection[str]],
    faults: list[Fault],
    writes: list[tuple[int, float, float]],
    elections: list[tuple[float, str, int]],
) -> None:
    """``record_failovers`` for each fault, against the writes to the keys its shard owned when it struck
    (``Fault.keys``) and the leaders seen among that shard's ``members`` (terms are per group)."""
    for fault in faults:
        keys, group = set(fault.keys), members[fault.shard]
        mine = [(invoke, complete) for key, invoke, complete in writes if key in keys]
        record_failovers([fault], mine, [election for election in elections if election[1] in group])


def fault_counts(faults: list[Fault]) -> dict[str, dict[str, int]]:
    """Per nemesis kind, how many faults ended ``done``, ``skipped`` and ``failed``."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for fault in faults:
        counts[fault.kind][fault.outcome] += 1
    return {kind: dict(sorted(outcomes.items())) for kind, outcomes in sorted(counts.items())}


async def first_success(harness: Harness, run: Run, limit: float) -> float | None:
    """Seconds until a write through the dispatcher succeeds, or ``None`` past ``limit``."""
    start = run.now()
    while run.now() - start < limit:
        status, _ = await fetch(harness.url + "/reg_write", timeout=2, post={"key": 999999, "value": 1})
        if status == 200:
            return run.now() - start
        await asyncio.sleep(0.05)
    return None


async def integrity_alerts(harness: Harness) -> list[dict[str, Any]]:
    """Every alert the dispatcher's monitor raised, after it has seen the healed cluster agree."""

    async def alerts() -> dict[str, Any]:
        status, body = await fetch(harness.url + "/_admin/alerts", timeout=5)
        answer: dict[str, Any] = ujson.loads(body) if status == 200 else {"active": [], "recent": []}
        return answer

    for _ in range(40):  # the healed cluster must look healthy within ~10 s: no unreachable replica left
        if not (await alerts())["active"]:
            break
        await asyncio.sleep(0.25)
    recent: list[dict[str, Any]] = (await alerts())["recent"]
    return recent


async def final_reads(harness: Harness, run: Run, keys: list[int]) -> dict[int, Any]:
    """Read every register of ``keys`` once more (recorded in the history as process -1); the values read."""
    final: dict[int, Any] = {}
    for key in keys:
        for _ in range(20):
            invoke = run.now()
            status, body = await fetch(f"{harness.url}/reg_read?key={key}&consistency=linearizable", timeout=15)
            if status == 200:
                final[key] = ujson.loads(body)["result"]
                run.ops.append(Op(-1, key, "read", None, final[key], invoke, run.now()))
                break
            await asyncio.sleep(0.25)
    return final


async def final_counts(harness: Harness, counters: list[int]) -> dict[int, int]:
    """The value of every counter of ``counters``, read linearizably; a counter that never answered is left out."""
    final: dict[int, int] = {}
    for key in counters:
        for _ in range(20):
            status, body = await fetch(f"{harness.url}/counter_read?key={key}&consistency=linearizable", timeout=15)
            if status == 200:
                final[key] = int(ujson.loads(body)["result"])
                break
            await asyncio.sleep(0.25)
    return final


def increment_counts(increments: list[Increment]) -> dict[str, int]:
    """How the increments ended: acknowledged (of which after retries, and only after healing), unknown, failed."""
    return {
        "sent": len(increments),
        "acknowledged": sum(i.outcome == "ok" for i in increments),
        "acknowledged_after_retries": sum(i.outcome == "ok" and i.attempts > 1 for i in increments),
        "acknowledged_after_healing": sum(i.late for i in increments),
        "unknown": sum(i.outcome == "unknown" for i in increments),
        "failed": sum(i.outcome == "fail" for i in increments),
        "attempts": sum(i.attempts for i in increments),
    }


async def benchmark(args: argparse.Namespace, harness: Harness, run: Run) -> tuple[dict[str, Any], list[Fault]]:
    """Run the workloads under the nemesis, heal, check; the report and the faults injected."""
    rng = random.Random(args.seed)
    snapshots = SnapshotWatch({name: harness.snapshot_file(name) for name in harness.all_replicas()})
    leaders = LeaderWatch(harness, run.now)
    watching = asyncio.create_task(snapshots.run())
    watching_leaders = asyncio.create_task(leaders.run())
    initial = harness.initial_slots()
    registers, counter_keys = spread_keys(initial, args.keys), spread_keys(initial, args.counters)
    keys = sorted({*registers, *counter_keys})  # reshard moves the slots holding them
    placed = {key: owner_of(initial, key) for key in keys}
    print("keys by shard (the cluster file's slot map):", flush=True)
    for shard, held in by_shard(placed).items():
        mine = ([k for k in held if k in registers], [k for k in held if k in counter_keys])
        print(f"  {shard}: registers {mine[0]}, counters {mine[1]}", flush=True)
    nemesis = Nemesis(harness, args.nemesis, random.Random(rng.random()), run.now, snapshots, keys)
    done = asyncio.Event()

    async def faults() -> None:
        await nemesis.run(until=run.now() + args.duration)
        done.set()  # the workload runs on until the last fault is healed

    workers = [client(p, harness, run, registers, random.Random(rng.random()), done) for p in range(args.clients)]
    workers += [
        counter_client(p, harness, run, counter_keys, random.Random(rng.random()), done)
        for p in range(args.clients, args.clients + args.counter_clients)
    ]
    await asyncio.gather(faults(), *workers)
    harness.heal()
    healed_at = run.now()
    recovery = await first_success(harness, run, RECOVERY_LIMIT)
    await resolve_unknown(harness, run)
    final = await final_reads(harness, run, registers)
    counts = await final_counts(harness, counter_keys)
    alerts = await integrity_alerts(harness)
    placement = await check_placement(harness, keys, "reg_read")
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    leaders.stop()
    await watching_leaders
    verdicts = check_history(run.ops)
    lost = lost_writes(run.ops)
    anomalies = [v for v in verdicts if v.linearizable is not True]
    counters = check_counters(run.increments, counts)
    members = {shard: harness.replicas(shard) for shard in harness.shards()}
    record_fault_timings(members, nemesis.faults, run.writes, leaders.elections)
    timings = by_kind(nemesis.faults)
    goals = targets(timings)
    checks = {
        "linearizable": not anomalies,
        "no_lost_writes": not lost,
        "no_double_applies": not any(c.double_applied for c in counters),
        "no_lost_increments": not any(c.lost for c in counters),
        "recovered_within_5s": recovery is not None,
        "final_reads": len(final) == args.keys and len(counts) == args.counters,
        "faults_completed": all(f.outcome != "failed" for f in nemesis.faults),
        "no_unexpected_errors": not run.errors,
        "no_false_integrity_alarm": not [a for a in alerts if a["kind"] in FALSE_ALARMS],
        "one_owner_per_key": placement.passed,
    }
    targets_met = all(goal.passed is not False for goal in goals)
    report = {
        "args": {k: v for k, v in vars(args).items() if k != "report"},
        "checks": checks,
        "targets": [goal.to_json() for goal in goals],
        "targets_met": targets_met,
        "targets_enforced": args.targets,
        "passed": all(checks.values()) and (targets_met or not args.targets),
        "operations": dict(sorted(run.outcomes.items())),
        "read_consistency": {str(p): read_level(p) for p in range(args.clients)},
        "register_keys": registers,
        "counter_keys": counter_keys,
        "initial_key_shards": by_shard(placed),
        "placement": placement.to_json(),
        "throughput_per_second": per_second(run),
        "recovery_seconds": recovery,
        "healed_at": healed_at,
        "timings": {kind: kind_timings.to_json() for kind, kind_timings in timings.items()},
        "fault_counts": fault_counts(nemesis.faults),
        "faults": [vars(f) for f in nemesis.faults],
        "snapshots_written": snapshots.counts,
        "keys": [
            {
                "key": v.key,
                "ops": v.ops,
                "linearizable": v.linearizable,
                "smallest_failing": v.smallest_failing,
            }
            for v in verdicts
        ],
        "lost_write_count": len(lost),
        "lost_writes": [loss.to_json() for loss in lost],
        "increments": increment_counts(run.increments),
        "counters": [c.to_json() for c in counters],
        "double_applied": sum(c.double_applied for c in counters),
        "lost_increments": sum(c.lost for c in counters),
        "alerts": alerts,
        "role_changes": leaders.changes,
        "errors": dict(run.errors),
        "notes": run.notes + nemesis.notes,
    }
    return report, nemesis.faults


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fault", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults (the last one runs to its end)")
    parser.add_argument("--clients", type=int, default=8, help="register clients (odd ones read with leader)")
    parser.add_argument("--keys", type=int, default=5, help="registers")
    parser.add_argument("--counter-clients", type=int, default=4)
    parser.add_argument("--counters", type=int, default=3)
    parser.add_argument(
        "--nemesis",
        help=f"comma list of {', '.join(NEMESES)} (default: all of them; reshard only with --shards 2 or more)",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument(
        "--port",
        type=int,
        help="dispatcher port (loopback replicas use port+100.. and port+200..); default: a block free right now",
    )
    parser.add_argument(
        "--compaction-entries",
        type=int,
        default=200,
        help="[raft] compaction_min_entries: snapshot and compact the journal after this many entries",
    )
    parser.add_argument(
        "--targets", action="store_true", help="fail the run when a failover or catch-up target is missed"
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory (cluster file, data, logs)")
    parser.add_argument("--report", default="fault-report.json", help="JSON report; the PNG goes beside it")
    args = parser.parse_args(argv)
    if args.nemesis is None:
        args.nemesis = ",".join(k for k in NEMESES if k != "reshard" or args.shards > 1)
    kinds = [k.strip() for k in args.nemesis.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in NEMESES]
    if unknown or not kinds:
        parser.error(f"--nemesis takes a comma list of {', '.join(NEMESES)}; got {args.nemesis!r}")
    if args.compaction_entries < 1:
        parser.error(f"--compaction-entries must be positive, got {args.compaction_entries}")
    if min(args.clients, args.keys, args.counters) < 1 or args.counter_clients < 0:
        parser.error("--clients, --keys and --counters must be positive, --counter-clients not negative")
    if "reshard" in kinds and args.shards < 2:
        parser.error("the reshard nemesis moves slots between shards: give --shards 2 or more")
    args.nemesis = kinds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=256)
    run = Run()
    partitions = [k for k in args.nemesis if k in PARTITIONS]
    if partitions and (reason := why_unavailable()):
        print(f"skipping the {' and '.join(partitions)} nemesis: {reason}", flush=True)
        run.notes.append(f"{', '.join(partitions)} skipped: {reason}")
        args.nemesis = [k for k in args.nemesis if k not in PARTITIONS]
        if not args.nemesis:
            return 1
    with run_directory(args.keep) as root:
        return run_in(root, args, run)


@contextlib.contextmanager
def run_directory(keep: bool) -> Iterator[Path]:
    """A new run directory (cluster file, data, logs), removed when the run ends, however it ends, unless ``keep``."""
    root = Path(tempfile.mkdtemp(prefix="docraft-fault-"))
    try:
        yield root
    finally:
        if keep:
            print(f"run directory (cluster file, data, logs) kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_in(root: Path, args: argparse.Namespace, run: Run) -> int:
    """Run the benchmark with its cluster in ``root``; the exit code (0 when every check passed)."""
    try:
        harness = Harness(
            root,
            args.shards,
            args.replicas,
            args.port if args.port is not None else free_block(port_offsets(args.shards * args.replicas)),
            any(k in PARTITIONS for k in args.nemesis),
            args.compaction_entries,
        )
    except NetworkUnavailable as exc:
        print(f"cannot run partitions: {exc}", file=sys.stderr)
        return 1
    what = f"{args.duration:.0f}s, nemesis {','.join(args.nemesis)}, seed {args.seed}"
    print(f"fault benchmark: {what}, in {root}", flush=True)
    try:
        harness.cluster.start_all()
        harness.cluster.wait_ready()
        run.started = time.monotonic()
        report, faults = asyncio.run(benchmark(args, harness, run))
    finally:
        harness.close()
    report_path = Path(args.report)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report = rounded(report)
    report_path.write_text(ujson.dumps(report, indent=2))
    plot(report["throughput_per_second"], faults, report_path.with_suffix(".png"))
    print(summary(report, report_path))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
