"""Model versions and migrations: steps, the replicated migrate command, and a real upgrade."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest

from consensus.state_machine import StateMachine
from models.migrations import AddField, ChangeType, DropField, RenameField, Transform, steps_between
from query.app import load_app
from tests.harness import Cluster, wait_for
from tests.machines import owning_all

V1 = load_app("examples.people")
V2 = load_app("examples.people_v2")


def user(uid: int, **more: Any) -> dict[str, Any]:
    return {
        "id": uid,
        "first_name": f"F{uid}",
        "last_name": "L",
        "country": "Peru",
        "address": f"{uid} Main St.",
    } | more


def v1_machine(count: int = 5) -> StateMachine:
    machine = owning_all(V1)
    for uid in range(count):
        command = {"type": "mutation", "endpoint": "insert_user", "args": user(uid), "request_id": f"u{uid}"}
        assert "ok" in machine.apply(command)
    return machine


def upgraded(machine: StateMachine) -> StateMachine:
    """The same state read by a replica running version 2 of the app."""
    v2 = owning_all(V2)
    v2.restore(machine.snapshot())
    return v2


def test_steps_change_copies_only() -> None:
    doc = {"a": 1, "b": "2"}
    assert AddField("c", 0).apply(doc) == {"a": 1, "b": "2", "c": 0}
    assert AddField("a", 0).apply(doc) == doc
    assert RenameField("a", "z").apply(doc) == {"b": "2", "z": 1}
    assert DropField("b").apply(doc) == {"a": 1}
    assert ChangeType("b", int).apply(doc) == {"a": 1, "b": 2}
    assert Transform(lambda d: {**d, "a": d["a"] * 10}).apply(doc) == {"a": 10, "b": "2"}
    assert doc == {"a": 1, "b": "2"}
    steps = {2: [DropField("x")], 3: [AddField("y", 1)]}
    assert steps_between(steps, 1, 3) == [DropField("x"), AddField("y", 1)]
    assert steps_between(steps, 2, 3) == [AddField("y", 1)]


def test_old_documents_are_not_served_or_written_until_migrated() -> None:
    machine = upgraded(v1_machine())
    assert machine.versions["User"] == 1
    write = {"type": "mutation", "endpoint": "insert_user", "args": {**user(9), "email": "x"}, "request_id": "w"}
    del write["args"]["address"]
    assert machine.apply(write)["error"]["code"] == "migration_pending"
    with pytest.raises(Exception, match="run docraft migrate"):
        machine.query("get_user", {"id": 1, "country": None, "limit": 10, "cursor": None})


def test_migrate_rewrites_every_document_in_one_command_and_records_the_version() -> None:
    machine = upgraded(v1_machine(5))
    plan = machine.migration_plan("User", 2)
    assert plan == {"model": "User", "from": 1, "to": 2, "documents": 5, "failures": [], "failure_count": 0}
    assert all("address" in d for d in machine.collections["User"].all())  # the plan changed nothing
    result = machine.apply({"type": "migrate", "model": "User", "to": 2, "request_id": "m"})
    assert result["ok"] == {"model": "User", "from": 1, "to": 2, "documents": 5}
    docs = machine.collections["User"].all()
    assert [d["email"] for d in docs] == [""] * 5 and not any("address" in d for d in docs)
    assert machine.versions["User"] == 2 and machine.snapshot()["versions"]["User"] == 2
    # writes after the migration are validated against version 2
    args = {"id": 9, "first_name": "N", "last_name": "L", "country": "Peru", "email": "n@example.com"}
    assert machine.apply({"type": "mutation", "endpoint": "insert_user", "args": args, "request_id": "w"})["ok"]
    again = machine.apply({"type": "migrate", "model": "User", "to": 2, "request_id": "m2"})
    assert again["ok"]["documents"] == 0


def test_migration_that_would_fail_validation_is_refused_whole() -> None:
    app = load_app("tests.apps.strict_v2_app")
    v1 = owning_all(load_app("tests.apps.strict_v1_app"))
    for key, age in ((1, "41"), (2, "unknown"), (3, "7")):
        v1.apply({"type": "mutation", "endpoint": "add", "args": {"id": key, "age": age}, "request_id": str(key)})
    machine = owning_all(app)
    machine.restore(v1.snapshot())
    plan = machine.migration_plan("Person", 2)
    assert plan["failure_count"] == 1 and plan["failures"][0]["key"] == 2
    before = machine.snapshot()["collections"]
    result = machine.apply({"type": "migrate", "model": "Person", "to": 2, "request_id": "m"})
    assert result["error"]["code"] == "migration_refused"
    assert machine.snapshot()["collections"] == before and machine.versions["Person"] == 1


def test_migrating_to_a_version_the_code_does_not_define_is_bad_request() -> None:
    machine = upgraded(v1_machine(1))
    assert machine.apply({"type": "migrate", "model": "User", "to": 3})["error"]["code"] == "bad_request"
    assert machine.apply({"type": "migrate", "model": "Nope", "to": 2})["error"]["code"] == "not_found"


@pytest.mark.cluster
def test_upgrading_a_loaded_cluster_migrates_every_document_on_every_replica(cluster_factory) -> None:
    cluster: Cluster = cluster_factory()
    uids = list(range(3000, 3060))
    code, body = cluster.post("/_bulk/User", {"docs": [user(uid) for uid in uids]})
    assert code == 200 and all("ok" in r for r in body["results"])
    config = str(cluster.root / "cluster.toml")
    # deploy version 2: every process restarts on the new code (each replica snapshots as it stops)
    local = cluster.processes
    local.app_module = "examples.people_v2"
    replicas = [r.id for s in local.config.shards for r in s.replicas]
    for name in [*replicas, "d0"]:
        cluster.kill(name, signal.SIGTERM)
    for name in replicas:
        cluster.restart(name)
    local.start_dispatcher("d0")
    wait_for(lambda: all(s["leader"] for s in cluster.status()), 20, "leaders on the new code")

    def docraft(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, timeout=60)

    def error_code() -> str:
        code, body = cluster.get("/get_user", id=3000)
        return str(body["error"]["code"]) if code == 503 else f"HTTP {code}"

    # the replicas refuse, and once the monitor has seen it they are flagged too
    assert error_code() in ("code_mismatch", "replica_flagged")
    accepted = docraft("accept-code", "--config", config, "--app", "examples.people_v2")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    wait_for(lambda: error_code() == "migration_pending", 5, "flags to clear and migration_pending")
    # every shard's replicas agree again (no code_mismatch or divergence flag left) before migrating
    wait_for(lambda: cluster.get("/_admin/alerts")[1]["active"] == [], 10, "no active integrity alert")
    dry = docraft("migrate", "--app", "examples.people_v2", "--to", "2", "--dry-run", "--config", config)
    assert dry.returncode == 0 and "would migrate" in dry.stdout, dry.stdout + dry.stderr
    assert cluster.get("/get_user", id=3000)[1]["error"]["code"] == "migration_pending"
    done = docraft("migrate", "--app", "examples.people_v2", "--to", "2", "--config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = [int(line.split("migrated ")[1].split()[0]) for line in done.stdout.splitlines() if "migrated" in line]
    assert sum(counts) == len(uids) and len(counts) == 2

    for shard in local.config.shards:
        for replica in shard.replicas:

            def migrated(base: str = replica.http_url) -> list[dict[str, Any]] | None:
                """This replica's own users, read from its local state only."""
                args = {"id": None, "country": "Peru", "limit": 1000, "cursor": None}
                request = {"endpoint": "get_user", "args": args, "consistency": "stale"}
                code, body = cluster.post("/_shard/read", request, base=base)
                mine = body.get("items", []) if code == 200 else []
                return mine if mine and all(u.get("email") == "" and "address" not in u for u in mine) else None

            wait_for(migrated, 10, f"migrated users on {replica.id}")
    code, body = cluster.get("/get_user", country="Peru", limit=1000)
    assert sorted(u["id"] for u in body["items"]) == uids
    assert all(set(u) == {"id", "first_name", "last_name", "country", "city", "email"} for u in body["items"])
    code, body = cluster.post("/insert_user", {"id": 1, "first_name": "N", "last_name": "L", "country": "X"})
    assert code == 200 and body["result"]["email"] == ""
