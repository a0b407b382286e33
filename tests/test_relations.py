"""Relationships between documents: references, co-location, include=, reference checks."""

from __future__ import annotations

import urllib.parse
from typing import Any

import pytest
import ujson

from models import Model, Ref, field
from node.shard_map import ShardMap
from query.app import load_app
from tests.machines import owning_all
from tests.test_handlers import FakeClusterCase

JSON = {"Content-Type": "application/json"}

PEOPLE = load_app("examples.people")


class RelationsTest(FakeClusterCase):
    def get(self, path: str, **params: Any) -> tuple[int, Any]:
        response = self.fetch(f"{path}?{urllib.parse.urlencode(params)}")
        return response.code, ujson.loads(response.body)

    def add_user(self, uid: int, country: str = "Peru") -> None:
        code, body = self.get("/insert_user", id=uid, first_name="A", last_name="B", country=country)
        assert code == 200, body

    def add_order(self, oid: int, uid: int, amount: float = 1.5) -> tuple[int, Any]:
        return self.get("/insert_order", id=oid, user_id=uid, item=f"item{oid}", amount=amount)

    def test_orders_live_on_their_users_shard(self) -> None:
        shard_map = ShardMap(self.config)
        for uid in range(1, 21):
            self.add_user(uid)
            assert self.add_order(100 + uid, uid)[0] == 200
        for shard in self.config.shards:
            orders = self.shards.machines[shard.id].collections["Order"].all()
            assert orders, f"no orders on {shard.id}"
            assert all(shard_map.shard_for_key(o["user_id"]).id == shard.id for o in orders)

    def test_include_embeds_each_users_orders_in_one_response(self) -> None:
        for uid in (321, 322, 323):
            self.add_user(uid, "Chile")
        for oid, uid in ((1, 321), (2, 321), (3, 323)):
            assert self.add_order(oid, uid)[0] == 200
        code, body = self.get("/get_user", id=321, include="orders")
        assert code == 200
        [user] = body["items"]
        assert [o["id"] for o in user["orders"]] == [1, 2]
        assert all(o["user_id"] == 321 for o in user["orders"])
        code, body = self.get("/get_user", country="Chile", include="orders")
        assert {u["id"]: [o["id"] for o in u["orders"]] for u in body["items"]} == {321: [1, 2], 322: [], 323: [3]}

    def test_order_of_a_missing_user_is_422_naming_the_field_and_nothing_is_stored(self) -> None:
        code, body = self.add_order(7, 999)
        assert code == 422
        assert body["error"]["code"] == "validation_failed" and body["error"]["details"]["field"] == "user_id"
        assert all(len(m.collections["Order"]) == 0 for m in self.shards.machines.values())

    def test_get_user_orders_reads_one_shard(self) -> None:
        self.add_user(5)
        for oid in (9, 8, 7):
            assert self.add_order(oid, 5)[0] == 200
        code, body = self.get("/get_user_orders", user_id=5, limit=2)
        assert code == 200 and [o["id"] for o in body["items"]] == [7, 8] and body["next"]
        assert len(body["served_by"]) == 1

    def test_unknown_relation_is_400(self) -> None:
        code, body = self.get("/get_user", id=1, include="invoices")
        assert code == 400 and body["error"]["details"]["param"] == "include"
        assert "orders" in body["error"]["message"]


def test_parent_and_children_written_atomically_in_one_mutation() -> None:
    machine = owning_all(load_app("tests.apps.family_app"))
    ok = {"type": "mutation", "endpoint": "add_family", "args": {"id": 1, "children": 2}, "request_id": "a"}
    assert machine.apply(ok)["ok"] == {"parent": 1, "children": [10, 11]}
    failing = {"type": "mutation", "endpoint": "add_family", "args": {"id": 2, "children": -1}, "request_id": "b"}
    assert machine.apply(failing)["error"]["code"] == "validation_failed"
    assert [d["id"] for d in machine.collections["Parent"].all()] == [1]
    assert [d["id"] for d in machine.collections["Child"].all()] == [10, 11]


class Shop(Model):
    id: int = field(primary_key=True)
    title: str = ""


def test_related_name_must_not_clash_and_must_be_on_a_reference() -> None:
    with pytest.raises(TypeError, match="already has a field"):

        class Item(Model):
            id: int = field(primary_key=True)
            shop: Ref[Shop] = field(related_name="title")

    with pytest.raises(TypeError, match="not a Ref"):

        class Note(Model):
            id: int = field(primary_key=True)
            shop: int = field(related_name="notes")


class CrossShardRelationTest(FakeClusterCase):
    app = load_app("tests.apps.family_app")

    def test_include_gathers_related_documents_from_every_shard(self) -> None:
        for pid in (1, 2):
            family = ujson.dumps({"id": pid, "children": 0})
            assert self.fetch("/add_family", method="POST", body=family, headers=JSON).code == 200
        for gid in range(100, 130):
            body = ujson.dumps({"id": gid, "to": 1 if gid % 3 else 2})
            assert self.fetch("/add_gift", method="POST", body=body, headers=JSON).code == 200
        holders = [s for s, m in self.shards.machines.items() if len(m.collections["Gift"])]
        assert len(holders) == 2, "gifts should spread over both shards"
        response = self.fetch("/get_parent?include=gifts,children")
        parents = {p["id"]: p for p in ujson.loads(response.body)["items"]}
        assert [g["id"] for g in parents[1]["gifts"]] == [g for g in range(100, 130) if g % 3]
        assert [g["id"] for g in parents[2]["gifts"]] == [g for g in range(100, 130) if not g % 3]
        assert parents[1]["children"] == [] and parents[2]["children"] == []
