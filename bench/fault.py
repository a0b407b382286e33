"""Fault-injection benchmark: registers under kill, pause, partition and restart-all.

    python -m bench.fault --duration 120 --nemesis kill,pause,partition,restart-all --seed 7

Starts its own cluster (default 1 shard x 3 replicas + a dispatcher, app
``bench.register_app``), runs concurrent clients that write, read
(linearizable) and compare-and-set integer registers through the dispatcher
while a nemesis injects faults, then heals everything, lets the cluster
settle, reads every register a last time and checks:

1. the history of every key is linearizable (``bench.linearizability``);
2. no acknowledged write is lost: each is the final value or was followed by
   another write or swap of that key;
3. the cluster recovers: after healing, a write succeeds within 5 s.

Writes a JSON report and a PNG timeline (matplotlib) and exits 1 if any check
fails. With ``partition`` each replica gets its own network namespace and
address and links are cut with iptables; that needs root, and without it the
partition nemesis is skipped with a message saying so.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson
from tornado.httpclient import AsyncHTTPClient

from bench.linearizability import Op, check_history
from bench.netns import NetworkUnavailable, TestNetwork, why_unavailable
from node.config import load_config, render_config
from node.launcher import LocalCluster

AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=256)

NEMESES = ("kill", "pause", "partition", "restart-all")
APP = "bench.register_app"
RECOVERY_LIMIT = 5.0
# Alerts that would be false under these faults: replicas lose no data, they only stop or lag.
FALSE_ALARMS = ("divergence", "no_majority", "code_mismatch")


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float = 0.0
    leader: bool = False
    failover: float | None = None


@dataclass
class Run:
    """Everything recorded during one benchmark run; times are seconds since the start."""

    started: float = field(default_factory=time.monotonic)
    ops: list[Op] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    completions: list[tuple[float, str, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.started


class Harness:
    """The cluster under test, its processes and (optionally) its network."""

    def __init__(self, root: Path, shards: int, replicas: int, port: int, partitions: bool) -> None:
        self.network: TestNetwork | None = None
        names = [f"s{s}r{r}" for s in range(shards) for r in range(replicas)]
        if partitions:
            self.network = TestNetwork(names)
        layout = []
        for s in range(shards):
            members = []
            for r in range(replicas):
                name = f"s{s}r{r}"
                n = s * replicas + r
                if self.network is not None:
                    host = self.network.address(name)
                    members.append((name, f"{host}:7000", f"{host}:8000", name))
                else:
                    members.append((name, f"127.0.0.1:{port + 200 + n}", f"127.0.0.1:{port + 100 + n}", name))
            layout.append((f"s{s}", members))
        config_path = root / "cluster.toml"
        config_path.write_text(render_config("fault-benchmark-secret-0", APP, layout, [("d0", f"127.0.0.1:{port}")]))
        self.config = load_config(config_path)
        prefixes = {name: self.network.prefix(name) for name in names} if self.network else {}
        self.cluster = LocalCluster(self.config, APP, root / "logs", prefixes=prefixes)
        self.url = f"http://127.0.0.1:{port}"
        self.paused: set[str] = set()
        self.dead: set[str] = set()

    def replicas(self, shard: str = "s0") -> list[str]:
        return [r.id for r in self.config.shard(shard).replicas]

    async def leader(self, shard: str = "s0") -> str | None:
        response = await AsyncHTTPClient().fetch(self.url + "/_admin/cluster", raise_error=False, request_timeout=3)
        if response.code != 200:
            return None
        for entry in ujson.loads(response.body)["shards"]:
            if entry["id"] == shard:
                leader: str | None = entry["leader"]
                return leader
        return None

    def kill(self, name: str) -> None:
        process = self.cluster.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.dead.add(name)

    def restart(self, name: str) -> None:
        self.cluster.start_replica(name)
        self.dead.discard(name)

    def pause(self, name: str) -> None:
        self.cluster.processes[name].send_signal(signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.cluster.processes[name].send_signal(signal.SIGCONT)
        self.paused.discard(name)

    def heal(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        for name in list(self.dead):
            self.restart(name)
        if self.network is not None and self.network.partitioned:
            self.network.heal()

    def close(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        self.cluster.stop()
        if self.network is not None:
            self.network.close()


# -- the workload -------------------------------------------------------------------------


async def client(process: int, harness: Harness, run: Run, keys: int, rng: random.Random, until: float) -> None:
    http = AsyncHTTPClient()
    counter = 0
    last_seen: dict[int, int | None] = {}
    while run.now() < until:
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
        response = await http.fetch(harness.url + path, raise_error=False, request_timeout=15)
        complete = run.now()
        outcome, output = classify(kind, response.code, response.body)
        run.outcomes[f"{kind}:{outcome}"] += 1
        run.completions.append((complete, kind, outcome))
        if outcome == "ok":
            run.ops.append(Op(process, key, kind, op_value, output, invoke, complete))
            if kind == "read":
                last_seen[key] = output
            elif kind == "write":
                last_seen[key] = value
        elif outcome == "unknown" and kind != "read":
            run.ops.append(Op(process, key, kind, op_value, None, invoke, None))


def classify(kind: str, status: int, body: bytes | None) -> tuple[str, Any]:
    """``ok`` (with the output), ``fail`` (certainly not applied) or ``unknown``."""
    if status == 200:
        result = ujson.loads(body or b"null")["result"]
        return "ok", result["swapped"] if kind == "cas" else result
    if kind == "read":
        return "fail", None  # a read that did not answer constrains nothing
    if status == 503:
        return "fail", None  # the router answers no_leader only when nothing was proposed
    if status in (504, 599):
        return "unknown", None  # outcome_unknown, or the client timed out / lost the connection
    return "error", None


# -- the nemesis ----------------------------------------------------------------------------


async def nemesis(harness: Harness, run: Run, kinds: list[str], rng: random.Random, until: float) -> None:
    while True:
        await asyncio.sleep(rng.uniform(1.5, 3.0))
        if run.now() >= until - 1:
            return
        kind = rng.choice(kinds)
        leader = await harness.leader()
        replicas = harness.replicas()
        target = leader if leader and rng.random() < 0.6 else rng.choice(replicas)
        fault = Fault(kind, target if kind != "restart-all" else "s0", run.now(), leader=target == leader)
        run.faults.append(fault)
        hold = rng.uniform(1.5, 3.0)
        if kind == "kill":
            harness.kill(target)
            await asyncio.sleep(hold)
            harness.restart(target)
        elif kind == "pause":
            harness.pause(target)
            await asyncio.sleep(hold)
            harness.resume(target)
        elif kind == "partition":
            assert harness.network is not None
            if rng.random() < 0.5:
                harness.network.isolate(target)
            else:
                harness.network.split([rng.choice(replicas)])
            await asyncio.sleep(hold)
            harness.network.heal()
        elif kind == "restart-all":
            for name in replicas:
                harness.kill(name)
            await asyncio.sleep(rng.uniform(0.3, 1.0))
            for name in replicas:
                harness.restart(name)
            fault.leader = True
        fault.end = run.now()


# -- checks and report ------------------------------------------------------------------------


def per_second(run: Run) -> dict[str, list[int]]:
    """Completed operations in each second of the run, by outcome."""
    seconds = int(max((t for t, _, _ in run.completions), default=0)) + 1
    series = {name: [0] * seconds for name in ("ok", "fail", "unknown", "error")}
    for t, _, outcome in run.completions:
        series[outcome][int(t)] += 1
    return series


def failovers(run: Run) -> list[float]:
    """For each fault that took the leader away: seconds to the next successful write.

    Only writes invoked after the fault count: one already in flight may have
    committed just before the kill and complete just after it.
    """
    writes = [op for op in run.ops if op.kind != "read" and op.complete is not None and op.process >= 0]
    times = []
    for fault in run.faults:
        if not fault.leader:
            continue
        after = min((op.end for op in writes if op.invoke >= fault.start), default=None)
        fault.failover = None if after is None else after - fault.start

        if fault.kind == "kill" and fault.failover is not None:
            times.append(fault.failover)
    return times


def lost_writes(run: Run, final: dict[int, Any]) -> list[dict[str, Any]]:
    """Acknowledged writes that are not the final value and were not followed by another write."""
    lost = []
    for op in run.ops:
        if op.kind != "write" or op.complete is None or final.get(op.key) == op.value:
            continue
        followed = any(
            other.key == op.key and other.kind in ("write", "cas") and other is not op and other.end > op.invoke
            for other in run.ops
        )
        if not followed:
            lost.append(op.to_json())
    return lost


async def first_success(harness: Harness, run: Run, limit: float) -> float | None:
    """Seconds until a write through the dispatcher succeeds, or ``None`` past ``limit``."""
    start = run.now()
    http = AsyncHTTPClient()
    while run.now() - start < limit:
        response = await http.fetch(harness.url + "/reg_write?key=999999&value=1", raise_error=False, request_timeout=2)
        if response.code == 200:
            return run.now() - start
        await asyncio.sleep(0.05)
    return None


async def integrity_alerts(harness: Harness) -> list[dict[str, Any]]:
    """Every alert the dispatcher's monitor raised, after it has seen the healed cluster agree."""
    http = AsyncHTTPClient()

    async def alerts() -> dict[str, Any]:
        response = await http.fetch(harness.url + "/_admin/alerts", raise_error=False, request_timeout=5)
        body: dict[str, Any] = ujson.loads(response.body) if response.code == 200 else {"active": [], "recent": []}
        return body

    for _ in range(40):  # the healed cluster must look healthy within ~10 s: no unreachable replica left
        if not (await alerts())["active"]:
            break
        await asyncio.sleep(0.25)
    recent: list[dict[str, Any]] = (await alerts())["recent"]
    return recent


