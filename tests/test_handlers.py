"""The dispatcher's HTTP application with tornado's test tools and fake shards.

The fake stands in for the network and Raft only: each shard is a real
``StateMachine``, and the routing, merging and error mapping are the real ones.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

import ujson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.testing import AsyncHTTPTestCase

from consensus.state_machine import StateMachine
from models.errors import NoLeader, NotLeader
from node.cluster_secret import new_secret
from node.config import ClusterConfig, ReplicaConfig, parse_config, render_config
from node.servers import dispatcher
from query.app import App, load_app
from query.fingerprint import app_fingerprint

APP = load_app("examples.people")


def two_shard_config() -> ClusterConfig:
    shards = [
        (
            f"s{s}",
            [(f"s{s}r{r}", f"127.0.0.1:{7000 + 3 * s + r}", f"127.0.0.1:{9000 + 3 * s + r}", ".") for r in range(3)],
        )
        for s in range(2)
    ]
    import tomllib

    sections = {
        "auth": {"anonymous": ["read", "write", "bulk", "status"]},  # the tests call as anonymous clients
        "http": {"hosts": ["127.0.0.1"], "mutations_by_get": True},  # on the test server's port, and by GET
    }
    text = render_config(new_secret(), "examples.people", shards, [("d0", "127.0.0.1:8999")], sections)
    return parse_config(tomllib.loads(text), Path("/tmp/cluster.toml"))


class FakeShards:
    """Shards as in-process state machines; replica r0 of each shard leads unless told otherwise."""

    def __init__(self, config: ClusterConfig, app: App) -> None:
        self.machines = {s.id: StateMachine(app) for s in config.shards}
        for shard in config.shards:  # what each group's first leader commits (Replica's initial_slots)
            self.machines[shard.id].apply({"type": "init_slots", "ranges": [list(r) for r in shard.slots]})
        self.fingerprint = app_fingerprint(app)
        self.leader = {s.id: s.replicas[0] for s in config.shards}
        self.no_leader = False
        self.writes: list[str] = []

    def is_local(self, replica: ReplicaConfig) -> bool:
        return False

    def _check_leader(self, replica: ReplicaConfig) -> None:
        if self.no_leader:
            raise NotLeader("fake: nobody leads")
        if self.leader[replica.shard].id != replica.id:
            raise NotLeader("fake: not me", leader_raft=self.leader[replica.shard].raft)

    async def write(self, replica: ReplicaConfig, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        self._check_leader(replica)
        self.writes.append(replica.shard)
        return self.machines[replica.shard].apply({**command, "time": 1.0})

    async def read(self, replica: ReplicaConfig, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        if request["consistency"] != "stale":
            self._check_leader(replica)
        machine = self.machines[replica.shard]
        if "lookup" in request:
            lookup = request["lookup"]
            result = machine.lookup(lookup["model"], lookup["field"], lookup["values"])
        elif "migration_plan" in request:
            result = machine.migration_plan(request["migration_plan"]["model"], request["migration_plan"]["to"])
        else:
            result = machine.query(request["endpoint"], request["args"], request["explain"])
        return {**result, "served_by": {"replica": replica.id}}

    async def integrity(self, replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
        """What a replica reports of its code: every fake runs the app's."""
        return {"replica": replica.id, "fingerprint": {"local": self.fingerprint}}

    async def slots(self, replica: ReplicaConfig, timeout: float = 1.0, counts: bool = False) -> dict[str, Any]:
        """What ``GET /_shard/slots`` answers: the group's slot table, from its machine."""
        report = self.machines[replica.shard].slots_report(counts)
        return {"shard": replica.shard, "replica": replica.id, "applied_index": 0, **report}

    async def status(self, replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
        leads = not self.no_leader and self.leader[replica.shard].id == replica.id
        return {
            "id": replica.id,
            "shard": replica.shard,
            "role": "leader" if leads else "follower",
            "term": 1,
            "leader_raft": None,
            "applied_index": 0,
            "pid": 0,
        }


class FakeClusterCase(AsyncHTTPTestCase):
    app = APP

    def get_app(self) -> Any:
        self.config = two_shard_config()
        self.shards = FakeShards(self.config, self.app)
        self.parts = dispatcher(self.config, self.app, self.shards)  # type: ignore[arg-type]
        return self.parts.application

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else ujson.dumps(body).encode())
        if method == "POST" and data is None:
            data = b""
        headers = {"Content-Type": "application/json"} if method == "POST" else None
        response = self.fetch(path, method=method, body=data, headers=headers, allow_nonstandard_methods=True)
        return response.code, ujson.loads(response.body)


