"""Admin actions checked for sense: code that no replica runs is not accepted, a version the code does not declare
is not migrated to.

Once, ``POST /_admin/fingerprint`` with any 64 characters made every replica
answer ``code_mismatch`` (schemathesis found it in six seconds); now the
router first asks each shard's replicas which code they run.
"""

from __future__ import annotations

import secrets
import tomllib
from pathlib import Path
from typing import Any

import pytest
import ujson
from tornado.testing import AsyncHTTPTestCase

from models.errors import ShardUnavailable
from node.config import ClusterConfig, ReplicaConfig, parse_config, render_config
from node.servers import dispatcher
from query.app import App, load_app
from query.fingerprint import app_fingerprint
from tests.harness import Cluster
from tests.test_handlers import FakeShards

PEOPLE = load_app("examples.people")
RUNNING = app_fingerprint(PEOPLE)
NEW = "a" * 64  # code deployed on some replicas only, or on none
JSON = {"Content-Type": "application/json"}


class RunningCode(FakeShards):
    """Fake shards whose replicas each run the code ``code`` names (the app's unless named; ``None``: silent)."""

    def __init__(self, config: ClusterConfig, app: App) -> None:
        super().__init__(config, app)
        self.code: dict[str, str | None] = {}

    async def integrity(self, replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
        fingerprint = self.code.get(replica.id, RUNNING)
        if fingerprint is None:
            raise ShardUnavailable(f"replica {replica.id} unreachable", replica=replica.id)
        return {"replica": replica.id, "fingerprint": {"local": fingerprint, "cluster": RUNNING, "ok": True}}

    def recorded(self) -> dict[str, str | None]:
        """The code each shard's state records as the cluster's."""
        return {shard_id: machine.fingerprint for shard_id, machine in self.machines.items()}


def replica(shard: int, number: int) -> tuple[str, str, str, str]:
    """Replica ``number`` of shard ``shard`` as ``render_config`` takes it; its addresses are never dialled."""
    port = 3 * shard + number
    return f"s{shard}r{number}", f"127.0.0.1:{7000 + port}", f"127.0.0.1:{9000 + port}", "."


class AdminChecksTest(AsyncHTTPTestCase):
    """A dispatcher of two three-replica shards whose anonymous clients may do everything, admin included."""

    def get_app(self) -> Any:
        layout = [(f"s{s}", [replica(s, r) for r in range(3)]) for s in (0, 1)]
        sections = {"auth": {"anonymous": ["admin"]}, "http": {"hosts": ["127.0.0.1"]}}
        text = render_config(secrets.token_hex(24), "examples.people", layout, [("d0", "127.0.0.1:8999")], sections)
        self.config = parse_config(tomllib.loads(text), Path("/tmp/cluster.toml"))
        self.client = RunningCode(self.config, PEOPLE)
        return dispatcher(self.config, PEOPLE, self.client).application  # type: ignore[arg-type]

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        response = self.fetch(path, method="POST", body=ujson.dumps(body), headers=JSON)
        return response.code, ujson.loads(response.body)

    def test_code_no_replica_runs_is_refused_and_nothing_is_written(self) -> None:
        code, body = self.post("/_admin/fingerprint", {"fingerprint": NEW})
        assert (code, body["error"]["code"]) == (409, "fingerprint_refused"), body
        assert body["error"]["details"]["shards"] == {
            shard.id: {replica.id: RUNNING for replica in shard.replicas} for shard in self.config.shards
        }
        assert self.client.writes == [] and self.client.recorded() == {"s0": None, "s1": None}

    def test_code_a_replica_of_each_shard_runs_is_accepted_on_every_shard(self) -> None:
        self.client.code.update({"s0r2": NEW, "s1r0": NEW, "s1r1": None})
        code, body = self.post("/_admin/fingerprint", {"fingerprint": NEW})
        assert code == 200, body
        assert self.client.recorded() == {"s0": NEW, "s1": NEW}

    def test_a_shard_none_of_whose_replicas_runs_it_or_answers_refuses_it_for_every_shard(self) -> None:
        self.client.code.update({"s0r0": NEW, "s1r0": None, "s1r1": None, "s1r2": None})
        code, body = self.post("/_admin/fingerprint", {"fingerprint": NEW})
        assert (code, body["error"]["code"]) == (409, "fingerprint_refused"), body
        assert body["error"]["details"]["shards"] == {"s1": {"s1r0": None, "s1r1": None, "s1r2": None}}
        assert self.client.recorded() == {"s0": None, "s1": None}, "not even on the shard that runs it"

    def test_a_migration_to_a_version_the_code_does_not_declare_is_refused_before_any_shard_is_asked(self) -> None:
        for target in (2, 0, True):
            code, body = self.post("/_admin/migrate", {"model": "User", "to": target, "dry_run": False})
            assert (code, body["error"]["code"]) == (400, "bad_request"), (target, body)
        assert (
            "declares User version 1, not 2"
            in self.post("/_admin/migrate", {"model": "User", "to": 2})[1]["error"]["message"]
        )
        assert self.client.writes == []
        code, body = self.post("/_admin/migrate", {"model": "User", "to": 1, "dry_run": True})
        assert code == 200 and body["dry_run"], body


@pytest.mark.cluster
def test_a_fingerprint_no_replica_runs_does_not_stop_the_cluster_serving(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, shards=1, replicas=3).start()
    try:
        code, body = cluster.post("/_admin/fingerprint", {"fingerprint": secrets.token_hex(32)})
        assert (code, body["error"]["code"]) == (409, "fingerprint_refused"), body
        assert cluster.post("/insert_user", {"id": 1, "first_name": "A", "last_name": "B", "country": "F"})[0] == 200
        code, page = cluster.get("/get_user", id=1)
        assert code == 200 and page["items"][0]["id"] == 1, "every replica still runs the cluster's code"
        assert cluster.post("/_admin/fingerprint", {"fingerprint": RUNNING})[0] == 200, "the code that runs"
    finally:
        cluster.close()
