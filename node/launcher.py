"""``docraft up``: a local cluster of replica and dispatcher processes.

The first run writes ``cluster.toml`` (with a fresh Raft secret) into the
data directory and loads the app's sample data; later runs reuse the file and
every replica's data. The demo's ``[auth]`` lets anonymous clients call the
app's endpoints and read the cluster's status (``DEMO_AUTH``), and its
``[http]`` lets them call mutations by GET (``DEMO_HTTP``); the first run
also creates the user ``admin`` and writes its token to ``DATA_DIR/admin.token``
(mode 0600), with which it loads the sample. Each process is started as
``docraft node`` or ``docraft dispatcher`` on that file, exactly as on
separate hosts, with its output in ``DATA_DIR/logs/``. SIGINT or SIGTERM stops every process.
Every process binds the loopback address only. ``--tls`` adds ``[tls]`` to the
cluster file and makes its certificates in ``DATA_DIR/tls/`` (``node.certs``;
the CA is ``DATA_DIR/tls/ca.pem``). The data directory is 0700 and the cluster
file, the token and the keys 0600.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from consensus.members import MEMBERS_FILE
from consensus.replica import JOURNAL_FILE, SNAPSHOT_FILE
from node.admin import http_json
from node.certs import make_certificates
from node.cluster_secret import new_secret
from node.config import ClusterConfig, load_config, render_config
from node.listen_check import cluster_listeners, problems
from node.loader import LoadStopped, load_csv
from node.private_files import private_dir, write_secret
from node.signing import internal_key
from node.users import add_user
from query.app import App

CONFIG_NAME = "cluster.toml"
SAMPLE_MARKER = ".sample-loaded"
ADMIN_TOKEN_NAME = "admin.token"
ADMIN_USER = "admin"
TLS_DIR = "tls"
# What anonymous clients of the demo may do: call the app's endpoints (the original notes' URLs) and see
# the cluster's status. Bulk loading and admin actions take the admin token.
DEMO_AUTH: dict[str, dict[str, Any]] = {"auth": {"anonymous": ["read", "write", "status"]}}
# The original notes insert with a plain GET URL (insert_user?id=...); a cluster file for real deployments does not.
DEMO_HTTP: dict[str, dict[str, Any]] = {"http": {"mutations_by_get": True}}


@dataclass(frozen=True)
class Layout:
    """Shape and ports of a new local cluster."""

    shards: int = 2
    replicas: int = 3
    port: int = 8000
    raft_port: int = 7100
    host: str = "127.0.0.1"

    def render(self, app: str, sections: dict[str, dict[str, Any]] | None = None) -> str:
        """The cluster file's text; ``sections`` adds tables such as ``[integrity]``."""

        shard_list = []
        for s in range(self.shards):
            members = []
            for r in range(self.replicas):
                n = s * self.replicas + r
                rid = f"s{s}r{r}"
                members.append((rid, f"{self.host}:{self.raft_port + n}", f"{self.host}:{self.port + 100 + n}", rid))
            shard_list.append((f"s{s}", members))
        dispatchers = [("d0", f"{self.host}:{self.port}")]
        return render_config(new_secret(), app, shard_list, dispatchers, sections)