class DispatcherTest(FakeClusterCase):
    def insert(self, uid: int, country: str = "France") -> tuple[int, Any]:
        query = urllib.parse.urlencode(
            {"id": uid, "first_name": "A", "last_name": "B", "country": country, "address": "1 Main St."}
        )
        return self.call("GET", f"/insert_user?{query}")

    def test_insert_routes_to_one_shard_and_scatter_read_merges_in_order(self) -> None:
        for uid in range(1, 41):
            code, body = self.insert(uid, "Japan" if uid % 2 else "France")
            assert code == 200, body
        assert set(self.shards.writes) == {"s0", "s1"}, "ids spread over both shards"
        code, body = self.call("GET", "/get_user?country=Japan&limit=7")
        assert code == 200
        assert [u["id"] for u in body["items"]] == [1, 3, 5, 7, 9, 11, 13]
        seen = [u["id"] for u in body["items"]]
        while body["next"]:
            code, body = self.call("GET", f"/get_user?country=Japan&limit=7&cursor={body['next']}")
            seen += [u["id"] for u in body["items"]]
        assert seen == list(range(1, 41, 2))

    def test_key_addressed_read_goes_to_one_shard_and_follows_not_leader_hints(self) -> None:
        assert self.insert(321)[0] == 200
        shard = next(s for s in self.config.shards if self.shards.machines[s.id].collections["User"].get(321))
        self.shards.leader[shard.id] = shard.replicas[2]  # leadership moved; the router must follow
        code, body = self.call("GET", "/get_user?id=321")
        assert code == 200 and body["items"][0]["id"] == 321
        assert body["served_by"] == [{"replica": shard.replicas[2].id}]

    def test_explain_shows_each_shards_plan(self) -> None:
        code, body = self.call("GET", "/get_user?country=Japan&explain=1")
        assert code == 200
        assert [p["access"] for p in body["plan"]] == ["index_equality", "index_equality"]

    def test_post_with_json_body(self) -> None:
        doc = {"id": 7, "first_name": "A", "last_name": "B", "country": "Peru"}
        code, body = self.call("POST", "/insert_user", doc)
        assert code == 200 and body["result"]["city"] == ""
        code, body = self.call("POST", "/insert_user", doc)
        assert code == 409 and body["error"]["code"] == "duplicate_key"

    def test_bulk_insert_reports_each_document(self) -> None:
        docs = [
            {"id": 1, "first_name": "A", "last_name": "B", "country": "X"},
            {"id": "two", "first_name": "A", "last_name": "B", "country": "X"},
            {"id": 1, "first_name": "A", "last_name": "B", "country": "X"},
            {"id": 3, "first_name": "A", "last_name": "B", "country": "X", "nickname": "x"},
        ]
        code, body = self.call("POST", "/_bulk/User", {"docs": docs})
        assert code == 200
        results = body["results"]
        assert results[0] == {"ok": 1}
        assert results[1]["error"]["code"] == "validation_failed" and results[1]["error"]["details"]["field"] == "id"
        assert results[2]["error"]["code"] == "duplicate_key"
        assert results[3]["error"]["details"]["field"] == "nickname"

    def test_no_leader_is_503_with_retry_after(self) -> None:
        self.shards.no_leader = True
        self.parts.router.deadline = 0.3
        response = self.fetch("/get_user?id=5")
        assert response.code == 503
        assert response.headers["Retry-After"] == "1"
        assert ujson.loads(response.body)["error"]["code"] == NoLeader.code

    def test_cluster_admin_lists_shards_and_leaders(self) -> None:
        code, body = self.call("GET", "/_admin/cluster")
        assert code == 200
        assert [(s["id"], s["leader"], s["slots"], s["slot_count"]) for s in body["shards"]] == [
            ("s0", "s0r0", [[0, 8191]], 8192),
            ("s1", "s1r0", [[8192, 16383]], 8192),
        ]
        assert [r["role"] for r in body["shards"][0]["replicas"]] == ["leader", "follower", "follower"]
        assert [r["voter"] for r in body["shards"][0]["replicas"]] == [True, True, True]
        assert body["epoch"] == 0 and body["moves"] == []
        self.insert(5)
        code, body = self.call("GET", "/_admin/cluster")
        assert sum(s["documents"] for s in body["shards"]) == 1


