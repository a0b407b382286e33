"""Fuzzing a running cluster with schemathesis against the OpenAPI document it serves.

    python -m bench.fuzz                          # about 5,000 cases or more: the benchmark run
    python -m bench.fuzz --cases 10 --json fuzz.json

Starts a cluster shaped as ``docraft up``'s (its demo cluster file: anonymous
clients may call the endpoints, mutations by GET allowed, plus a user
``admin``), then runs ``schemathesis run`` on ``GET /_schema/openapi.json``
twice: anonymously and with the admin token. Schemathesis generates up to
``--cases`` requests per operation in each of its phases (examples, coverage of
each schema's edges, random fuzzing), valid and invalid, and checks each
answer: no ``5xx``, and a status, content type, headers and body the document
promises. Prints both runs' case counts and failures; exits 1 on any failure,
on fewer cases than ``--min-cases`` in all, or when a run did not complete.
The run directory (cluster file, logs, schemathesis' reports) is removed on
success unless ``--keep``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import ujson

from node.config import load_config
from node.launcher import DEMO_AUTH, DEMO_HTTP, Layout, LocalCluster
from node.users import add_user

APP = "examples.people"
# Every check of an answer against the document; the checks that judge the server's choices
# (whether it accepts what the schema allows, rejects what it does not) are left out on purpose:
# docraft refuses more than the schema can say (a limit over [limits], a cursor it did not seal).
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)


@dataclass
class FuzzRun:
    """One schemathesis run: who it called as, how many cases it generated, what failed."""

    credentials: str
    cases: int
    complete: bool
    failures: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.complete and not self.failures and not self.errors

    def line(self) -> str:
        verdict = "ok" if self.ok else f"{len(self.failures)} failures, {len(self.errors)} errors"
        return f"{self.credentials:<10} {self.cases:>6} cases  {verdict}"


def fuzz(
    url: str, credentials: str, headers: dict[str, str], cases: int, seed: int, folder: Path, workers: int = 1
) -> FuzzRun:
    """Run schemathesis against the document at ``url`` sending ``headers``; its report and output go to ``folder``."""
    report = folder / f"schemathesis-{credentials}.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/_schema/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(cases),
        "--seed",
        str(seed),
        "--workers",
        str(workers),
        "--request-timeout",
        "30",
        "--suppress-health-check",
        "all",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--output-truncate",
        "false",
        *(item for name, value in headers.items() for item in ("-H", f"{name}: {value}")),
    ]
    with open(folder / f"schemathesis-{credentials}.log", "wb") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False, cwd=folder)
    if not report.exists():
        return FuzzRun(credentials, 0, False, errors=[{"title": "schemathesis wrote no report", "count": 1}])
    document = ujson.loads(report.read_text())
    return FuzzRun(
        credentials,
        document["test_cases"]["generated"],
        bool(document["complete"]),
        document["failures"],
        document["errors"],
    )


def start_cluster(folder: Path, port: int, shards: int, replicas: int) -> tuple[LocalCluster, str]:
    """A started cluster as ``docraft up`` would make it in ``folder``, and the admin token."""
    config_path = folder / "cluster.toml"
    layout = Layout(shards=shards, replicas=replicas, port=port, raft_port=port - 500)
    config_path.write_text(layout.render(APP, {**DEMO_AUTH, **DEMO_HTTP}))
    token = add_user(config_path, "admin", "admin")
    cluster = LocalCluster(load_config(config_path), APP, folder / "logs")
    cluster.start_all()
    cluster.wait_ready()
    return cluster, token


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300, help="cases per operation and phase (--max-examples)")
    parser.add_argument("--min-cases", type=int, default=5000, help="fail with fewer cases than this in all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--port", type=int, default=8700, help="the dispatcher's; replicas take the next ports")
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="schemathesis' concurrent workers")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the run directory even on success")
    args = parser.parse_args(argv)

    folder = Path(tempfile.mkdtemp(prefix="docraft-fuzz-"))
    cluster, token = start_cluster(folder, args.port, args.shards, args.replicas)
    url = f"http://127.0.0.1:{args.port}"
    print(f"fuzzing {url}/_schema/openapi.json ({args.shards}x{args.replicas} cluster in {folder})", flush=True)
    try:
        runs = []
        for credentials, headers in (("anonymous", {}), ("admin", {"Authorization": f"Bearer {token}"})):
            runs.append(fuzz(url, credentials, headers, args.cases, args.seed, folder, args.workers))
            print(runs[-1].line(), flush=True)
    finally:
        cluster.stop()
    total = sum(run.cases for run in runs)
    ok = all(run.ok for run in runs) and total >= args.min_cases
    print(f"{total} cases in all (at least {args.min_cases} wanted): {'ok' if ok else 'FAILED'}")
    for run in runs:
        for failure in run.failures:
            print(f"  {run.credentials}: {failure['title']} x{failure['count']} in {', '.join(failure['operations'])}")
        for error in run.errors:
            print(f"  {run.credentials}: error: {error['title']} x{error['count']}")
    if args.json:
        Path(args.json).write_text(ujson.dumps({"total": total, "ok": ok, "runs": [asdict(r) for r in runs]}, indent=2))
    if ok and not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"schemathesis' output and reports, and the cluster's logs: {folder}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
