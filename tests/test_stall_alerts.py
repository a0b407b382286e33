"""A shard that loses its leader raises ``no_leader``, and it clears once one is elected (real cluster).

``apply_stalled`` needs a replica that stops applying what it committed, which no
fault the harness can inject provokes; tests/test_integrity_units.py covers it
with explicit times.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import ujson

from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster

NO_LEADER_AFTER = 1.0
# From the pause to the alert: the survivor notices (an election timeout, or the
# leader fallback of 1 s), no_leader_after passes, then a monitor round ends (it
# waits 1 s for the paused replicas); the rest is slack for a loaded machine.
RAISE_WITHIN = NO_LEADER_AFTER + 8.0


class Webhook:
    """An alert receiver on loopback; each POSTed body lands in ``bodies``."""

    def __init__(self) -> None:
        self.bodies: queue.Queue[dict[str, Any]] = queue.Queue()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.put(ujson.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # tests run silently

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)  # bound and kept: no port race
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next_matching(self, kind: str, shard: str, active: bool, timeout: float) -> dict[str, Any]:
        """The next posted alert of ``kind`` for ``shard`` with that ``active`` state; others are skipped."""
        end = time.monotonic() + timeout
        while (remaining := end - time.monotonic()) > 0:
            try:
                body = self.bodies.get(timeout=remaining)
            except queue.Empty:
                break
            if (body["kind"], body["shard"], body["active"]) == (kind, shard, active):
                return body
        raise AssertionError(f"no webhook post of {kind} for {shard} (active={active}) within {timeout}s")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


def no_leader_alerts(cluster: Cluster) -> list[dict[str, Any]]:
    code, body = cluster.get("/_admin/alerts")
    assert code == 200, body
    return [a for a in body["active"] if a["kind"] == "no_leader"]


def test_a_shard_without_a_leader_raises_no_leader_until_one_is_elected(
    cluster_factory: Callable[..., Cluster], webhook: Webhook
) -> None:
    cluster = cluster_factory(
        shards=2,
        sections={
            "integrity": {"no_leader_after": NO_LEADER_AFTER, "monitor_interval": 0.2},
            "alerts": {"webhooks": [webhook.url]},
        },
    )
    leader = cluster.leader_of("s0")
    # the report the monitor reads carries each replica's Raft progress
    code, report = cluster.get("/_admin/digest", base=cluster.replica_url(leader))
    assert code == 200, report
    assert (report["role"], report["fault"]) == ("leader", None)
    assert report["term"] >= 1 and report["commit_index"] >= report["raft_applied_index"] >= 1
    # elections while the cluster started may have raised it: start from none
    wait_for(lambda: no_leader_alerts(cluster) == [], 10, "no no_leader alert before the pause")

    paused = [leader, next(r for r in cluster.replica_ids("s0") if r != leader)]
    try:
        for replica in paused:
            cluster.kill(replica, signal.SIGSTOP)
        stopped_at = time.monotonic()
        alerts = wait_for(lambda: no_leader_alerts(cluster), RAISE_WITHIN, "a no_leader alert for s0")
        assert time.monotonic() - stopped_at >= NO_LEADER_AFTER
        assert [(a["shard"], a["replica"]) for a in alerts] == [("s0", None)], alerts
        assert alerts[0]["message"].startswith("shard s0 has had no leader for ")
        raised = webhook.next_matching("no_leader", "s0", active=True, timeout=5)
        assert raised["replica"] is None and raised["cleared_at"] is None
        log = (cluster.root / "logs" / "d0.log").read_text()
        assert "ALERT no_leader shard=s0 replica=None" in log
    finally:
        for replica in paused:
            cluster.kill(replica, signal.SIGCONT)

    wait_for(lambda: no_leader_alerts(cluster) == [], 15, "the no_leader alert to clear")
    cleared = webhook.next_matching("no_leader", "s0", active=False, timeout=5)
    assert cleared["cleared_at"] >= cleared["raised_at"]
    cluster.leader_of("s0")
    recent = cluster.get("/_admin/alerts")[1]["recent"]
    # s1 kept its leader throughout
    assert [(a["shard"], a["active"]) for a in recent if a["kind"] == "no_leader"] == [("s0", False)], recent
