"""A ``docraft up``-shaped cluster on free loopback ports, for benchmarks.

The same code as ``docraft up`` writes the cluster file (``node.launcher.prepare``:
its shape, defaults, ``[auth]`` and ``[http]``, and the user ``admin`` with a
token), starts the processes (``LocalCluster``) and loads the app's sample data
with that token. Only the ports differ: a block that is free right now
(``bench.ports``); if a process fails to start (another process took its port),
``start`` tries again with a new block in a new data directory.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from bench.ports import free_block
from node.launcher import ADMIN_TOKEN_NAME, Layout, LocalCluster, prepare
from node.loader import load_csv
from query.app import load_app

APP = "examples.people"
# Layout(port=P, raft_port=P + RAFT_OFFSET): the dispatcher on P, replica n on P + 100 + n and Raft on P + 200 + n.
RAFT_OFFSET = 200


def stop_clusters_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every ``finally`` that closes a cluster runs on the way out."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class UpCluster:
    """The processes of one ``docraft up``-shaped cluster under ``root``; ``close`` stops them all."""

    def __init__(self, root: Path, layout: Layout | None = None) -> None:
        """``layout`` gives the shape (its ports are replaced); ``docraft up``'s defaults if ``None``."""
        self.root = root
        self.shape = layout or Layout()
        self.local: LocalCluster | None = None
        self.token = ""

    @property
    def processes(self) -> LocalCluster:
        if self.local is None:
            raise RuntimeError("cluster not started")
        return self.local

    @property
    def url(self) -> str:
        return self.processes.config.dispatcher(None).http_url

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes.processes.values()]

    def start(self, attempts: int = 3, timeout: float = 60.0) -> UpCluster:
        """Start every process, wait for a leader of each shard and load the sample data.

        Raises ``TimeoutError`` (naming the logs) when no attempt came up.
        """
        count = self.shape.shards * self.shape.replicas
        offsets = [0, *range(100, 100 + count), *range(RAFT_OFFSET, RAFT_OFFSET + count)]
        for attempt in range(attempts):
            base = free_block(offsets)
            layout = Layout(self.shape.shards, self.shape.replicas, base, base + RAFT_OFFSET, self.shape.host)
            data_dir = self.root / f"attempt{attempt}"
            config = prepare(data_dir, APP, layout)
            self.token = (data_dir / ADMIN_TOKEN_NAME).read_text(encoding="utf-8").strip()
            self.local = LocalCluster(config, APP, data_dir / "logs")
            try:
                self.local.start_all()
                self.local.wait_ready(timeout)
                break
            except TimeoutError:
                self.local.stop()
                if attempt == attempts - 1:
                    raise
        self._load_sample()
        return self

    def _load_sample(self) -> None:
        app = load_app(APP)
        for model_name, csv_path in app.sample_data.items():
            report = load_csv(csv_path, app.model(model_name), self.url, progress=False, token=self.token)
            if report.rejected:
                raise RuntimeError(f"sample {model_name} was not loaded whole:\n{report.summary()}")

    def close(self) -> None:
        """Stop every process; safe to call when ``start`` failed or never ran."""
        if self.local is not None:
            self.local.stop()
