"""Fault-injection benchmark: registers under crashes, pauses, partitions, restarts, repairs and lag.

    python -m bench.fault --duration 120 --seed 7
    python -m bench.fault --duration 60 --nemesis kill,restart,lag --compaction-entries 100 --keep

Starts its own cluster (default 1 shard x 3 replicas + a dispatcher, app
``bench.register_app``, a snapshot and journal compaction every
``--compaction-entries`` log entries), runs concurrent clients that write,
read (linearizable) and compare-and-set integer registers through the
dispatcher while a nemesis (``bench.nemesis``) injects faults, then heals
everything, lets the cluster settle, reads every register a last time and
checks:

1. the history of every key is linearizable (``bench.linearizability``);
2. no acknowledged write is lost: no read or cas, the final reads included,
   that began after it completed saw a value it had overwritten for good;
3. the cluster recovers: after healing, a write succeeds within 5 s;
4. every fault ran to its end (a graceful stop exits 0, a repair does not
   time out, a lagging follower catches up; a refused repair is skipped);
5. no client got an answer it should never get under these faults (a 500);
6. the integrity monitor raised no false alarm.

Writes a JSON report and a PNG timeline (matplotlib), removes its run
directory (cluster file, data, logs) when everything passed unless
``--keep`` is given, and exits 1 if any check fails. With ``partition`` each
replica gets its own network namespace and address and links are cut with
iptables; that needs root, and without it the partition nemesis is skipped
with a message saying so.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson
from tornado.httpclient import AsyncHTTPClient

from bench.linearizability import Op, check_history, lost_writes
from bench.nemesis import NEMESES, Fault, Harness, Nemesis, SnapshotWatch, fetch
from bench.netns import NetworkUnavailable, why_unavailable

AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=256)

RECOVERY_LIMIT = 5.0
# Alerts that would be false under these faults: replicas lose nothing on disk, they only stop, lag or resync.
FALSE_ALARMS = ("divergence", "no_majority", "code_mismatch", "entries_lost", "snapshot_unloadable")


@dataclass
class Run:
    """Everything the workload recorded during one benchmark run; times are seconds since the start."""

    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
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


async def client(process: int, harness: Harness, run: Run, keys: int, rng: random.Random, done: asyncio.Event) -> None:
    """Write, read and cas random keys until ``done``; every written value is unique."""
    counter = 0
    last_seen: dict[int, int | None] = {}
    while not done.is_set():
        key = rng.randrange(keys)
        roll = rng.random()
        counter += 1
        value = process * 10_000_000 + counter
        op_value: Any
        if roll < 0.4:
            kind, path, op_value = "write", f"/reg_write?key={key}&value={value}", value
        elif roll < 0.8:
            kind, path, op_value = "read", f"/reg_read?key={key}", None
        else:
            old = last_seen.get(key)
            old = old if old is not None else rng.randrange(1, 10)
            kind, path, op_value = "cas", f"/reg_cas?key={key}&old={old}&new={value}", (old, value)
        invoke = run.now()
        status, body = await fetch(harness.url + path, timeout=15)
        complete = run.now()
        outcome, output = classify(kind, status, body)
        run.outcomes[f"{kind}:{outcome}"] += 1
        run.completions.append((complete, kind, outcome))
        if outcome == "ok":
            run.ops.append(Op(process, key, kind, op_value, output, invoke, complete))
            last_seen[key] = value if kind == "write" or (kind == "cas" and output == op_value[0]) else output
        elif outcome != "fail" and kind != "read":
            run.ops.append(Op(process, key, kind, op_value, None, invoke, None))
        if outcome == "error":
            run.record_error(f"{kind} {status}: {body[:300].decode(errors='replace')}")


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
    if status == 503 and _error_code(body) == "no_leader":
        return "fail", None  # the router answers no_leader only when nothing was proposed
    if status not in (504, 599):
        return "error", None
    if kind == "read":
        return "fail", None  # a read that did not answer constrains nothing
    return "unknown", None  # outcome_unknown, or the client timed out / lost the connection


def _error_code(body: bytes) -> str | None:
    """The ``code`` of a JSON error body (models/errors.py), or ``None`` if the body is not one."""
    try:
        code = ujson.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


# -- checks and report ------------------------------------------------------------------------


def per_second(run: Run) -> dict[str, list[int]]:
    """Completed operations in each second of the run, by outcome."""
    seconds = int(max((t for t, _, _ in run.completions), default=0)) + 1
    series = {name: [0] * seconds for name in ("ok", "fail", "unknown", "error")}
    for t, _, outcome in run.completions:
        series[outcome][int(t)] += 1
    return series


def failovers(run: Run, faults: list[Fault]) -> list[float]:
    """For each fault that took the leader away: seconds to the next successful write (kills only returned).

    Only writes invoked after the fault count: one already in flight may have
    committed just before the kill and complete just after it.
    """
    writes = [op for op in run.ops if op.kind != "read" and op.complete is not None and op.process >= 0]
    times = []
    for fault in faults:
        if not fault.leader:
            continue
        after = min((op.end for op in writes if op.invoke >= fault.start), default=None)
        fault.failover = None if after is None else after - fault.start
        if fault.kind == "kill" and fault.failover is not None:
            times.append(fault.failover)
    return times


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
        status, _ = await fetch(harness.url + "/reg_write?key=999999&value=1", timeout=2)
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


async def final_reads(harness: Harness, run: Run, keys: int) -> dict[int, Any]:
    """Read every register once more (recorded in the history as process -1); the values read."""
    final: dict[int, Any] = {}
    for key in range(keys):
        for _ in range(20):
            invoke = run.now()
            status, body = await fetch(f"{harness.url}/reg_read?key={key}", timeout=15)
            if status == 200:
                final[key] = ujson.loads(body)["result"]
                run.ops.append(Op(-1, key, "read", None, final[key], invoke, run.now()))
                break
            await asyncio.sleep(0.25)
    return final


COLOURS = {
    "kill": "tab:red",
    "pause": "tab:orange",
    "partition": "tab:purple",
    "restart-all": "tab:brown",
    "restart": "tab:pink",
    "repair": "tab:cyan",
    "lag": "tab:olive",
}


def plot(run: Run, faults: list[Fault], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    series = per_second(run)
    seconds = len(series["ok"])
    figure, axis = plt.subplots(figsize=(12, 4.5))
    for fault in faults:
        axis.axvspan(fault.start, fault.end, color=COLOURS[fault.kind], alpha=0.18, lw=0)
    for name, style in (
        ("ok", "tab:green"),
        ("unknown", "tab:gray"),
        ("fail", "tab:blue"),
        ("error", "black"),
    ):
        if any(series[name]):
            axis.plot(range(seconds), series[name], label=f"{name} ops/s", color=style)
    handles, _ = axis.get_legend_handles_labels()
    handles += [
        Patch(color=colour, alpha=0.3, label=kind)
        for kind, colour in COLOURS.items()
        if any(f.kind == kind for f in faults)
    ]
    axis.set_xlabel("seconds")
    axis.set_ylabel("operations per second")
    axis.set_title("docraft fault benchmark: completed operations, fault windows shaded")
    axis.legend(handles=handles, loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


async def benchmark(args: argparse.Namespace, harness: Harness, run: Run) -> tuple[dict[str, Any], list[Fault]]:
    """Run the workload under the nemesis, heal, check; the report and the faults injected."""
    rng = random.Random(args.seed)
    snapshots = SnapshotWatch({name: harness.snapshot_file(name) for name in harness.replicas()})
    watching = asyncio.create_task(snapshots.run())
    nemesis = Nemesis(harness, args.nemesis, random.Random(rng.random()), run.now, snapshots)
    done = asyncio.Event()

    async def faults() -> None:
        await nemesis.run(until=run.now() + args.duration)
        done.set()  # the workload runs on until the last fault is healed

    workers = [client(p, harness, run, args.keys, random.Random(rng.random()), done) for p in range(args.clients)]
    await asyncio.gather(faults(), *workers)
    harness.heal()
    healed_at = run.now()
    recovery = await first_success(harness, run, RECOVERY_LIMIT)
    final = await final_reads(harness, run, args.keys)
    alerts = await integrity_alerts(harness)
    watching.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watching
    verdicts = check_history(run.ops)
    lost = lost_writes(run.ops)
    failover_times = sorted(failovers(run, nemesis.faults))
    anomalies = [v for v in verdicts if v.linearizable is not True]
    checks = {
        "linearizable": not anomalies,
        "no_lost_writes": not lost,
        "recovered_within_5s": recovery is not None,
        "final_reads": len(final) == args.keys,
        "faults_completed": all(f.outcome != "failed" for f in nemesis.faults),
        "no_unexpected_errors": not run.errors,
        "no_false_integrity_alarm": not [a for a in alerts if a["kind"] in FALSE_ALARMS],
    }
    report = {
        "args": {k: v for k, v in vars(args).items() if k != "report"},
        "checks": checks,
        "passed": all(checks.values()),
        "operations": dict(sorted(run.outcomes.items())),
        "throughput_per_second": per_second(run),
        "recovery_seconds": recovery,
        "healed_at": healed_at,
        "failover_seconds": {
            "kills": failover_times,
            "median": failover_times[len(failover_times) // 2] if failover_times else None,
            "max": failover_times[-1] if failover_times else None,
        },
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
        "alerts": alerts,
        "errors": dict(run.errors),
        "notes": run.notes + nemesis.notes,
    }
    return report, nemesis.faults


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fault", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of faults (the last one runs to its end)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--nemesis", default=",".join(NEMESES), help=f"comma list of {', '.join(NEMESES)}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=8700, help="dispatcher port (loopback replicas use port+100..)")
    parser.add_argument(
        "--compaction-entries",
        type=int,
        default=200,
        help="[raft] compaction_min_entries: snapshot and compact the journal after this many entries",
    )
    parser.add_argument("--keep", action="store_true", help="keep the run directory (data, logs) even on success")
    parser.add_argument("--report", default="fault-report.json", help="JSON report; the PNG goes beside it")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.nemesis.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in NEMESES]
    if unknown or not kinds:
        parser.error(f"--nemesis takes a comma list of {', '.join(NEMESES)}; got {args.nemesis!r}")
    if args.compaction_entries < 1:
        parser.error(f"--compaction-entries must be positive, got {args.compaction_entries}")
    args.nemesis = kinds
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run()
    if "partition" in args.nemesis and (reason := why_unavailable()):
        print(f"skipping the partition nemesis: {reason}", flush=True)
        run.notes.append(f"partition skipped: {reason}")
        args.nemesis = [k for k in args.nemesis if k != "partition"]
        if not args.nemesis:
            return 1
    root = Path(tempfile.mkdtemp(prefix="docraft-fault-"))
    try:
        harness = Harness(
            root, args.shards, args.replicas, args.port, "partition" in args.nemesis, args.compaction_entries
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
    report_path.write_text(ujson.dumps(report, indent=2))
    plot(run, faults, report_path.with_suffix(".png"))
    print(summary(report, report_path))
    if report["passed"] and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"run directory (cluster file, data, logs) kept in {root}")
    return 0 if report["passed"] else 1


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _lost(loss: dict[str, Any]) -> str:
    write, seen = loss["write"], loss["observed_by"]
    return (
        f"  key {write['key']}: {write['kind']} of {write['value']} acknowledged at {write['complete']:.2f}s,"
        f" then a {seen['kind']} at {seen['invoke']:.2f}s found {seen['output']}"
    )


def summary(report: dict[str, Any], path: Path) -> str:
    """The printed summary: outcomes, faults by kind, failover, compactions, lost writes, checks."""
    failover = report["failover_seconds"]
    faults = ", ".join(
        f"{kind} " + " ".join(f"{n} {outcome}" for outcome, n in outcomes.items())
        for kind, outcomes in report["fault_counts"].items()
    )
    snapshots = report["snapshots_written"]
    lines = [
        "operations: " + ", ".join(f"{k} {v}" for k, v in report["operations"].items()),
        f"faults: {faults or 'none'}",
        *(
            f"  {f['kind']} at {f['start']:.2f}s on {f['target']}: {f['outcome']}: {f['detail']}"
            for f in report["faults"]
            if f["outcome"] != "done"
        ),
        f"failover after leader kills: median {_seconds(failover['median'])}, max {_seconds(failover['max'])}"
        f" (each: {', '.join(_seconds(t) for t in failover['kills']) or '-'})",
        f"snapshots written (at least): {sum(snapshots.values())} ("
        + ", ".join(f"{name} {n}" for name, n in snapshots.items())
        + ")",
        f"lost writes: {report['lost_write_count']}",
        *(_lost(loss) for loss in report["lost_writes"][:3]),
        *(f"unexpected answer ({n}x): {answer}" for answer, n in list(report["errors"].items())[:3]),
        f"recovery after healing: {_seconds(report['recovery_seconds'])}",
        "checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in report["checks"].items()),
        f"{'PASS' if report['passed'] else 'FAIL'}; report {path} and {path.with_suffix('.png')}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