class ErrorShapeTest(FakeClusterCase):
    """Every non-2xx answer has the one error shape and the documented status."""

    CASES: ClassVar[list[tuple[str, str, bytes | None, int, str]]] = [
        ("GET", "/no_such_endpoint", None, 404, "not_found"),
        ("GET", "/_no/such/route", None, 404, "not_found"),
        ("GET", "/get_user?id=abc", None, 400, "bad_request"),
        ("GET", "/get_user?limit=-1", None, 400, "bad_request"),
        ("GET", "/get_user?colour=red", None, 400, "bad_request"),
        ("GET", "/get_user?cursor=%%%", None, 400, "bad_request"),
        ("GET", "/get_user?consistency=eventual", None, 400, "bad_request"),
        ("GET", "/get_user?explain=maybe", None, 400, "bad_request"),
        ("GET", "/get_user?country=%FF", None, 400, "bad_request"),
        ("GET", "/insert_user?id=1", None, 400, "bad_request"),
        ("POST", "/get_user", b"{not json", 400, "bad_request"),
        ("POST", "/insert_user", b"[1, 2]", 400, "bad_request"),
        ("POST", "/insert_user", b'{"id": 1, "first_name": 5}', 400, "bad_request"),
        ("DELETE", "/get_user", None, 405, "method_not_allowed"),
        ("POST", "/get_user", b"{}", 405, "method_not_allowed"),
        ("POST", "/_bulk/User", b'{"docs": 5}', 400, "bad_request"),
        ("POST", "/_bulk/Nope", b'{"docs": []}', 404, "not_found"),
    ]

    def test_every_error_has_one_shape(self) -> None:
        for method, path, raw, status, code in self.CASES:
            got_status, body = self.call(method, path, raw=raw)
            assert (got_status, body["error"]["code"]) == (status, code), (method, path, body)
            assert set(body) == {"error"}
            assert set(body["error"]) <= {"code", "message", "details"}
            assert isinstance(body["error"]["message"], str) and body["error"]["message"]

    def test_bulk_insert_names_the_invalid_field(self) -> None:
        code, body = self.call("POST", "/_bulk/User", {"docs": [{"id": 1}]})
        assert code == 200
        assert body["results"][0]["error"]["details"]["field"] == "first_name"

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(
        name=st.sampled_from(["get_user", "insert_user", "nope", "_bulk/User"]),
        query=st.lists(
            st.tuples(
                st.sampled_from(["id", "country", "limit", "cursor", "first_name", "explain", "x"]),
                st.text(max_size=8),
            ),
            max_size=5,
        ),
        body=st.one_of(st.none(), st.binary(max_size=30), st.just(b'{"docs": [{"id": []}]}')),
    )
    def test_malformed_requests_never_answer_500(
        self, name: str, query: list[tuple[str, str]], body: bytes | None
    ) -> None:
        method = "GET" if body is None else "POST"
        response = self.fetch(
            f"/{name}?{urllib.parse.urlencode(query)}",
            method=method,
            body=body,
            allow_nonstandard_methods=True,
        )
        assert response.code < 500, response.body
        if response.code >= 400:
            assert "error" in ujson.loads(response.body)


class ModelValidationTest(FakeClusterCase):
    app = load_app("tests.apps.validation_app")

    def test_model_validation_failure_is_422_naming_the_field_and_stores_nothing(self) -> None:
        response = self.fetch("/record?id=1&value=warm")
        body = ujson.loads(response.body)
        assert response.code == 422
        assert body["error"]["code"] == "validation_failed"
        assert body["error"]["details"]["field"] == "celsius"
        assert all(len(m.collections["Reading"]) == 0 for m in self.shards.machines.values())
        assert self.fetch("/record?id=1&value=21.5").code == 200