def stop_processes(processes: Iterable[subprocess.Popen[Any]], timeout: float = 10.0) -> None:
    """SIGTERM each of ``processes`` still running, then SIGKILL what still runs ``timeout`` seconds later."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    end = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(max(end - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class LocalCluster:
    """The processes of one cluster file on this machine; ``stop`` ends them all."""

    def __init__(
        self,
        config: ClusterConfig,
        app_module: str,
        log_dir: Path,
        extra_args: tuple[str, ...] = (),
        prefixes: dict[str, list[str]] | None = None,
        log_format: str = "text",
    ) -> None:
        """``prefixes`` maps a process name to a command prefix (``ip netns exec NS``, say); every process
        logs in ``log_format`` (``node.logs``)."""
        self.config = config
        self.app_module = app_module
        self.log_dir = log_dir
        self.extra_args = extra_args
        self.prefixes = prefixes or {}
        self.log_format = log_format
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _command(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "node.cli",
            *args,
            "--config",
            str(self.config.path),
            "--app",
            self.app_module,
            "--log-format",
            self.log_format,
        ]

    def start_replica(self, replica_id: str, bootstrap: bool = False) -> subprocess.Popen[bytes]:
        """Start (or restart) one replica process; ``bootstrap`` for the first start of a new group."""
        flags = ("--bootstrap",) if bootstrap else ()
        return self._spawn(replica_id, self._command("node", "--replica", replica_id, *flags, *self.extra_args))

    def start_dispatcher(self, dispatcher_id: str) -> subprocess.Popen[bytes]:
        return self._spawn(dispatcher_id, self._command("dispatcher", "--id", dispatcher_id))

    def start_all(self) -> None:
        """Start every process. A shard whose replicas all have empty data directories is a new group
        (a new cluster, or a shard added to the file): its replicas start with ``--bootstrap``. A lone
        empty replica of a group that has data joins it as a learner instead (a lost disk: repair it)."""
        for shard in self.config.shards:
            new_group = all(is_empty(replica.data_dir) for replica in shard.replicas)
            for replica in shard.replicas:
                self.start_replica(replica.id, bootstrap=new_group)
        for dispatcher in self.config.dispatchers:
            self.start_dispatcher(dispatcher.id)

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            process = subprocess.Popen(
                self.prefixes.get(name, []) + command,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[name] = process
        return process

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every process, then SIGKILL what is still running after ``timeout``."""
        stop_processes(self.processes.values(), timeout)

    def wait_ready(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until the first dispatcher reports a leader for every shard, and that it and the replicas
        are this cluster's own processes; return its shards' status.

        Asks as a cluster member (a signed request), whatever ``[auth]`` grants.
        A process counts as its own when ``/_admin/cluster`` reports the pid
        it was started with (another program may answer on its port). Raises
        ``TimeoutError`` naming the processes that exited, the processes that
        are not its own, or the shards still without a leader.
        """
        url = f"{self.config.dispatcher(None).http_url}/_admin/cluster"
        key = internal_key(self.config.secret)
        end = time.monotonic() + timeout
        missing: list[str] = ["(dispatcher not answering)"]
        while time.monotonic() < end:
            exited = self.exited()
            if exited:
                raise TimeoutError(f"{', '.join(exited)} exited early; see {self.log_dir}")
            try:
                status, body = http_json("GET", url, timeout=2, key=key, ca=self.config.ca)
            except OSError:
                status, body = 0, None
            if status != 200 or not isinstance(body, dict) or "shards" not in body:
                time.sleep(0.2)
                continue
            shards: list[dict[str, Any]] = body["shards"]
            missing = self.strangers(body) or [f"a leader for shard {s['id']}" for s in shards if s["leader"] is None]
            if not missing:
                return shards
            time.sleep(0.2)
        raise TimeoutError(f"still waiting after {timeout:.0f}s for: {', '.join(missing)} (at {url})")

    def strangers(self, status: dict[str, Any]) -> list[str]:
        """Processes this cluster started that ``status`` (``GET /_admin/cluster``) does not report
        with their pids: another program answers in their place, or they do not answer yet."""
        reported = {r["id"]: r.get("pid") for shard in status["shards"] for r in shard["replicas"]}
        reported[self.config.dispatcher(None).id] = status.get("pid")
        return [
            f"{name} (pid {process.pid}) to answer"
            if reported[name] is None
            else f"{name} (pid {process.pid}), but pid {reported[name]} answers in its place"
            for name, process in self.processes.items()
            if name in reported and reported[name] != process.pid
        ]

    def exited(self) -> list[str]:
        """The names of the processes that have exited."""
        return [name for name, process in self.processes.items() if process.poll() is not None]

    def log_tail(self, name: str, lines: int = 10) -> str:
        """The last ``lines`` lines of process ``name``'s log, indented (empty if it has none)."""
        try:
            text = (self.log_dir / f"{name}.log").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(f"    {line}" for line in text.splitlines()[-lines:])

    def cannot_serve(self) -> list[str]:
        """Why the cluster can no longer serve clients: its dispatchers have all exited, or a shard has
        lost a majority of its replicas; empty while it can."""
        exited = set(self.exited())
        reasons = []
        if all(d.id in exited for d in self.config.dispatchers):
            reasons.append("no dispatcher runs")
        for shard in self.config.shards:
            down = [r.id for r in shard.replicas if r.id in exited]
            if 2 * len(down) >= len(shard.replicas):
                reasons.append(f"shard {shard.id} lost a majority ({', '.join(down)} exited)")
        return reasons


def is_empty(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds no Raft state (absent, or without journal, snapshot and membership)."""
    return not any((data_dir / name).exists() for name in (JOURNAL_FILE, SNAPSHOT_FILE, MEMBERS_FILE))


def prepare(data_dir: Path, app_module: str, layout: Layout, tls: bool = False) -> ClusterConfig:
    """The cluster file of ``data_dir``, written (0600, with a fresh secret) if there is none; the directory is 0700.

    It has the user ``admin``, whose token is in ``data_dir/admin.token`` (0600).
    With ``tls`` a file without ``[tls]`` gains one naming ``data_dir/tls``, and
    a ``[tls]`` directory without a CA gets one and every member's certificate.
    """
    private_dir(data_dir)
    config_path = data_dir / CONFIG_NAME
    if not config_path.exists():
        write_secret(config_path, layout.render(app_module, {**DEMO_AUTH, **DEMO_HTTP}))
    config = load_config(config_path)
    if tls and config.tls is None:
        write_secret(config_path, f'{config_path.read_text(encoding="utf-8").rstrip()}\n\n[tls]\ndir = "{TLS_DIR}"\n')
        config = load_config(config_path)
    if config.tls is not None and not config.tls.ca.exists():
        make_certificates(config, config.tls.dir)
    if not any(user.name == ADMIN_USER for user in config.auth.users):
        write_secret(data_dir / ADMIN_TOKEN_NAME, add_user(config_path, ADMIN_USER, "admin"))
    return load_config(config_path)


def undo_prepare(data_dir: Path, before: set[Path] | None) -> None:
    """Remove what ``prepare`` wrote for a new cluster that never started: every entry of ``data_dir``
    not in ``before`` (its entries until then), and ``data_dir`` itself if it did not exist (``None``)."""
    for entry in set(data_dir.iterdir()) - (before or set()):
        if entry.is_dir():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if before is None:
        data_dir.rmdir()


def up(
    data_dir: Path,
    app: App,
    layout: Layout,
    load_sample: bool = True,
    extra_args: tuple[str, ...] = (),
    tls: bool = False,
    log_format: str = "text",
) -> int:
    """Run a local cluster in the foreground until SIGINT/SIGTERM; returns an exit code.

    ``tls``: serve HTTPS with certificates of its own (see ``prepare``);
    ``log_format``: its processes' (``node.logs``). Returns 1 without
    starting anything when one of the cluster file's addresses cannot be
    listened on (naming each), and 1 when its processes exit before the
    cluster is up or leave it unable to serve (printing each one's last log
    lines). The sample is loaded into a new cluster, or one holding no
    documents, and marked loaded only when every row was stored. A new
    cluster that cannot listen leaves nothing in ``data_dir``, so the next run
    takes the ports it is given; an existing one keeps its file's.
    """
    data_dir = data_dir.resolve()
    before = set(data_dir.iterdir()) if data_dir.is_dir() else None
    new = not (data_dir / CONFIG_NAME).exists()
    config = prepare(data_dir, app.module, layout, tls)
    unusable = problems(cluster_listeners(config))
    if unusable:
        if new:
            undo_prepare(data_dir, before)
            advice = "free them, or choose others with --port and --raft-port"
        else:
            advice = (
                f"{config.path} sets these ports (--port and --raft-port only shape a new cluster): free them, "
                "or start a new cluster in another --data-dir"
            )
        print("docraft up: " + "\n  ".join(["nothing started:", *unusable, advice]), file=sys.stderr)
        return 1
    token_path = data_dir / ADMIN_TOKEN_NAME
    cluster = LocalCluster(config, app.module, data_dir / "logs", extra_args, log_format=log_format)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cluster.start_all()
        shards = cluster.wait_ready()
        dispatcher_url = config.dispatcher(None).http_url
        marker = data_dir / SAMPLE_MARKER
        stored = sum(shard.get("documents") or 0 for shard in shards)
        if load_sample and app.sample_data and not marker.exists() and stored and not new:
            print(f"the cluster holds {stored} documents already (restored?): the sample is not loaded", flush=True)
        elif load_sample and app.sample_data and not marker.exists():
            if load_samples(app, dispatcher_url, token_path, config.ca):
                marker.write_text("sample data loaded\n", encoding="utf-8")
            else:
                print("the sample is not marked loaded: some rows were not stored", file=sys.stderr)
        print(f"docraft is up: dispatcher {dispatcher_url}  (data in {data_dir}, app {app.module})")
        for shard in shards:
            for replica in shard["replicas"]:
                where = f"{config.replica(replica['id']).http_url}  raft {replica['raft']}"
                print(f"  shard {shard['id']}  {replica['id']}  {where}  {replica['role']}")
        anonymous = ", ".join(sorted(str(g) for g in config.auth.anonymous)) or "nothing"
        token_note = (
            f"the admin token is in {token_path}"
            if token_path.exists()
            else f"no admin token file (docraft token rotate --config {config.path} --user {ADMIN_USER} makes one)"
        )
        print(f"anonymous clients may: {anonymous}; {token_note}")
        curl = f"curl --cacert {config.ca}" if config.ca is not None else "curl"
        print(f"try: {curl} '{dispatcher_url}/get_user?country=United%20States&limit=3'")
        print(f'admin and bulk calls take the token: {curl} -H "Authorization: Bearer $(cat {token_path})" ...')
        sys.stdout.flush()
        return watch(cluster, stopping)
    except TimeoutError as exc:
        print(f"docraft up failed: {exc}; logs in {cluster.log_dir}", file=sys.stderr)
        report_exits(cluster, cluster.exited())
        return 1
    finally:
        cluster.stop()
        print("docraft stopped", flush=True)


def load_samples(app: App, url: str, token_path: Path, ca: Path | None) -> bool:
    """Load each of ``app``'s sample files through ``url``; whether every row of every file was stored."""
    token = token_path.read_text(encoding="utf-8").strip() if token_path.exists() else None
    stored_all = True
    for model_name, csv_path in app.sample_data.items():
        try:
            report = load_csv(csv_path, app.model(model_name), url, progress=sys.stderr.isatty(), token=token, ca=ca)
        except (OSError, LoadStopped) as exc:
            print(f"sample {model_name}: not loaded: {exc}", file=sys.stderr, flush=True)
            return False
        print(f"sample {model_name}: {report.summary()}", flush=True)
        stored_all = stored_all and not report.rejected
    return stored_all


def watch(cluster: LocalCluster, stopping: threading.Event) -> int:
    """Report each process of ``cluster`` that exits, with its last log lines, until ``stopping`` is set
    (then 0) or the cluster cannot serve any more (then 1)."""
    reported: set[str] = set()
    while not stopping.wait(0.5):
        exited = [name for name in cluster.exited() if name not in reported]
        report_exits(cluster, exited)
        reported.update(exited)
        reasons = cluster.cannot_serve()
        if reasons:
            print(f"docraft up: the cluster cannot serve: {'; '.join(reasons)}", file=sys.stderr, flush=True)
            return 1
    return 0


def report_exits(cluster: LocalCluster, names: list[str]) -> None:
    """Print each named process's exit code and last log lines to standard error."""
    for name in names:
        code = cluster.processes[name].returncode
        tail = cluster.log_tail(name)
        print(f"process {name} exited with {code}; the end of {cluster.log_dir / name}.log:", file=sys.stderr)
        print(tail or "    (empty)", file=sys.stderr, flush=True)
