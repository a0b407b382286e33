"""Every stored value is valid JSON: NaN and ±Infinity are refused wherever a value enters.

Entry points: query-string parameters (float and list[float]), JSON request
bodies (ujson reads ``NaN``, ``Infinity`` and turns ``1e999`` into infinity),
``Model.validate`` (bulk inserts, the state machine, the loader) and CSV rows.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import ujson

from examples.people.app import Order, insert_order
from models import Model, field
from models.errors import BadRequest, ValidationError
from models.json_values import non_finite_path
from node.loader import load_csv
from query import query
from query.app import load_app
from tests.harness import JSONReplyHandler
from tests.machines import insert_batch, owning_all
from tests.test_handlers import FakeClusterCase

NON_FINITE_TEXTS = ["nan", "NaN", "inf", "-inf", "Infinity", "-Infinity", "1e999", "-1e999"]
NON_FINITE_LITERALS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-1E+400"]
NON_FINITE_VALUES = [float("nan"), float("inf"), float("-inf"), 10**400]


@query()
def by_amounts(db: Any, amounts: list[float], at_least: float | None = None) -> Any:
    return amounts


class Basket(Model):
    id: int = field(primary_key=True)
    prices: list[float] = field(default=[])


def order_args(amount: str) -> dict[str, list[str]]:
    return {"id": ["1"], "user_id": ["1"], "item": ["book"], "amount": [amount]}


# -- values: query strings, JSON values, documents ---------------------------------


@pytest.mark.parametrize("text", NON_FINITE_TEXTS)
def test_query_string_float_that_is_not_finite_is_a_bad_request_naming_the_parameter(text: str) -> None:
    with pytest.raises(BadRequest, match=f"parameter 'amount': expected a finite float, got '{text}'") as info:
        insert_order.parse(order_args(text), None)
    assert info.value.details == {"param": "amount"}
    with pytest.raises(BadRequest, match="parameter 'at_least': expected a finite float"):
        by_amounts.parse({"amounts": ["1"], "at_least": [text]}, None)


@pytest.mark.parametrize("text", NON_FINITE_TEXTS)
def test_query_string_float_list_with_a_value_that_is_not_finite_is_a_bad_request(text: str) -> None:
    for url in ({"amounts": [f"1.5,{text}"]}, {"amounts": ["1.5", text]}):
        with pytest.raises(BadRequest, match="parameter 'amounts': expected a finite float") as info:
            by_amounts.parse(url, None)
        assert info.value.details == {"param": "amounts"}


def test_finite_floats_still_parse() -> None:
    assert insert_order.parse(order_args("1e308"), None)["amount"] == 1e308
    assert by_amounts.parse({"amounts": ["-0.5,2"]}, None)["amounts"] == [-0.5, 2.0]
    assert by_amounts.parse({"amounts": ["-0.5", "3e-300"]}, None)["amounts"] == [-0.5, 3e-300]
    assert by_amounts.parse({}, {"amounts": [1, 2.5]})["amounts"] == [1.0, 2.5]


@pytest.mark.parametrize("value", NON_FINITE_VALUES, ids=repr)
def test_body_value_that_is_not_finite_is_a_bad_request(value: Any) -> None:
    with pytest.raises(BadRequest, match="parameter 'amounts': expected a finite float") as info:
        by_amounts.parse({}, {"amounts": [1.0, value]})
    assert info.value.details == {"param": "amounts"}


@pytest.mark.parametrize("value", NON_FINITE_VALUES, ids=repr)
def test_document_with_a_value_that_is_not_finite_fails_validation_naming_the_field(value: Any) -> None:
    order = {"id": 1, "user_id": 1, "item": "book", "amount": value}
    with pytest.raises(ValidationError, match=r"Order\.amount: expected a finite float") as info:
        Order.validate(order)
    assert info.value.details == {"model": "Order", "field": "amount"}
    with pytest.raises(ValidationError, match=r"Basket\.prices: expected a finite float"):
        Basket.validate({"id": 1, "prices": [1.0, value]})


def test_csv_cell_that_is_not_finite_fails_validation_naming_the_field() -> None:
    with pytest.raises(ValidationError, match=r"Order\.amount: expected a finite float, got '1e999'"):
        Order.from_text({"id": "1", "user_id": "1", "item": "book", "amount": "1e999"})


def test_non_finite_path_names_where_the_first_bad_number_is() -> None:
    assert non_finite_path({"docs": [{"amount": 1.5}, {"tags": [1, [2.0, float("nan")]]}]}) == "$.docs[1].tags[1][1]"
    assert non_finite_path(float("-inf")) == "$"
    assert non_finite_path({"a": [1, 2.5, "NaN", None, True, 10**400, {"b": 1e308}]}) is None


# -- the state machine: mutations and batches that reach the log --------------------


def test_state_machine_stores_no_value_that_is_not_finite() -> None:
    machine = owning_all(load_app("examples.people"))
    user = {"id": 1, "first_name": "A", "last_name": "B", "country": "Peru"}
    assert "ok" in machine.apply({"type": "mutation", "endpoint": "insert_user", "args": user, "request_id": "u"})
    args = {"id": 7, "user_id": 1, "item": "book", "amount": float("inf")}
    result = machine.apply({"type": "mutation", "endpoint": "insert_order", "args": args, "request_id": "o"})
    assert result["error"]["code"] == "validation_failed" and result["error"]["details"]["field"] == "amount"
    docs = [{**args, "id": 8, "amount": 2.5}, {**args, "id": 9, "amount": float("nan")}]
    results = machine.apply(insert_batch("Order", docs, 1, request_id="b"))["ok"]  # orders are placed by user_id
    assert results[0] == {"ok": 8} and results[1]["error"]["details"]["field"] == "amount"
    assert [o["id"] for o in machine.collections["Order"].all()] == [8]


# -- HTTP: the query string, JSON bodies, bulk inserts -----------------------------


class NonFiniteOverHTTPTest(FakeClusterCase):
    def setUp(self) -> None:
        super().setUp()
        code, body = self.call("GET", "/insert_user?id=1&first_name=A&last_name=B&country=Peru")
        assert code == 200, body

    def stored_orders(self) -> list[dict[str, Any]]:
        return [o for machine in self.shards.machines.values() for o in machine.collections["Order"].all()]

    def test_query_string_amount_that_is_not_finite_is_400_and_nothing_is_stored(self) -> None:
        for text in NON_FINITE_TEXTS:
            query = urllib.parse.urlencode({"id": 1, "user_id": 1, "item": "book", "amount": text})
            code, body = self.call("GET", f"/insert_order?{query}")
            assert code == 400, (text, body)
            assert body["error"]["code"] == "bad_request" and body["error"]["details"] == {"param": "amount"}
        assert self.stored_orders() == []

    def test_json_body_with_a_number_that_is_not_finite_is_400_naming_where(self) -> None:
        for literal in NON_FINITE_LITERALS:
            raw = f'{{"id": 1, "user_id": 1, "item": "book", "amount": {literal}}}'.encode()
            code, body = self.call("POST", "/insert_order", raw=raw)
            assert code == 400, (literal, body)
            assert body["error"]["code"] == "bad_request" and body["error"]["details"] == {"path": "$.amount"}
            assert "not finite at $.amount" in body["error"]["message"]
        assert self.stored_orders() == []

    def test_bulk_body_with_a_number_that_is_not_finite_is_400_and_stores_no_document(self) -> None:
        good = '{"id": 1, "user_id": 1, "item": "book", "amount": 2.5}'
        raw = f'{{"docs": [{good}, {{"id": 2, "user_id": 1, "item": "pen", "amount": 1e999}}]}}'.encode()
        code, body = self.call("POST", "/_bulk/Order", raw=raw)
        assert code == 400 and body["error"]["details"] == {"path": "$.docs[1].amount"}, body
        assert self.stored_orders() == []

    def test_bulk_insert_validates_each_document_and_stores_the_finite_ones(self) -> None:
        """The router's ``insert_batch`` (as the bulk route and the loader reach it) runs ``Model.validate``."""
        docs = [
            {"id": 1, "user_id": 1, "item": "book", "amount": 2.5},
            {"id": 2, "user_id": 1, "item": "pen", "amount": float("-inf")},
        ]
        results = self.io_loop.run_sync(lambda: self.parts.router.insert_batch("Order", docs))
        assert results[0] == {"ok": 1}
        assert results[1]["error"]["code"] == "validation_failed"
        assert results[1]["error"]["details"] == {"model": "Order", "field": "amount"}
        assert [o["id"] for o in self.stored_orders()] == [1]


