"""``[limits]``: each limit answers its own 4xx in the one error shape, and a refused request stores nothing.

Most tests run a dispatcher over in-process shards (``tests.test_handlers.FakeShards``)
served by the same ``HTTPServer`` a real process builds (``node.limits.http_server``);
one starts real processes, to see a body refused on a real socket.
"""

from __future__ import annotations

import base64
import secrets
import socket
import threading
import tomllib
import urllib.parse
from collections.abc import Iterator
from http.client import HTTPResponse
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import ujson
from tornado.httpserver import HTTPServer
from tornado.simple_httpclient import SimpleAsyncHTTPClient
from tornado.testing import AsyncHTTPTestCase

from consensus.slots import slot_of
from models.errors import BadRequest, DocraftError
from models.types import INT64_MAX, INT64_MIN
from node.config import ClusterConfig, ConfigError, parse_config, render_config
from node.limits import Limits, http_server, parse_limits
from node.loader import CSV_FIELD_LIMIT, load_csv
from node.servers import dispatcher
from query.app import load_app
from query.collection import Collection
from query.cursors import cursor_key, open_cursor, seal_cursor
from query.ordering import encode_cursor
from query.planner import find
from tests.harness import Cluster, JSONReplyHandler, http
from tests.test_handlers import FakeShards

PEOPLE = load_app("examples.people")
User = PEOPLE.model("User")
JSON = {"Content-Type": "application/json"}
SMALL = {"body_bytes": 4096, "bulk_documents": 5, "page_limit": 50, "include_names": 1, "json_depth": 4}


def user(uid: int, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "first_name": "A", "last_name": "B", "country": "France", **fields}


def cluster_data(sections: dict[str, dict[str, Any]], extra_toml: str = "") -> dict[str, Any]:
    """A cluster file of two one-replica shards (never dialled) with ``sections``, parsed; ``extra_toml`` appended."""
    shards = [(f"s{s}", [(f"s{s}r0", f"127.0.0.1:{7000 + s}", f"127.0.0.1:{9000 + s}", ".")]) for s in (0, 1)]
    base = {
        "auth": {"anonymous": ["read", "write", "bulk", "status"]},
        "http": {"hosts": ["127.0.0.1"]},  # the test server's port is not the file's
    }
    text = render_config(secrets.token_hex(24), "examples.people", shards, [("d0", "127.0.0.1:8999")], base | sections)
    return tomllib.loads(text + extra_toml)


def cluster_config(sections: dict[str, dict[str, Any]], extra_toml: str = "") -> ClusterConfig:
    return parse_config(cluster_data(sections, extra_toml), Path("/tmp/cluster.toml"))


