"""``GET /livez`` and ``GET /readyz`` (``node.health``): the checks, and a live cluster losing its majority."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from node.health import READY_LAG, replica_checks, shard_check
from tests.harness import Cluster, http, running, wait_for

FOLLOWER = {
    "role": "follower",
    "term": 4,
    "leader_raft": "127.0.0.1:7000",
    "commit_index": 90,
    "leader_commit_index": 100,
    "applied_index": 90,
    "ready": None,
    "fault": None,
}


def failed(status: dict[str, Any], code_ok: bool = True) -> dict[str, str | None]:
    """The failed checks of a replica in ``status``, with their reasons."""
    return {check.name: check.reason for check in replica_checks(status, code_ok) if not check.ok}


def test_a_caught_up_follower_of_a_known_leader_is_ready() -> None:
    checks = replica_checks(FOLLOWER, code_ok=True)
    assert [check.name for check in checks] == ["leader", "applied", "fault", "code"]
    assert all(check.ok for check in checks)


def test_a_replica_without_a_leader_is_not_ready() -> None:
    assert failed({**FOLLOWER, "role": "candidate", "leader_raft": None}) == {
        "leader": "no leader known (candidate in term 4)"
    }


def test_a_leader_is_ready_once_it_applied_an_entry_of_its_term() -> None:
    leader = {**FOLLOWER, "role": "leader", "leader_raft": "127.0.0.1:7000", "commit_index": 100}
    assert set(failed({**leader, "ready": False})) == {"leader"}
    assert failed({**leader, "ready": True, "applied_index": 100}) == {}


def test_a_replica_behind_its_groups_commit_index_is_not_ready() -> None:
    behind = {**FOLLOWER, "applied_index": 100 - READY_LAG - 1}
    reason = failed(behind)["applied"]
    assert reason is not None and f"{READY_LAG + 1} entries behind the group's commit index 100" in reason
    assert failed({**FOLLOWER, "applied_index": 100 - READY_LAG}) == {}


def test_a_faulted_replica_or_one_on_other_code_is_not_ready() -> None:
    fault = {"kind": "entries_lost", "message": "its log ends at 3, below 9 it had acknowledged"}
    assert failed({**FOLLOWER, "fault": fault}) == {"fault": f"entries_lost: {fault['message']}"}
    assert set(failed(FOLLOWER, code_ok=False)) == {"code"}


def test_a_shard_is_ready_when_a_replica_answers_as_leader_of_the_newest_term() -> None:
    leader, follower = {"role": "leader", "term": 3}, {"role": "follower", "term": 3}
    assert shard_check("s0", {"s0r0": leader, "s0r1": follower, "s0r2": None}).ok
    deposed = shard_check("s0", {"s0r0": leader, "s0r1": {"role": "candidate", "term": 4}, "s0r2": None})
    assert (deposed.name, deposed.ok) == ("leader:s0", False)
    assert deposed.reason == (
        "no replica of s0 answers as its leader (s0r0: leader in term 3, s0r1: candidate in term 4, s0r2: no answer)"
    )


@pytest.mark.cluster
def test_readyz_fails_naming_the_check_when_a_group_loses_its_majority(tmp_path: Path) -> None:
    with running(Cluster(tmp_path, shards=1, replicas=3)) as cluster:
        bases = [cluster.url, *(cluster.replica_url(r) for r in cluster.replica_ids("s0"))]
        for base in bases:
            assert http("GET", f"{base}/livez") == (
                200,
                {"live": True, "checks": [{"name": "serving", "ok": True}], "failed": []},
            )
            code, body = http("GET", f"{base}/readyz")
            assert code == 200 and body["ready"] is True and body["failed"] == [], body
        assert [check["name"] for check in http("GET", f"{cluster.url}/readyz")[1]["checks"]] == ["leader:s0"]

        leader = cluster.leader_of("s0")
        stopped = [leader, next(r for r in cluster.replica_ids("s0") if r != leader)]
        survivor = next(r for r in cluster.replica_ids("s0") if r not in stopped)
        for replica in stopped:
            cluster.kill(replica, signal.SIGSTOP)

        def not_ready(base: str) -> dict[str, Any] | None:
            code, body = http("GET", f"{base}/readyz")
            return body["error"] if code == 503 else None

        error = wait_for(lambda: not_ready(cluster.url), 15, "the dispatcher to be not ready")
        assert error["code"] == "not_ready" and error["details"]["failed"] == ["leader:s0"], error
        assert "leader:s0: no replica of s0 answers as its leader" in error["message"]
        error = wait_for(lambda: not_ready(cluster.replica_url(survivor)), 15, f"{survivor} to be not ready")
        assert error["details"]["failed"] == ["leader"], error
        assert http("GET", f"{cluster.replica_url(survivor)}/livez")[0] == 200  # serving, only not ready

        for replica in stopped:
            cluster.kill(replica, signal.SIGCONT)
        wait_for(lambda: http("GET", f"{cluster.url}/readyz")[0] == 200, 15, "the dispatcher to be ready again")
