"""``docraft up`` tells the truth: about ports held by other programs, whose processes answer, whether the
sample was stored, and processes that die; with ``--log-format json`` a request can be followed from the
dispatcher to its leader. Real processes on loopback: ``docraft up`` runs as a subprocess."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ujson

from bench.ports import free_block
from node.admin import http_json
from node.config import load_config
from node.launcher import SAMPLE_MARKER, Layout, LocalCluster, prepare, stop_processes
from node.signing import internal_key
from tests.harness import wait_for

APP = "tests.apps.flawed_sample_app"
ROOT = Path(__file__).resolve().parent.parent


def up_command(data_dir: Path, port: int, raft_port: int, *extra: str) -> list[str]:
    """``docraft up`` for one shard of three replicas on ``port`` (replicas on port+100..) and ``raft_port``.."""
    return [
        sys.executable,
        "-m",
        "node.cli",
        "up",
        "--data-dir",
        str(data_dir),
        "--app",
        APP,
        "--shards",
        "1",
        "--replicas",
        "3",
        "--port",
        str(port),
        "--raft-port",
        str(raft_port),
        *extra,
    ]


@dataclass
class Up:
    """A running ``docraft up``: its process, and its output as it comes."""

    process: subprocess.Popen[str]
    data_dir: Path
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for stream, lines in ((self.process.stdout, self.stdout), (self.process.stderr, self.stderr)):
            threading.Thread(target=_collect, args=(stream, lines), daemon=True).start()

    def status(self) -> dict[str, Any]:
        config = load_config(self.data_dir / "cluster.toml")
        url = f"{config.dispatcher(None).http_url}/_admin/cluster"
        code, body = http_json("GET", url, timeout=5, key=internal_key(config.secret))
        assert code == 200, body
        status: dict[str, Any] = body
        return status


def _collect(stream: Any, lines: list[str]) -> None:
    for line in stream:
        lines.append(line)


def ports() -> tuple[int, int]:
    """A dispatcher port with its three replica ports (port+100..102) free, and three free Raft ports."""
    return free_block([0, 100, 101, 102]), free_block([0, 1, 2])


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    """``docraft up --log-format json`` of the flawed-sample app, running until the module's tests are done."""
    data_dir = tmp_path_factory.mktemp("up")
    port, raft_port = ports()
    command = up_command(data_dir, port, raft_port, "--log-format", "json")
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = Up(process, data_dir)
    try:
        wait_for(
            lambda: any("docraft is up" in line for line in running.stdout) or process.poll() is not None,
            90,
            "docraft up to say it is up",
        )
        assert process.poll() is None, "".join(running.stdout + running.stderr)
        yield running
    finally:
        stop_processes([process], timeout=30)


def test_a_port_held_by_another_program_is_named_and_nothing_starts(tmp_path: Path) -> None:
    port, raft_port = ports()
    with socket.socket() as other:
        other.bind(("127.0.0.1", port))
        other.listen()
        done = subprocess.run(
            up_command(tmp_path, port, raft_port), cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}, the dispatcher d0 http address" in done.stderr
    assert "Address already in use" in done.stderr
    assert "docraft is up" not in done.stdout
    assert not (tmp_path / "logs").exists(), "no process was started"


def test_a_new_cluster_that_cannot_listen_leaves_nothing_so_the_next_run_takes_its_ports(tmp_path: Path) -> None:
    data_dir = tmp_path / "docraft-data"
    (first, raft_port), (second, _) = ports(), ports()
    with socket.socket() as held_first, socket.socket() as held_second:
        for held, port in ((held_first, first), (held_second, second)):
            held.bind(("127.0.0.1", port))
            held.listen()
        for port in (first, second):
            done = subprocess.run(
                up_command(data_dir, port, raft_port), cwd=ROOT, capture_output=True, text=True, timeout=120
            )
            assert done.returncode == 1
            assert f"cannot listen on 127.0.0.1:{port}, the dispatcher d0 http address" in done.stderr
            assert done.stderr.splitlines()[-1] == "  free them, or choose others with --port and --raft-port"
            assert not data_dir.exists(), "a cluster that never started leaves no cluster file behind"


def test_an_existing_cluster_that_cannot_listen_names_the_file_that_sets_its_ports(tmp_path: Path) -> None:
    (port, raft_port), (other_port, _) = ports(), ports()
    config = prepare(tmp_path, APP, Layout(shards=1, replicas=3, port=port, raft_port=raft_port))
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        done = subprocess.run(
            up_command(tmp_path, other_port, raft_port), cwd=ROOT, capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}, the dispatcher d0 http address" in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"  {config.path} sets these ports (--port and --raft-port only shape a new cluster): free them, "
        "or start a new cluster in another --data-dir"
    )
    assert config.path.exists()


