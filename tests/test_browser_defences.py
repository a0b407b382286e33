"""What keeps a web page from using its visitor's browser against a cluster (``node.browsers``).

A dispatcher over in-process shards, its cluster file naming the test
server's own address, answers only its own names (DNS rebinding), only JSON
POSTs (forms and simple ``fetch`` calls), and mutations by GET only where
``[http] mutations_by_get`` says so.
"""

from __future__ import annotations

import secrets
import tomllib
import urllib.parse
from pathlib import Path
from typing import Any, ClassVar

import pytest
import ujson
from tornado.httputil import HTTPHeaders
from tornado.testing import AsyncHTTPTestCase

from models.errors import HostNotAllowed, UnsupportedMediaType
from node.browsers import HostCheck, HttpConfig, check_content_type, parse_http
from node.config import ClusterConfig, ConfigError, parse_config, render_config
from node.servers import dispatcher
from query.app import load_app
from tests.test_handlers import FakeShards

PEOPLE = load_app("examples.people")
MARY = {"id": 321, "first_name": "Mary", "last_name": "Smith", "country": "Australia"}
INSERT_BY_GET = "/insert_user?" + urllib.parse.urlencode(MARY)


def cluster_config(dispatcher_address: str, http: dict[str, Any]) -> ClusterConfig:
    """A cluster file of one one-replica shard (never dialled), its dispatcher at ``dispatcher_address``."""
    text = render_config(
        secrets.token_hex(24),
        "examples.people",
        [("s0", [("s0r0", "127.0.0.1:7000", "127.0.0.1:9000", ".")])],
        [("d0", dispatcher_address)],
        {"auth": {"anonymous": ["read", "write", "status"]}, "http": http},
    )
    return parse_config(tomllib.loads(text), Path("/tmp/cluster.toml"))


class BrowserCase(AsyncHTTPTestCase):
    """A dispatcher whose cluster file gives it this test server's address; ``http`` is its ``[http]``."""

    http: ClassVar[dict[str, Any]] = {}

    def get_app(self) -> Any:
        self.config = cluster_config(f"127.0.0.1:{self.get_http_port()}", self.http)
        self.shards = FakeShards(self.config, PEOPLE)
        return dispatcher(self.config, PEOPLE, self.shards).application  # type: ignore[arg-type]

    def ask(self, method: str, target: str, body: bytes | None = None, **headers: str) -> tuple[int, Any]:
        names = {name.replace("_", "-"): value for name, value in headers.items()}
        response = self.fetch(target, method=method, body=body, headers=names, allow_nonstandard_methods=True)
        return response.code, ujson.loads(response.body)

    def stored(self) -> list[int]:
        return [doc["id"] for doc in self.shards.machines["s0"].collections["User"].all()]


class HostTest(BrowserCase):
    http: ClassVar[dict[str, Any]] = {"hosts": ["db.example.com", "api.example.com:8443"]}

    def test_the_servers_own_names_are_answered(self) -> None:
        port = self.get_http_port()
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
            assert self.ask("GET", "/get_user", Host=host)[0] == 200, host
        for host in ("db.example.com", "db.example.com:1234", "api.example.com:8443"):
            assert self.ask("GET", "/get_user", Host=host)[0] == 200, host

    def test_any_other_name_is_421_before_anything_else(self) -> None:
        port = self.get_http_port()
        for host in (f"evil.example:{port}", "evil.example", f"localhost:{port + 1}", "api.example.com:8444"):
            code, body = self.ask("POST", "/insert_user", ujson.dumps(MARY).encode(), Host=host)
            assert (code, body["error"]["code"]) == (421, "host_not_allowed"), (host, body)
            assert body["error"]["details"] == {"host": host}
            assert self.ask("GET", "/no/such/route", Host=host)[0] == 421
        assert self.stored() == [], "a request for another name does nothing"


class ContentTypeTest(BrowserCase):
    def test_a_post_that_is_not_json_is_415_and_stores_nothing(self) -> None:
        body = ujson.dumps(MARY).encode()
        form = b'--x\r\nContent-Disposition: form-data; name="id"\r\n\r\n321\r\n--x--\r\n'
        as_a_page_sends = [
            ("text/plain", body),
            ("application/x-www-form-urlencoded", urllib.parse.urlencode(MARY).encode()),
            ("multipart/form-data; boundary=x", form),
        ]
        for content_type, sent in as_a_page_sends:
            code, answer = self.ask("POST", "/insert_user", sent, Content_Type=content_type)
            assert (code, answer["error"]["code"]) == (415, "unsupported_media_type"), content_type
        assert self.stored() == []
        assert self.ask("POST", "/insert_user", body, Content_Type="Application/JSON; charset=UTF-8")[0] == 200
        assert self.stored() == [321]

    def test_a_post_without_a_content_type_is_415(self) -> None:
        response = self.fetch("/insert_user", method="POST", body=ujson.dumps(MARY), headers={"Content-Type": ""})
        assert response.code == 415, response.body