# -- the CSV loader ---------------------------------------------------------------


class BulkStub(JSONReplyHandler):
    """Answers ``POST /_bulk/{model}`` as a dispatcher would when every document is stored; keeps the bodies."""

    bodies: list[bytes]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append(body)
        self.reply(200, {"results": [{"ok": doc["id"]} for doc in ujson.loads(body)["docs"]]})


@pytest.fixture
def bulk_stub() -> Iterator[tuple[str, list[bytes]]]:
    """A stub dispatcher on a port it keeps bound; stopped at teardown."""
    bodies: list[bytes] = []
    handler = type("Handler", (BulkStub,), {"bodies": bodies})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_loader_reports_rows_that_are_not_finite_by_line_and_stores_the_others(
    tmp_path: Path, bulk_stub: tuple[str, list[bytes]]
) -> None:
    url, bodies = bulk_stub
    rows = ["id,user_id,item,amount", "1,1,book,2.5", "2,1,pen,nan", "3,1,ink,1e999", "4,1,pad,-inf", "5,1,cup,3"]
    path = tmp_path / "orders.csv"
    path.write_text("\n".join(rows) + "\n")
    report = load_csv(path, Order, url, batch_size=2, progress=False)
    assert report.stored == 2
    assert report.rejected == [
        (3, "Order.amount: expected a finite float, got 'nan'"),
        (4, "Order.amount: expected a finite float, got '1e999'"),
        (5, "Order.amount: expected a finite float, got '-inf'"),
    ]
    sent = [doc["id"] for body in bodies for doc in ujson.loads(body)["docs"]]
    assert sent == [1, 5]


# -- a real cluster ---------------------------------------------------------------


@pytest.mark.cluster
def test_dispatcher_refuses_an_order_amount_that_is_not_finite_and_stores_nothing(cluster_factory: Any) -> None:
    cluster = cluster_factory(shards=1)
    code, body = cluster.get("/insert_user", id=5, first_name="A", last_name="B", country="Peru")
    assert code == 200, body
    code, body = cluster.get("/insert_order", id=1, user_id=5, item="book", amount="nan")
    assert code == 400 and body["error"]["details"] == {"param": "amount"}, body
    code, body = cluster.post("/insert_order", {"id": 2, "user_id": 5, "item": "pen", "amount": float("inf")})
    assert code == 400 and body["error"]["details"] == {"path": "$.amount"}, body
    code, body = cluster.get("/get_user_orders", user_id=5, consistency="linearizable")
    assert code == 200 and body["items"] == [], body
