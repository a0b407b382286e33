"""Divergent replicas and tampered code raise admin alerts (real clusters on loopback)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.admin import agrees
from tests.harness import Cluster, wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent


def user(uid: int) -> dict[str, Any]:
    return {"id": uid, "first_name": f"F{uid}", "last_name": "L", "country": "Peru"}


def active_alerts(cluster: Cluster) -> list[dict[str, Any]]:
    code, body = cluster.get("/_admin/alerts")
    assert code == 200, body
    alerts: list[dict[str, Any]] = body["active"]
    return alerts


def alerts_of(cluster: Cluster, kind: str) -> list[str]:
    return sorted(a["replica"] for a in active_alerts(cluster) if a["kind"] == kind)


def settled(cluster: Cluster, uids: list[int]) -> str:
    """Wait until every replica holds ``uids``; return a follower of s0."""
    leader = cluster.leader_of("s0")
    for replica in cluster.replica_ids("s0"):
        for uid in uids:
            wait_for(
                lambda r=replica, u=uid: cluster.get(
                    "/get_user", base=cluster.replica_url(r), id=u, consistency="stale"
                )[1].get("items"),
                5,
                f"user {uid} on {replica}",
            )
    return next(r for r in cluster.replica_ids("s0") if r != leader)


def test_corrupted_replica_is_flagged_alone_and_repair_clears_it(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, extra_args=("--unsafe-fault-injection",))
    for uid in (776, 777, 778):
        assert cluster.post("/insert_user", user(uid))[0] == 200
    victim = settled(cluster, [776, 777, 778])
    assert active_alerts(cluster) == []

    code, body = cluster.post(
        "/_admin/fault/corrupt",
        {"collection": "User", "id": 777, "fields": {"first_name": "Eve"}},
        base=cluster.replica_url(victim),
    )
    assert code == 200 and body["corrupted"]["first_name"] == "Eve"
    wait_for(lambda: alerts_of(cluster, "divergence") == [victim], 5, f"a divergence alert naming {victim}")
    alert = next(a for a in active_alerts(cluster) if a["kind"] == "divergence")
    assert alert["shard"] == "s0" and alert["index"] > 0 and len(set(alert["digests"].values())) == 2
    assert len(active_alerts(cluster)) == 1, active_alerts(cluster)

    # stale reads through the dispatcher rotate over replicas, but never reach the flagged one
    served = set()
    for _ in range(12):
        code, body = cluster.get("/get_user", id=777, consistency="stale")
        assert code == 200 and body["items"][0]["first_name"] == "F777", body
        served.add(body["served_by"][0]["replica"])
    assert victim not in served and len(served) == 2

    repair = subprocess.run(
        [
            sys.executable,
            "-m",
            "node.cli",
            "repair",
            "--config",
            str(cluster.root / "cluster.toml"),
            "--replica",
            victim,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert repair.returncode == 0, repair.stdout + repair.stderr
    wait_for(lambda: active_alerts(cluster) == [], 5, "the alert to clear")
    assert agrees(cluster.processes.config, victim)
    code, body = cluster.get("/get_user", base=cluster.replica_url(victim), id=777, consistency="stale")
    assert body["items"][0]["first_name"] == "F777"
    recent = cluster.get("/_admin/alerts")[1]["recent"]
    assert [(a["kind"], a["replica"], a["active"]) for a in recent] == [("divergence", victim, False)]


def test_document_edited_in_a_snapshot_file_is_detected(cluster_factory) -> None:
    cluster = cluster_factory(shards=1, raft={"compaction_min_entries": 20, "compaction_min_seconds": 1})
    uids = list(range(1000, 1060))
    for uid in uids:
        assert cluster.post("/insert_user", user(uid))[0] == 200
    victim = settled(cluster, uids)
    snapshot = cluster.root / victim / "snapshot.json"
    wait_for(lambda: snapshot.exists(), 10, f"a snapshot of {victim}")
    cluster.kill(victim, signal.SIGTERM)
    document = json.loads(snapshot.read_text())
    users = document["state"]["collections"]["User"]
    users[0]["first_name"] = "Mallory"
    snapshot.write_text(json.dumps(document))
    cluster.restart(victim)
    wait_for(lambda: alerts_of(cluster, "divergence") == [victim], 10, f"a divergence alert naming {victim}")
    assert alerts_of(cluster, "code_mismatch") == []


def test_replica_running_modified_app_code_serves_nothing(cluster_factory, tmp_path: Path) -> None:
    cluster = cluster_factory(shards=1)
    assert cluster.post("/insert_user", user(5))[0] == 200
    victim = settled(cluster, [5])
    altered = tmp_path / "altered"
    shutil.copytree(ROOT / "examples", altered / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    with open(altered / "examples" / "people" / "app.py", "a") as app:
        app.write("\n# a change nobody approved\n")
    cluster.kill(victim, signal.SIGTERM)
    cluster.processes.prefixes[victim] = ["env", "-C", str(altered)]
    cluster.restart(victim)
    wait_for(lambda: alerts_of(cluster, "code_mismatch") == [victim], 10, f"a code_mismatch alert naming {victim}")
    assert alerts_of(cluster, "divergence") == []
    code, body = cluster.get("/get_user", base=cluster.replica_url(victim), id=5, consistency="stale")
    assert code == 503 and body["error"]["code"] == "code_mismatch", body
    # the rest of the shard goes on serving and taking writes
    assert cluster.post("/insert_user", user(6))[0] == 200
    assert cluster.get("/get_user", id=6)[1]["items"][0]["id"] == 6


def test_no_false_alarm_under_write_load_with_leader_kill_and_pauses(cluster_factory) -> None:
    import threading

    cluster = cluster_factory(shards=1)
    stop = threading.Event()
    written: list[int] = []

    def writer() -> None:
        uid = 50_000
        while not stop.is_set():
            uid += 1
            if cluster.post("/insert_user", user(uid))[0] == 200:
                written.append(uid)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        wait_for(lambda: len(written) > 50, 10, "writes")
        leader = cluster.leader_of("s0")
        cluster.kill(leader)
        survivor = cluster.leader_of("s0", other_than=leader)
        follower = next(r for r in cluster.replica_ids("s0") if r not in (leader, survivor))
        before = len(written)
        wait_for(lambda: len(written) > before + 50, 10, "writes after the kill")
        cluster.restart(leader)
        cluster.kill(follower, signal.SIGSTOP)
        before = len(written)
        wait_for(lambda: len(written) > before + 100, 10, "writes while a follower is paused")
        cluster.kill(follower, signal.SIGCONT)
        before = len(written)
        wait_for(lambda: len(written) > before + 100, 10, "writes after the pause")
    finally:
        stop.set()
        thread.join(30)
    # everyone caught up and compared: no alert is active, and none but unreachable ones ever were
    wait_for(lambda: active_alerts(cluster) == [], 15, "all replicas reachable and agreeing")
    for replica in cluster.replica_ids("s0"):
        wait_for(lambda r=replica: agrees(cluster.processes.config, r), 10, f"{replica} agreeing")
    recent = cluster.get("/_admin/alerts")[1]["recent"]
    assert {a["kind"] for a in recent} <= {"replica_unreachable"}, recent
