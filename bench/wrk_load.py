"""Drive an HTTP server with ``wrk`` and one of the Lua scripts in ``bench/wrk/``.

Each script's ``done()`` prints one ``WRK_REPORT {json}`` line (see
``bench/wrk/common.lua``); ``parse_report`` reads it, so nothing depends on
wrk's human-readable output.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ujson

SCRIPTS = Path(__file__).parent / "wrk"
REPORT_PREFIX = "WRK_REPORT "
ERROR_FIELDS = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")


class WrkFailed(RuntimeError):
    """wrk exited with an error or printed no report."""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run: ``requests`` counts every completed response, including non-2xx ones (``errors``)."""

    connections: int
    requests: int
    seconds: float
    errors: dict[str, int]
    p50_ms: float
    p99_ms: float
    mean_ms: float

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def ops_per_s(self) -> float:
        """Successful operations per second: responses that were not errors."""
        return max(self.requests - self.errors.get("status_errors", 0), 0) / self.seconds if self.seconds else 0.0


def parse_report(output: str, connections: int) -> LoadResult:
    """The result in wrk's ``output``. Raises ``WrkFailed`` when there is no well-formed report line."""
    for line in output.splitlines():
        if line.startswith(REPORT_PREFIX):
            try:
                report = ujson.loads(line[len(REPORT_PREFIX) :])
                return LoadResult(
                    connections=connections,
                    requests=int(report["requests"]),
                    seconds=report["duration_us"] / 1e6,
                    errors={name: int(report[name]) for name in ERROR_FIELDS},
                    p50_ms=report["p50_us"] / 1e3,
                    p99_ms=report["p99_us"] / 1e3,
                    mean_ms=report["mean_us"] / 1e3,
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise WrkFailed(f"malformed wrk report {line!r}: {exc}") from exc
    raise WrkFailed(f"wrk printed no {REPORT_PREFIX.strip()} line:\n{output}")


def wrk_threads(connections: int) -> int:
    """As many wrk threads as cores, but no more than connections."""
    return max(1, min(connections, os.cpu_count() or 1))


def run_wrk(
    script: str,
    url: str,
    connections: int,
    seconds: float,
    script_args: Sequence[str],
    authorization: str | None = None,
) -> LoadResult:
    """Run ``bench/wrk/<script>.lua`` against ``url`` with ``connections`` kept-alive connections for ``seconds``.

    Uses ``wrk_threads(connections)`` threads. ``authorization``
    is sent as the ``Authorization`` header of every request. Blocks until wrk ends;
    raises ``WrkFailed`` if it fails or reports nothing.
    """
    command = [
        "wrk",
        f"--threads={wrk_threads(connections)}",
        f"--connections={connections}",
        f"--duration={max(1, math.ceil(seconds))}s",
        "--timeout=10s",
        f"--script={SCRIPTS / script}.lua",
        url,
        "--",
        *script_args,
    ]
    env = {name: value for name, value in os.environ.items() if name != "BENCH_AUTHORIZATION"}
    if authorization is not None:
        env["BENCH_AUTHORIZATION"] = authorization
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=seconds + 60)
    if done.returncode != 0:
        raise WrkFailed(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse_report(done.stdout, connections)


def missing_tool(name: str, package: str) -> str | None:
    """Why ``name`` cannot run here, or ``None`` when it is on PATH."""
    if shutil.which(name) is None:
        return f"{name} is not installed (Debian package {package}: apt-get install {package})"
    return None
