"""Throughput and latency of a docraft cluster through its dispatcher.

    python -m bench.throughput --start              # starts a `docraft up`-shaped cluster itself
    python -m bench.throughput --url http://127.0.0.1:8000 --clients 32 --duration 10 --json out.json
    python -m bench.throughput --start --token      # each workload anonymous, then with a token, in one run

Runs, in order: a no-op Tornado endpoint in a separate process (the
machine's baseline, measured in the same run), key-addressed writes
(``insert_user``), reads by key (``get_user?id=``) and the scatter query
(``get_user?country=``), each with N concurrent clients for D seconds, plus
writes with one client for the lone-write latency. Prints ops/s and p50/p99
latency, and each throughput as a ratio to the no-op baseline. With
``--token`` each workload runs twice in turn, anonymously and with clients
sending ``Authorization: Bearer`` (the admin token: of a user made for the
run with ``--start``, else the one in ``--token-file``), so the cost of
authenticating a request is measured under the same conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import ujson
from tornado.httpclient import AsyncHTTPClient

from bench.ports import free_block, free_ports

RAFT_BELOW = 500  # a --start cluster's first Raft port is its dispatcher port minus this
# Kept-alive connections, one per client: the load generator must not pay a TCP handshake per request.
AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=512)


@dataclass
class Result:
    name: str
    clients: int
    ops: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    ratio_to_noop: float | None = None

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def line(self) -> str:
        ratio = "" if self.ratio_to_noop is None else f"  {self.ratio_to_noop:5.2f}x no-op"
        return (
            f"{self.name:<34} {self.clients:>3} clients  {self.ops_per_s:8.0f} ops/s  "
            f"p50 {self.p50_ms:6.2f} ms  p99 {self.p99_ms:6.2f} ms  errors {self.errors}{ratio}"
        )


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(int(fraction * len(sorted_values)), len(sorted_values) - 1)]


async def drive(
    name: str,
    base_url: str,
    clients: int,
    seconds: float,
    next_path: Callable[[], str],
    headers: dict[str, str] | None = None,
) -> Result:
    """``clients`` connections each sending GET ``next_path()`` (with ``headers``) back to back for ``seconds``."""
    latencies: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    http = AsyncHTTPClient()

    async def client() -> None:
        nonlocal errors
        while time.perf_counter() < end:
            start = time.perf_counter()
            response = await http.fetch(base_url + next_path(), headers=headers, raise_error=False)
            if response.code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return Result(
        name,
        clients,
        len(latencies),
        errors,
        elapsed,
        percentile(latencies, 0.5) * 1e3,
        percentile(latencies, 0.99) * 1e3,
    )


def user_paths(first_id: int) -> tuple[Callable[[], str], list[int]]:
    """Insert paths with fresh ids; the list collects the ids handed out."""
    counter = itertools.count(first_id)
    issued: list[int] = []
    countries = ["United States", "Australia", "Canada", "France", "Japan"]

    def next_path() -> str:
        uid = next(counter)
        issued.append(uid)
        query = urllib.parse.urlencode(
            {
                "id": uid,
                "first_name": "Bench",
                "last_name": f"User{uid}",
                "country": countries[uid % len(countries)],
                "address": "1 Main St.",
                "city": "Town",
            }
        )
        return f"/insert_user?{query}"

    return next_path, issued


def cycle_paths(paths: list[str]) -> Callable[[], str]:
    iterator: Iterator[str] = itertools.cycle(paths)
    return lambda: next(iterator)


def wait_until_up(url: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing answers at {url}")


async def run(args: argparse.Namespace, cluster_url: str, token: str | None = None) -> list[Result]:
    """The baseline, then every workload: once anonymously, and once more with ``token`` right after if given."""
    results: list[Result] = []
    noop = subprocess.Popen([sys.executable, "-m", "bench.noop_server", "--port", str(args.noop_port)])
    try:
        noop_url = f"http://127.0.0.1:{args.noop_port}"
        wait_until_up(noop_url + "/noop")
        baseline = await drive("no-op tornado endpoint", noop_url, args.clients, args.duration, lambda: "/noop")
        results.append(baseline)
        print(baseline.line(), flush=True)
    finally:
        noop.terminate()
        noop.wait()

    modes: list[tuple[str, dict[str, str] | None]] = [("", None)]
    if token is not None:
        modes.append((" [token]", {"Authorization": f"Bearer {token}"}))

    async def measure(name: str, clients: int, path: Callable[[], str]) -> None:
        for suffix, headers in modes:
            result = await drive(name + suffix, cluster_url, clients, args.duration, path, headers)
            results.append(result)
            print(result.line(), flush=True)

    first_id = 10_000_000 + random.randrange(10_000) * 100_000
    write_path, written = user_paths(first_id)  # one sequence of fresh ids for every write workload
    await measure("write (insert_user)", args.clients, write_path)
    keys = written[: min(len(written), 5000)] or [1001]
    await measure("write, one client", 1, write_path)
    random.shuffle(keys)
    await measure("read by key (get_user)", args.clients, cycle_paths([f"/get_user?id={k}" for k in keys]))
    countries = ("United%20States", "Australia", "Japan")
    scatter = cycle_paths([f"/get_user?country={c}&limit=10" for c in countries])
    await measure("scatter (get_user?country)", args.clients, scatter)
    for result in results[1:]:
        result.ratio_to_noop = result.ops_per_s / baseline.ops_per_s if baseline.ops_per_s else None
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="dispatcher URL of a running cluster")
    parser.add_argument("--start", action="store_true", help="start a 2x3 cluster (docraft up defaults) first")
    parser.add_argument(
        "--port", type=int, help="dispatcher port of the --start cluster (default: a block of free ports)"
    )
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per workload")
    parser.add_argument("--noop-port", type=int, help="port of the no-op baseline server (default: a free one)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--no-digests",
        action="store_true",
        help="with --start: replicas keep no state digests (to measure their cost)",
    )
    parser.add_argument(
        "--fsync",
        action="store_true",
        help="with --start: [raft] fsync = true, each replica flushes its journal before acknowledging",
    )
    parser.add_argument(
        "--token",
        action="store_true",
        help="run each workload again with clients sending the admin token, to price authentication",
    )
    parser.add_argument(
        "--token-file",
        default="docraft-data/admin.token",
        help="without --start: the file holding the token --token sends (docraft up's admin token by default)",
    )

    args = parser.parse_args(argv)
    if args.noop_port is None:
        args.noop_port = free_ports(1)[0]
    if args.start and args.port is None:
        # Layout(port=P, raft_port=P - RAFT_BELOW): the dispatcher on P, replicas on P + 100.., Raft on P - RAFT_BELOW..
        args.port = RAFT_BELOW + free_block([0, RAFT_BELOW, *range(RAFT_BELOW + 100, RAFT_BELOW + 106), *range(6)])

    cluster = None
    url = args.url
    token = Path(args.token_file).read_text(encoding="utf-8").strip() if args.token and not args.start else None
    if args.start:
        from node.config import load_config
        from node.launcher import Layout, LocalCluster
        from node.users import add_user

        folder = Path(tempfile.mkdtemp(prefix="docraft-bench-"))
        (folder / "cluster.toml").write_text(
            Layout(port=args.port, raft_port=args.port - RAFT_BELOW).render(
                "examples.people",
                {
                    "integrity": {"digests": not args.no_digests},
                    "raft": {"fsync": args.fsync},
                    "auth": {"anonymous": ["read", "write", "status"]},  # its clients send no token
                    "http": {"mutations_by_get": True},  # they write with GET /insert_user?...
                },
            )
        )
        if args.token:
            token = add_user(folder / "cluster.toml", "admin", "admin")
        cluster = LocalCluster(load_config(folder / "cluster.toml"), "examples.people", folder / "logs")
        cluster.start_all()
        try:
            cluster.wait_ready()
        except TimeoutError:
            cluster.stop()  # never leave a half-started cluster behind
            raise
        url = f"http://127.0.0.1:{args.port}"
        print(f"started a 2x3 cluster in {folder}", flush=True)
    try:
        wait_until_up(url + "/_admin/cluster")
        results = asyncio.run(run(args, url, token))
    finally:
        if cluster is not None:
            cluster.stop()
    summary = [{**asdict(r), "ops_per_s": round(r.ops_per_s, 1)} for r in results]
    if args.json:
        Path(args.json).write_text(ujson.dumps(summary, indent=2))
    return 0 if all(r.errors == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