class ProductionMutationsTest(BrowserCase):
    http: ClassVar[dict[str, Any]] = {}  # as a cluster file for a deployment: mutations_by_get is false

    def test_a_mutation_that_declares_get_is_405_by_get_and_stores_nothing(self) -> None:
        code, body = self.ask("GET", INSERT_BY_GET)
        assert (code, body["error"]["code"]) == (405, "method_not_allowed")
        assert body["error"]["details"] == {"allowed": ["POST"]} and "mutations_by_get" in body["error"]["message"]
        assert self.stored() == []
        assert self.ask("POST", "/insert_user", ujson.dumps(MARY).encode(), Content_Type="application/json")[0] == 200
        assert self.ask("GET", "/get_user?id=321")[0] == 200, "queries are called by GET as ever"

    def test_the_openapi_document_lists_no_get_for_mutations(self) -> None:
        paths = self.ask("GET", "/_schema/openapi.json")[1]["paths"]
        assert set(paths["/insert_user"]) == {"post"} and set(paths["/get_user"]) == {"get"}


class DemoMutationsTest(BrowserCase):
    http: ClassVar[dict[str, Any]] = {"mutations_by_get": True}  # as docraft up writes it

    def test_a_mutation_that_declares_get_is_called_by_get(self) -> None:
        assert self.ask("GET", INSERT_BY_GET)[0] == 200
        assert self.stored() == [321]
        paths = self.ask("GET", "/_schema/openapi.json")[1]["paths"]
        assert set(paths["/insert_user"]) == {"get", "post"}


def test_docraft_ups_cluster_file_allows_mutations_by_get_and_a_deployments_does_not() -> None:
    from node.launcher import DEMO_AUTH, DEMO_HTTP, Layout

    demo = parse_config(tomllib.loads(Layout().render("examples.people", {**DEMO_AUTH, **DEMO_HTTP})), Path("/x"))
    assert demo.http.mutations_by_get
    assert parse_config(tomllib.loads(Layout().render("examples.people")), Path("/x")).http == HttpConfig()


def test_host_check_names_and_ports() -> None:
    check = HostCheck(["10.0.0.9:8000"], ["db.example.com", "proxy.example.com:443"])
    allowed = ["10.0.0.9:8000", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "db.example.com:9", "db.example.com"]
    refused = ["10.0.0.9:8001", "10.0.0.9", "localhost", "evil.example:8000", "proxy.example.com:8000", "", ":8000"]
    assert [h for h in allowed if not check.allows(h)] == []
    assert [h for h in refused if check.allows(h)] == []
    assert HostCheck(["db.internal:80"]).allows("db.internal"), "no port in Host means the default one"
    behind_nat = HostCheck(["203.0.113.7:18000", "0.0.0.0:8000"])  # advertised, listened on
    assert behind_nat.allows("203.0.113.7:18000") and behind_nat.allows("localhost:8000")
    assert not behind_nat.allows("0.0.0.0:8000"), "a wildcard listen address is no name"
    with pytest.raises(HostNotAllowed):
        check.check(HTTPHeaders({"Host": "evil.example:8000"}))
    check.check(HTTPHeaders())  # no Host at all (HTTP/1.0): not a browser's request


def test_content_type_check_applies_to_posts_only() -> None:
    check_content_type("GET", HTTPHeaders({"Content-Type": "text/plain"}))
    check_content_type("POST", HTTPHeaders({"Content-Type": "application/json"}))
    with pytest.raises(UnsupportedMediaType):
        check_content_type("POST", HTTPHeaders({"Content-Type": "application/jsonp"}))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"host": ["x"]}, "no setting 'host'"),
        ({"hosts": "db.example.com"}, "hosts must be a list"),
        ({"hosts": [""]}, "hosts must be a list"),
        ({"mutations_by_get": "yes"}, "mutations_by_get must be true or false"),
    ],
)
def test_a_bad_http_table_is_a_config_error(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_http(table)
    with pytest.raises(ConfigError, match=message):
        cluster_config("127.0.0.1:8000", table)