async def final_reads(harness: Harness, run: Run, keys: int) -> dict[int, Any]:
    http = AsyncHTTPClient()
    final: dict[int, Any] = {}
    for key in range(keys):
        for _ in range(20):
            invoke = run.now()
            response = await http.fetch(f"{harness.url}/reg_read?key={key}", raise_error=False, request_timeout=15)
            if response.code == 200:
                final[key] = ujson.loads(response.body)["result"]
                run.ops.append(Op(-1, key, "read", None, final[key], invoke, run.now()))
                break
            await asyncio.sleep(0.25)
    return final


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    series = per_second(run)
    seconds = len(series["ok"])

    colours = {
        "kill": "tab:red",
        "pause": "tab:orange",
        "partition": "tab:purple",
        "restart-all": "tab:brown",
    }
    figure, axis = plt.subplots(figsize=(12, 4.5))
    for fault in run.faults:
        axis.axvspan(fault.start, fault.end, color=colours[fault.kind], alpha=0.18, lw=0)
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
        for kind, colour in colours.items()
        if any(f.kind == kind for f in run.faults)
    ]
    axis.set_xlabel("seconds")
    axis.set_ylabel("operations per second")
    axis.set_title("docraft fault benchmark: completed operations, fault windows shaded")
    axis.legend(handles=handles, loc="upper right", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


async def benchmark(args: argparse.Namespace, harness: Harness, run: Run) -> dict[str, Any]:
    rng = random.Random(args.seed)
    until = run.now() + args.duration
    workers = [client(p, harness, run, args.keys, random.Random(rng.random()), until) for p in range(args.clients)]
    await asyncio.gather(nemesis(harness, run, args.nemesis, random.Random(rng.random()), until), *workers)
    harness.heal()
    healed_at = run.now()
    recovery = await first_success(harness, run, RECOVERY_LIMIT)
    final = await final_reads(harness, run, args.keys)
    alerts = await integrity_alerts(harness)
    verdicts = check_history(run.ops)

    lost = lost_writes(run, final)
    failover_times = sorted(failovers(run))
    anomalies = [v for v in verdicts if v.linearizable is not True]
    checks = {
        "linearizable": not anomalies,
        "no_lost_writes": not lost,
        "recovered_within_5s": recovery is not None,
        "final_reads": len(final) == args.keys,
        "no_false_integrity_alarm": not [a for a in alerts if a["kind"] in FALSE_ALARMS],
    }

    return {
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
        "faults": [vars(f) for f in run.faults],
        "keys": [
            {
                "key": v.key,
                "ops": v.ops,
                "linearizable": v.linearizable,
                "smallest_failing": v.smallest_failing,
            }
            for v in verdicts
        ],
        "lost_writes": lost,
        "alerts": alerts,
        "notes": run.notes,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fault", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of workload under faults")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--keys", type=int, default=5)
    parser.add_argument("--nemesis", default="kill,pause,partition,restart-all", help=f"comma list of {NEMESES}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shards", type=int, default=1)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--port", type=int, default=8700, help="dispatcher port (loopback replicas use port+100..)")
    parser.add_argument("--report", default="fault-report.json", help="JSON report; the PNG goes beside it")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.nemesis.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in NEMESES]
    if unknown or not kinds:
        parser.error(f"--nemesis takes a comma list of {', '.join(NEMESES)}; got {args.nemesis!r}")
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
        harness = Harness(root, args.shards, args.replicas, args.port, "partition" in args.nemesis)
    except NetworkUnavailable as exc:
        print(f"cannot run partitions: {exc}", file=sys.stderr)
        return 1
    what = f"{args.duration:.0f}s, nemesis {','.join(args.nemesis)}, seed {args.seed}"
    print(f"fault benchmark: {what}, in {root}", flush=True)
    try:
        harness.cluster.start_all()
        harness.cluster.wait_ready()
        run.started = time.monotonic()
        report = asyncio.run(benchmark(args, harness, run))
    finally:
        harness.close()
    report_path = Path(args.report)
    report_path.write_text(ujson.dumps(report, indent=2))
    plot(run, report_path.with_suffix(".png"))
    print(summary(report, report_path))
    return 0 if report["passed"] else 1


def summary(report: dict[str, Any], path: Path) -> str:
    failover = report["failover_seconds"]
    lines = [
        "operations: " + ", ".join(f"{k} {v}" for k, v in report["operations"].items()),
        f"faults: {Counter(f['kind'] for f in report['faults'])}",
        f"failover after leader kills (s): median {failover['median']}, max {failover['max']}",
        f"  each: {failover['kills']}",
        f"recovery after healing: {report['recovery_seconds']}s",
        f"checks: {report['checks']}",
        f"{'PASS' if report['passed'] else 'FAIL'}; report {path} and {path.with_suffix('.png')}",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