def test_a_sample_with_a_refused_row_is_not_marked_loaded(up: Up) -> None:
    assert any("3 rows stored, 1 rows rejected" in line for line in up.stdout), up.stdout
    assert not (up.data_dir / SAMPLE_MARKER).exists()
    assert any("not marked loaded" in line for line in up.stderr), up.stderr


def test_status_reports_the_pids_of_the_processes_up_started(up: Up) -> None:
    status = up.status()
    replicas = {r["id"]: r["pid"] for shard in status["shards"] for r in shard["replicas"]}
    assert set(replicas) == {"s0r0", "s0r1", "s0r2"}
    assert all(isinstance(pid, int) and pid > 0 for pid in [*replicas.values(), status["pid"]])
    assert len({status["pid"], *replicas.values()}) == 4, "four processes"


def test_a_cluster_answering_with_other_processes_is_not_ready(up: Up, tmp_path: Path) -> None:
    """Another program answers on the dispatcher's port (here: the running cluster, not this launcher's)."""
    config = load_config(up.data_dir / "cluster.toml")
    mine = LocalCluster(config, APP, tmp_path)
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        mine.processes["d0"] = impostor  # what this launcher started as d0; another process answers at d0's port
        with pytest.raises(TimeoutError, match=rf"d0 \(pid {impostor.pid}\), but pid \d+ answers in its place"):
            mine.wait_ready(timeout=3)
    finally:
        stop_processes([impostor])


def test_json_logs_follow_a_request_from_the_dispatcher_to_the_leader(up: Up) -> None:
    config = load_config(up.data_dir / "cluster.toml")
    key = f"follow-{uuid.uuid4().hex[:8]}"
    code, body = http_json(
        "POST",
        f"{config.dispatcher(None).http_url}/add_note",
        {"id": 10, "text": "followed"},
        timeout=10,
        headers={"Idempotency-Key": key},
    )
    assert code == 200, body
    leader = next(shard["leader"] for shard in up.status()["shards"])
    request_id = f"key:{key}"

    def lines_of(name: str) -> list[dict[str, Any]]:
        text = (up.data_dir / "logs" / f"{name}.log").read_text(encoding="utf-8")
        return [ujson.loads(line) for line in text.splitlines() if line.startswith("{")]

    def marked(name: str) -> list[dict[str, Any]]:
        return [line for line in lines_of(name) if line.get("request_id") == request_id]

    dispatcher_line = wait_for(lambda: marked("d0"), 10, "the dispatcher's line of the request")[0]
    leader_line = wait_for(lambda: marked(leader), 10, f"the leader {leader}'s line of the request")[0]
    assert {"time", "level", "logger", "message"} <= set(dispatcher_line)
    assert dispatcher_line["process"] == "d0" and "/add_note" in dispatcher_line["message"]
    assert (leader_line["process"], leader_line["replica"], leader_line["shard"]) == (leader, leader, "s0")
    assert "/_shard/write" in leader_line["message"]
    every = [line for name in ("d0", "s0r0", "s0r1", "s0r2") for line in lines_of(name)]
    assert every and all({"time", "level", "logger", "message", "process"} <= set(line) for line in every)


def test_up_exits_non_zero_with_the_last_log_lines_when_its_dispatcher_dies(up: Up) -> None:
    """Runs last in this module: it ends the cluster."""
    os.kill(up.status()["pid"], signal.SIGKILL)
    wait_for(lambda: up.process.poll() is not None, 30, "docraft up to exit")
    assert up.process.returncode == 1
    wait_for(lambda: any("docraft stopped" in line for line in up.stdout), 10, "docraft up to stop its processes")
    errors = "".join(up.stderr)
    assert "process d0 exited with -9; the end of" in errors
    assert '"process":"d0"' in errors, "d0's last log lines are shown"
    assert "the cluster cannot serve: no dispatcher runs" in errors


def test_a_cluster_that_holds_documents_is_not_given_the_sample_again(up: Up) -> None:
    """Runs last: the module's cluster (some sample rows stored, no marker, like a restored cluster) is
    stopped and started again; the sample is not loaded into a cluster that holds documents."""
    stop_processes([up.process], timeout=30)
    port, raft_port = ports()  # ignored: the cluster file sets the ports
    process = subprocess.Popen(
        up_command(up.data_dir, port, raft_port), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    again = Up(process, up.data_dir)
    try:
        wait_for(
            lambda: any("docraft is up" in line for line in again.stdout) or process.poll() is not None,
            90,
            "docraft up to say it is up again",
        )
        assert process.poll() is None, "".join(again.stdout + again.stderr)
        assert any(re.match(r"the cluster holds \d+ documents already", line) for line in again.stdout), again.stdout
        assert not any("rows stored" in line for line in again.stdout), "no sample row was sent again"
    finally:
        stop_processes([process], timeout=30)