class LimitedCase(AsyncHTTPTestCase):
    """A dispatcher over fake shards with ``SMALL`` limits, on the server a real process runs."""

    extra_toml = "[limits.page_limits]\nget_user_orders = 3\n"

    def get_app(self) -> Any:
        self.config = cluster_config({"limits": SMALL}, self.extra_toml)
        self.shards = FakeShards(self.config, PEOPLE)
        return dispatcher(self.config, PEOPLE, self.shards).application  # type: ignore[arg-type]

    def get_http_server(self) -> HTTPServer:
        return http_server(self._app, self.config.limits, **self.get_httpserver_options())

    def call(self, method: str, target: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else body if isinstance(body, bytes) else ujson.dumps(body).encode()
        response = self.fetch(target, method=method, body=data, headers=JSON if method == "POST" else None)
        return response.code, ujson.loads(response.body)

    def stored_ids(self) -> list[int]:
        return sorted(doc["id"] for m in self.shards.machines.values() for doc in m.collections["User"].all())

    def refused(self, status: int, code: str, answer: tuple[int, Any]) -> dict[str, Any]:
        """The error of ``answer``, asserted to be ``status``/``code`` in the one error shape."""
        got, body = answer
        assert (got, set(body), body["error"]["code"]) == (status, {"error"}, code), body
        error: dict[str, Any] = body["error"]
        assert error["message"]
        return error


class BodyAndBulkLimitTest(LimitedCase):
    def test_a_body_over_body_bytes_is_413_before_it_is_read_and_stores_nothing(self) -> None:
        assert self.call("POST", "/insert_user", user(1))[0] == 200
        padded = user(2, city="x" * 5000)
        error = self.refused(413, "payload_too_large", self.call("POST", "/insert_user", padded))
        assert error["details"] == {"limit": 4096} and "[limits] body_bytes" in error["message"]
        assert self.stored_ids() == [1], "nothing of the refused body is stored, nothing stored before is lost"
        assert self.call("POST", "/insert_user", user(3, city="x" * 3000))[0] == 200, "a body within the limit"

    def test_cluster_members_batches_may_be_four_times_as_large(self) -> None:
        """A router's batch for a shard holds the documents with their defaults filled in: it can outgrow the
        client's request that made it (this dispatcher serves no /_shard/ route: 404 once the body is read)."""
        assert self.fetch("/_shard/write", method="POST", body=b" " * 16384, headers=JSON).code == 404
        assert self.fetch("/_shard/write", method="POST", body=b" " * 16385, headers=JSON).code == 413

    def test_a_chunked_body_over_body_bytes_is_413_too(self) -> None:
        async def produce(write: Any) -> None:
            for _ in range(7):  # 7000 bytes of JSON whitespace: over the limit, under twice the limit
                await write(b" " * 1000)

        client = SimpleAsyncHTTPClient(force_instance=True)  # the curl client cannot stream a body
        try:
            response = self.io_loop.run_sync(
                lambda: client.fetch(
                    self.get_url("/insert_user"), method="POST", body_producer=produce, headers=JSON, raise_error=False
                )
            )
        finally:
            client.close()
        assert response.code == 413, response.body
        assert ujson.loads(response.body)["error"]["code"] == "payload_too_large"
        assert self.stored_ids() == []

    def test_more_documents_than_bulk_documents_is_413_and_stores_none_of_them(self) -> None:
        error = self.refused(
            413, "payload_too_large", self.call("POST", "/_bulk/User", {"docs": [user(i) for i in range(6)]})
        )
        assert error["details"] == {"limit": 5}
        assert self.stored_ids() == []
        code, body = self.call("POST", "/_bulk/User", {"docs": [user(i) for i in range(5)]})
        assert code == 200 and [r["ok"] for r in body["results"]] == [0, 1, 2, 3, 4]


class ArgumentLimitTest(LimitedCase):
    def test_a_limit_over_the_ceiling_is_400_and_the_ceiling_itself_is_served(self) -> None:
        error = self.refused(400, "bad_request", self.call("GET", "/get_user?country=France&limit=51"))
        assert error["details"] == {"param": "limit", "ceiling": 50}
        assert self.call("GET", "/get_user?country=France&limit=50")[0] == 200

    def test_an_endpoint_can_have_its_own_ceiling(self) -> None:
        error = self.refused(400, "bad_request", self.call("GET", "/get_user_orders?user_id=1&limit=4"))
        assert error["details"]["ceiling"] == 3
        assert self.call("GET", "/get_user_orders?user_id=1&limit=3")[0] == 200
        assert self.call("GET", "/get_user?limit=4")[0] == 200, "other endpoints keep page_limit"

    def test_a_default_limit_over_the_ceiling_is_lowered_to_it(self) -> None:
        assert self.call("POST", "/insert_user", user(1))[0] == 200
        for oid in range(1, 5):
            order = {"id": oid, "user_id": 1, "item": "book", "amount": 1.0}
            assert self.call("POST", "/insert_order", order)[0] == 200
        code, page = self.call("GET", "/get_user_orders?user_id=1")  # its default limit is 100, its ceiling 3
        assert code == 200 and [o["id"] for o in page["items"]] == [1, 2, 3] and page["next"]

    def test_a_huge_limit_is_400_not_a_crash(self) -> None:
        for limit in (INT64_MAX, INT64_MAX + 1, 10**40):
            self.refused(400, "bad_request", self.call("GET", f"/get_user?limit={limit}"))

    def test_include_names_are_deduplicated_and_capped(self) -> None:
        assert self.call("POST", "/insert_user", user(1))[0] == 200
        code, body = self.call("GET", "/get_user?id=1&include=orders,orders,orders")
        assert code == 200 and body["items"][0]["orders"] == []
        error = self.refused(400, "bad_request", self.call("GET", "/get_user?id=1&include=orders,followers"))
        assert error["details"] == {"param": "include"} and "[limits] include_names" in error["message"]

    def test_a_body_nested_deeper_than_json_depth_is_400_naming_where(self) -> None:
        deep = user(1, city=[[["x"]]])  # the body, a list, a list, a list: four containers
        assert self.call("POST", "/insert_user", deep)[0] == 400  # city is no list: refused by its type
        deeper = user(1, city=[[[["x"]]]])
        error = self.refused(400, "bad_request", self.call("POST", "/insert_user", deeper))
        assert error["details"] == {"path": "$.city[0][0][0]"} and "json_depth" in error["message"]
        assert self.stored_ids() == []

    def test_integers_are_64_bit_in_query_strings_and_bodies(self) -> None:
        assert self.call("POST", "/insert_user", user(INT64_MAX))[0] == 200
        assert self.call("POST", "/insert_user", user(INT64_MIN))[0] == 200
        for value in (INT64_MAX + 1, INT64_MIN - 1, 10**30):
            error = self.refused(400, "bad_request", self.call("POST", "/insert_user", user(value)))
            assert error["details"] == {"path": "$.id"}
            self.refused(400, "bad_request", self.call("GET", f"/get_user?id={value}"))
        bulk = {"docs": [user(5), user(2**64)]}
        error = self.refused(400, "bad_request", self.call("POST", "/_bulk/User", bulk))
        assert error["details"] == {"path": "$.docs[1].id"}
        assert self.stored_ids() == [INT64_MIN, INT64_MAX], "the bulk request was refused whole"
        code, page = self.call("GET", f"/get_user?id={INT64_MAX}")
        assert code == 200 and page["items"][0]["id"] == INT64_MAX


class CursorTest(LimitedCase):
    def setUp(self) -> None:
        super().setUp()
        code, body = self.call("POST", "/_bulk/User", {"docs": [user(i) for i in range(1, 6)]})
        assert code == 200, body

    def pages(self, first: str) -> list[int]:
        code, body = self.call("GET", first)
        seen = [u["id"] for u in body["items"]]
        while body["next"]:
            code, body = self.call("GET", f"{first}&cursor={urllib.parse.quote(body['next'])}")
            assert code == 200, body
            seen += [u["id"] for u in body["items"]]
        return seen

    def test_a_cursor_handed_out_is_followed_on_every_page(self) -> None:
        assert self.pages("/get_user?country=France&limit=2") == [1, 2, 3, 4, 5]
        assert self.pages("/get_user?limit=1") == [1, 2, 3, 4, 5]

    def test_a_tampered_cursor_is_400(self) -> None:
        code, body = self.call("GET", "/get_user?limit=2")
        assert code == 200, body
        position, mac = body["next"].split(".")
        raw = ujson.loads(base64.urlsafe_b64decode(position + "=" * (-len(position) % 4)))
        moved = base64.urlsafe_b64encode(ujson.dumps([raw[0], 4]).encode()).decode().rstrip("=")
        for cursor in (f"{moved}.{mac}", f"{position}.{mac[:-1]}A" if mac[-1] != "A" else f"{position}.{mac[:-1]}B"):
            error = self.refused(400, "bad_request", self.call("GET", f"/get_user?limit=2&cursor={cursor}"))
            assert error["details"] == {"param": "cursor"}

    def test_a_cursor_docraft_did_not_seal_is_400_not_a_scan_from_an_invented_position(self) -> None:
        forged = encode_cursor({"id": 4}, "id", "id")  # a well-formed position, as the planner encodes one
        error = self.refused(400, "bad_request", self.call("GET", f"/get_user?limit=2&cursor={forged}"))
        assert "not a cursor docraft returned" in error["message"]

    def test_a_cursor_of_another_endpoint_is_400(self) -> None:
        assert self.call("POST", "/insert_order", {"id": 1, "user_id": 1, "item": "a", "amount": 1.0})[0] == 200
        assert self.call("POST", "/insert_order", {"id": 2, "user_id": 1, "item": "b", "amount": 1.0})[0] == 200
        code, body = self.call("GET", "/get_user_orders?user_id=1&limit=1")
        assert code == 200 and body["next"]
        self.refused(400, "bad_request", self.call("GET", f"/get_user?limit=1&cursor={body['next']}"))


def test_the_planner_refuses_a_limit_it_cannot_slice() -> None:
    collection = Collection(User, slot_of)
    with pytest.raises(BadRequest):
        find(collection, {}, limit=INT64_MAX)
    assert find(collection, {}, limit=INT64_MAX - 1).items == []


def test_a_cursor_sealed_by_another_cluster_or_for_another_endpoint_does_not_open() -> None:
    ours, theirs = cursor_key(secrets.token_hex(24)), cursor_key(secrets.token_hex(24))
    sealed = seal_cursor(ours, "get_user", "WzIsMl0")
    assert open_cursor(ours, "get_user", sealed, "cursor") == "WzIsMl0"
    for key, endpoint in ((theirs, "get_user"), (ours, "get_user_orders")):
        with pytest.raises(BadRequest):
            open_cursor(key, endpoint, sealed, "cursor")


# -- [limits] in the cluster file --------------------------------------------------------------------


def test_limits_default_and_parse() -> None:
    assert cluster_config({}).limits == Limits()
    assert Limits().body_bytes == 4 * 1024 * 1024 and Limits().page_limit == 1000
    limits = cluster_config({"limits": SMALL}, "[limits.page_limits]\nget_user = 7\n").limits
    assert (limits.body_bytes, limits.page_limit_of("get_user"), limits.page_limit_of("other")) == (4096, 7, 50)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"body_byte": 1}, "no setting 'body_byte'"),
        ({"body_bytes": 0}, "body_bytes must be a positive integer"),
        ({"page_limit": 2.5}, "page_limit must be a positive integer"),
        ({"bulk_documents": True}, "bulk_documents must be a positive integer"),
        ({"json_depth": 1000}, "json_depth must be at most 512"),
        ({"page_limits": {"get_user": -1}}, r"\[limits.page_limits\] get_user must be a positive integer"),
        ({"page_limits": 5}, "must be a table"),
    ],
)
def test_a_bad_limits_table_is_a_config_error(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_limits(table)
    with pytest.raises(ConfigError, match=message):
        parse_config({**cluster_data({}), "limits": table}, Path("/tmp/cluster.toml"))


# -- docraft load --------------------------------------------------------------------------------


class BulkServer(ThreadingHTTPServer):
    """Answers ``POST /_bulk/User`` as a dispatcher that stores every document, but 413 for a batch of
    more than ``most`` documents or holding one whose city is ``"huge"``; ``stored`` holds the ids."""

    daemon_threads = True

    def __init__(self, most: int) -> None:
        super().__init__(("127.0.0.1", 0), _BulkHandler)
        self.most = most
        self.stored: list[int] = []
        # Idempotency-Keys the server answers 504 the first time it sees them (after storing the batch).
        self.unknown_first = False
        self.keys: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.thread.join(timeout=10)


class _BulkHandler(JSONReplyHandler):
    server: BulkServer

    def do_POST(self) -> None:
        docs = ujson.loads(self.rfile.read(int(self.headers["Content-Length"])))["docs"]
        if len(docs) > self.server.most or any(d["city"] == "huge" for d in docs):
            status, answer = 413, {"error": {"code": "payload_too_large", "message": "too large"}}
        else:
            key = self.headers["Idempotency-Key"]
            first = key not in self.server.keys
            self.server.keys.append(key)
            if first:
                self.server.stored += [d["id"] for d in docs]
            if first and self.server.unknown_first:
                status, answer = 504, {"error": {"code": "outcome_unknown", "message": "may have been applied"}}
            else:
                status, answer = 200, {"results": [{"ok": d["id"]} for d in docs]}
        self.reply(status, answer)


@pytest.fixture
def bulk_server() -> Iterator[type[BulkServer]]:
    started: list[BulkServer] = []

    def start(most: int) -> BulkServer:
        started.append(BulkServer(most))
        return started[-1]

    yield start  # type: ignore[misc]
    for server in started:
        server.close()


def write_users(path: Path, cities: list[str]) -> Path:
    lines = ["id,first_name,last_name,country,address,city"]
    lines += [f"{i},A,B,France,1 Main St.,{city}" for i, city in enumerate(cities, start=1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_the_loader_rejects_a_row_with_a_field_too_long_for_csv_and_loads_the_others(
    tmp_path: Path, bulk_server: Any
) -> None:
    server = bulk_server(most=100)
    csv_file = write_users(tmp_path / "users.csv", ["Paris", "x" * (CSV_FIELD_LIMIT + 1), "Lyon", "Nantes"])
    report = load_csv(csv_file, User, server.url, progress=False)
    assert server.stored == [1, 3, 4]
    assert report.stored == 3 and [line for line, _ in report.rejected] == [3]
    assert "field larger than field limit" in report.rejected[0][1]


def test_the_loader_splits_a_batch_the_cluster_finds_too_large_and_rejects_only_a_row_too_large_alone(
    tmp_path: Path, bulk_server: Any
) -> None:
    server = bulk_server(most=2)
    cities = ["Paris", "Lyon", "huge", "Nantes", "Nice", "Lille", "Metz"]
    report = load_csv(write_users(tmp_path / "users.csv", cities), User, server.url, batch_size=7, progress=False)
    assert sorted(server.stored) == [1, 2, 4, 5, 6, 7], "every row but the one too large alone is stored"
    assert report.stored == 6 and report.rejected == [(4, "too large for the cluster: too large")]


def test_the_loader_sends_a_batch_of_unknown_outcome_again_under_its_key_and_counts_it_stored(
    tmp_path: Path, bulk_server: Any
) -> None:
    server = bulk_server(most=100)
    server.unknown_first = True
    report = load_csv(write_users(tmp_path / "users.csv", ["Paris", "Lyon", "Nice"]), User, server.url, batch_size=2)
    assert sorted(server.stored) == [1, 2, 3], "each row stored once"
    assert len(server.keys) == 4 and server.keys[0] == server.keys[1] and server.keys[2] == server.keys[3]
    assert server.keys[0] != server.keys[2], "each batch has a key of its own"
    assert report.stored == 3 and report.rejected == []


def test_a_csv_cell_beyond_64_bits_is_a_rejected_row() -> None:
    with pytest.raises(DocraftError, match="64-bit"):
        User.from_text({"id": str(2**63), "first_name": "A", "last_name": "B", "country": "F"})


# -- on a real socket --------------------------------------------------------------------------------


def raw_request(address: str, head: str, body: bytes = b"") -> tuple[int, dict[str, Any]]:
    """Send ``head`` (request line and headers) and ``body`` on a fresh connection; the status and JSON body."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(head.encode() + b"\r\n\r\n" + body)
        response = HTTPResponse(conn)
        response.begin()
        return response.status, ujson.loads(response.read())


@pytest.mark.cluster
def test_a_real_server_refuses_a_large_body_in_the_error_shape_and_keeps_serving(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, shards=1, replicas=3, sections={"limits": {"body_bytes": 65536}}).start()
    try:
        assert cluster.post("/insert_user", user(1))[0] == 200
        replica = cluster.replica_ids("s0")[0]
        for address in (cluster.url.removeprefix("http://"), cluster.replica_url(replica).removeprefix("http://")):
            # Declared far beyond the limit and never sent: the answer comes before any body.
            head = f"POST /insert_user HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n"
            status, answer = raw_request(address, head + "Content-Length: 1000000000")
            assert (status, answer["error"]["code"]) == (413, "payload_too_large"), answer
            # Sent whole by a client that reads only afterwards, as urllib does.
            status, answer = http("POST", f"http://{address}/_bulk/User", {"docs": [user(i) for i in range(2, 3000)]})
            assert (status, answer["error"]["code"]) == (413, "payload_too_large"), answer
        assert cluster.post("/insert_user", user(2))[0] == 200
        code, page = cluster.get("/get_user", limit=10)
        assert code == 200 and [u["id"] for u in page["items"]] == [1, 2], "only the requests within the limit"
    finally:
        cluster.close()
