"""Where a docraft cluster's processes spend their time under load: py-spy profiles, and strace on request.

    python -m bench.profile                          # writes, 15 s, 32 connections
    python -m bench.profile --mode read --strace     # leader key reads, then 5 s of strace -c per process
    python -m bench.profile --from bench-results/profile-20261127-114000   # summarise a run again

Starts a ``docraft up``-shaped cluster (``bench.up_cluster``) and drives it
with ``wrk`` and bench.compare's phase for the mode (``--mode write``: its
``insert_user`` writes; ``--mode read``: its key reads at ``leader``
consistency). After a warm-up it records, all at once, the dispatcher, the
leader of the first shard and a follower of that shard (roles from
``/_admin/cluster``) with ``py-spy record`` (idle threads and GIL-only off,
``--threads``, collapsed stacks), and reads each one's CPU time from
``/proc``. With ``--strace``, the load goes on for ``strace -c -f`` of each
process for 5 s more, to show which system calls the kernel time goes to
(strace slows the traced processes a lot: read its counts, not the load's
figures, for that window).

Writes into ``--out``: ``ROLE.collapsed.txt`` (py-spy's raw output),
``ROLE.svg`` (a flame graph), ``ROLE.strace.txt``, ``run.json`` (the load,
the processes, their CPU), and ``summary.txt`` / ``summary.json``: for each
process, its samples by thread and by category (``CATEGORIES``: the
innermost frame that a rule matches decides), and the top functions by self
and by inclusive samples. Other benchmarks on the same cores change every
figure: compare shares within one run, not absolute rates across runs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ujson

from bench.collapsed import Rule, format_profile, parse_collapsed, summarise
from bench.compare import docraft_phases, sample_users
from bench.flamegraph import render
from bench.proc_cpu import cpu_times, spent
from bench.up_cluster import UpCluster, stop_clusters_on_sigterm
from bench.wrk_load import run_wrk

ROLES = ("dispatcher", "leader", "follower")
PHASES = {"write": "write", "read": "read_leader"}  # bench.compare's phase for each --mode
WARMUP_SECONDS = 2.0
STRACE_SECONDS = 5.0
TOOL_GRACE_SECONDS = 30.0
TOP = 25
RUN_FILE = "run.json"

# The innermost frame that a rule matches decides a sample's category; the first rule that matches a frame wins.
# C functions (ujson, hmac's digest, pickle) have no frame of their own: their time is their Python caller's.
# A thread woken from poll/select shows that frame until it runs again, and py-spy counts a runnable thread as
# active: on a busy machine these samples are mostly waiting for a core, so shares are also given without them.
WAITING = "waiting in poll/select (runnable, or in the call)"
CATEGORIES: tuple[Rule, ...] = (
    Rule(WAITING, ("pysyncobj/poller.py", "selectors.py"), frozenset({"PollPoller.poll", "EpollSelector.select"})),
    Rule("logging", ("logging/",)),
    Rule("auth/signing", ("node/auth.py", "node/signing.py", "node/users.py", "hmac.py", "hashlib.py", "secrets.py")),
    Rule("JSON", ("json/", "models/json_values.py")),
    Rule(
        "router/group_calls",
        (
            "node/router.py",
            "node/group_calls.py",
            "node/request_ids.py",
            "node/leaders.py",
            "node/cluster_view.py",
            "node/shard_map.py",
            "node/slot_map.py",
            "node/shard_client.py",
            "node/includes.py",
            "query/merge.py",
        ),
    ),
    Rule("state machine apply", ("consensus/state_machine.py", "consensus/digests.py", "consensus/slots.py")),
    Rule("state machine apply", ("query/", "models/")),
    Rule("PySyncObj (Raft, transport, journal)", ("pysyncobj/", "consensus/", "cryptography/", "pickle.py")),
    Rule("replica service", ("node/shard_service.py",)),
    Rule("HTTP client to replicas (pycurl)", ("tornado/curl_httpclient.py", "tornado/httpclient.py")),
    Rule("docraft handlers", ("node/",)),
    Rule(
        "Tornado HTTP server",
        ("tornado/web.py", "tornado/http1connection.py", "tornado/httputil.py", "tornado/httpserver.py"),
    ),
    Rule("socket I/O (Tornado IOStream)", ("tornado/iostream.py", "tornado/netutil.py")),
    Rule("event loop (asyncio, Tornado IOLoop)", ("asyncio/", "tornado/", "selectors.py")),
    Rule("threads (locks, waits)", ("threading.py", "queue.py")),
)


@dataclass(frozen=True)
class Target:
    """One profiled process: its role, its name in the cluster file and its pid."""

    role: str
    name: str
    pid: int


class ToolMissing(RuntimeError):
    """A program the profile needs is not installed."""


def find_tool(name: str) -> str | None:
    """``name`` on PATH, else next to this Python (a virtualenv's ``bin``), else ``None``."""
    beside = Path(sys.executable).parent / name
    return shutil.which(name) or (str(beside) if beside.is_file() else None)


def require(name: str, how: str) -> str:
    """The path of ``name``; raises ``ToolMissing`` saying how to install it when it is not there."""
    path = find_tool(name)
    if path is None:
        raise ToolMissing(f"{name} is not installed ({how})")
    return path


def targets(cluster: UpCluster, shards: list[dict[str, Any]]) -> list[Target]:
    """The dispatcher, the first shard's leader and a follower of that shard, from ``/_admin/cluster``'s shards.

    Raises ``RuntimeError`` when the shard has no leader or no follower.
    """
    shard = shards[0]
    followers = [r["id"] for r in shard["replicas"] if r.get("role") == "follower"]
    if shard["leader"] is None or not followers:
        raise RuntimeError(f"shard {shard['id']} needs a leader and a follower: {shard['replicas']}")
    processes = cluster.processes
    names = {"dispatcher": processes.config.dispatchers[0].id, "leader": shard["leader"], "follower": followers[0]}
    return [Target(role, names[role], processes.processes[names[role]].pid) for role in ROLES]


def record_command(py_spy: str, pid: int, seconds: int, rate: int, output: Path) -> list[str]:
    """py-spy recording ``pid`` for ``seconds`` at ``rate`` Hz into ``output`` as collapsed stacks (raw), by thread.
    Idle threads and GIL-less samples stay out (py-spy's defaults: no ``--idle``, no ``--gil``)."""
    return [
        py_spy,
        "record",
        f"--pid={pid}",
        f"--duration={seconds}",
        f"--rate={rate}",
        "--format=raw",
        "--threads",
        f"--output={output}",
    ]


def strace_command(strace: str, pid: int, output: Path) -> list[str]:
    """strace counting the system calls (with their kernel time) of every thread of ``pid`` into ``output``."""
    return [strace, "-c", "-f", "-p", str(pid), "-o", str(output)]


def run_all(commands: Mapping[str, list[str]], interrupt_after: float | None) -> dict[str, str]:
    """Run ``commands`` at once and wait for them; with ``interrupt_after``, send each SIGINT after that many
    seconds (strace then detaches, writes its counts and exits with 130). Returns the stderr of each that
    failed (an exit code other than 0, or than the SIGINT's), by key."""
    running = {
        key: subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for key, command in commands.items()
    }
    if interrupt_after is not None:
        time.sleep(interrupt_after)  # the measuring window
        for process in running.values():
            process.send_signal(signal.SIGINT)
    ok = {0} if interrupt_after is None else {0, 128 + signal.SIGINT, -signal.SIGINT}
    failures = {}
    for key, process in running.items():
        try:
            _, stderr = process.communicate(timeout=TOOL_GRACE_SECONDS + (interrupt_after or 0))
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        if process.returncode not in ok:
            failures[key] = stderr.strip()[-2000:]
    return failures


def profile_cluster(root: Path, out: Path, args: argparse.Namespace, py_spy: str, strace: str | None) -> dict[str, Any]:
    """Start a cluster under ``root``, load it, profile its processes into ``out``; what ran, as JSON."""
    users = sample_users()
    ids = [user["id"] for user in users]
    phases = {p.name: p for p in docraft_phases(min(ids), max(ids), sorted({u["country"] for u in users}))}
    phase = phases[PHASES[args.mode]]
    strace_window = STRACE_SECONDS + 1.0 if strace else 0.0
    load_seconds = WARMUP_SECONDS + args.duration + strace_window + 1.0
    cluster = UpCluster(root / "docraft")
    try:
        cluster.start()
        profiled = targets(cluster, cluster.processes.wait_ready())
        print(f"docraft: {cluster.url}; {phase.name} load ({' '.join(phase.script_args)}), {args.connections} conn.")
        for target in profiled:
            print(f"  {target.role}: {target.name} (pid {target.pid})")
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            load = pool.submit(
                run_wrk,
                "docraft",
                cluster.url,
                args.connections,
                load_seconds,
                phase.script_args,
                f"Bearer {cluster.token}",
            )
            time.sleep(WARMUP_SECONDS)  # let the load settle before measuring
            before, started = {t.role: cpu_times([t.pid]) for t in profiled}, time.monotonic()
            failures = run_all(
                {
                    t.role: record_command(py_spy, t.pid, args.duration, args.rate, out / f"{t.role}.collapsed.txt")
                    for t in profiled
                },
                None,
            )
            used = {t.role: spent(before[t.role], cpu_times([t.pid])) for t in profiled}
            elapsed = time.monotonic() - started
            if strace:
                failures |= {
                    f"{role} strace": error
                    for role, error in run_all(
                        {t.role: strace_command(strace, t.pid, out / f"{t.role}.strace.txt") for t in profiled},
                        STRACE_SECONDS,
                    ).items()
                }
            result = load.result()
    finally:
        cluster.close()
    for key, error in failures.items():
        print(f"  {key} failed: {error}", file=sys.stderr)
    return {
        "mode": args.mode,
        "phase": phase.name,
        "connections": args.connections,
        "profile_seconds": args.duration,
        "rate_hz": args.rate,
        "load": {
            "ops_per_s": round(result.ops_per_s, 1),
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "errors": result.error_count,
            "note": "the whole run, strace window included",
        },
        "processes": {
            t.role: {
                "name": t.name,
                "pid": t.pid,
                "cores": round(used[t.role].total_s / elapsed, 3),
                "system_share": round(used[t.role].system_share, 3),
            }
            for t in profiled
        },
        "failures": failures,
    }


def summarise_dir(out: Path) -> str:
    """Summarise the collapsed stacks in ``out`` (``summary.txt``, ``summary.json``, a flame graph per
    process) and return the text. A process without its file is left out; ``run.json`` heads it if present."""
    run_path = out / RUN_FILE
    run = ujson.loads(run_path.read_text(encoding="utf-8")) if run_path.exists() else {}
    sections = [] if not run else [f"run: {ujson.dumps({k: v for k, v in run.items() if k != 'failures'})}"]
    report: dict[str, Any] = {"run": run, "processes": {}}
    for role in ROLES:
        collapsed = out / f"{role}.collapsed.txt"
        if not collapsed.exists():
            continue
        stacks = parse_collapsed(collapsed.read_text(encoding="utf-8"))
        profile = summarise(stacks, CATEGORIES)
        facts = run.get("processes", {}).get(role, {})
        title = f"{role} {facts.get('name', '')}".strip()
        (out / f"{role}.svg").write_text(render(stacks, title), encoding="utf-8")
        report["processes"][role] = {**facts, **profile.as_json(TOP, WAITING)}
        sections.append(format_profile(f"{title}, {facts.get('cores', '?')} cores", profile, TOP, WAITING))
        strace_file = out / f"{role}.strace.txt"
        if strace_file.exists():
            counts = strace_file.read_text(encoding="utf-8")
            report["processes"][role]["strace"] = counts
            sections.append(f"-- strace -c -f, {STRACE_SECONDS:.0f} s ({role})\n{counts.rstrip()}")
    text = "\n\n".join(sections) + "\n"
    (out / "summary.txt").write_text(text, encoding="utf-8")
    (out / "summary.json").write_text(ujson.dumps(report, indent=2), encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=sorted(PHASES), default="write", help="the load (default write)")
    parser.add_argument("--duration", type=int, default=15, help="seconds of profiling (default 15)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second (default 100)")
    parser.add_argument("--strace", action="store_true", help="then strace -c each process for 5 s")
    parser.add_argument("--out", type=Path, help="output directory (default bench-results/profile-TIMESTAMP)")
    parser.add_argument("--from", dest="source", type=Path, help="summarise this earlier output again; run nothing")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.connections < 1 or args.rate < 1:
        parser.error("--duration, --connections and --rate must be at least 1")

    if args.source is not None:
        print(summarise_dir(args.source), end="")
        return 0
    try:
        require("wrk", "Debian package wrk: apt-get install wrk")
        py_spy = require("py-spy", "PyPI package py-spy: pip install py-spy")
        strace = require("strace", "Debian package strace: apt-get install strace") if args.strace else None
    except ToolMissing as exc:
        print(f"cannot profile: {exc}", file=sys.stderr)
        return 2

    stop_clusters_on_sigterm()
    out = args.out or Path("bench-results") / time.strftime("profile-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="docraft-profile-"))
    try:
        run = profile_cluster(root, out, args, py_spy, strace)
    except Exception:
        print(f"failed; logs and data kept in {root}", file=sys.stderr)
        raise
    if run["load"]["errors"]:
        print(f"{run['load']['errors']} requests failed; logs kept in {root}", file=sys.stderr)
    else:
        shutil.rmtree(root, ignore_errors=True)
    (out / RUN_FILE).write_text(ujson.dumps(run, indent=2), encoding="utf-8")
    print(summarise_dir(out), end="")
    print(f"written to {out}")
    return 1 if run["failures"] or run["load"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
