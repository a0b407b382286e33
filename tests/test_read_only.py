"""Reads are read-only: what any read hands out is a copy, so nothing a caller does to it reaches storage.

Covers every reader: app query code (``ReadView``), mutations (``WriteView``),
the state machine's lookups for ``include=``, and a replica's own router,
which calls its shard in-process (``ShardClient(local=service)``) and embeds
related documents into what the read returned.
"""

from __future__ import annotations

import asyncio
import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tornado.httpclient import AsyncHTTPClient

from consensus.slots import slot_of
from consensus.state_machine import Result, StateMachine
from models.errors import DocraftError
from models.types import ListOf, Optional, Reference, Scalar, ValueType
from node.cluster_secret import new_secret
from node.config import ClusterConfig, ReplicaConfig, parse_config, render_config
from node.router import Router
from node.shard_client import ShardClient
from node.shard_map import ShardMap
from node.shard_service import ShardService
from query.app import load_app
from query.collection import HASH_MODULUS, Collection, document_hash
from query.ordering import value_key
from tests.apps.careless_app import Note, scribble
from tests.harness import Cluster, wait_for
from tests.machines import owning_all

PEOPLE = load_app("examples.people")
CARELESS = load_app("tests.apps.careless_app")
COUNTRIES = ("Peru", "Chile", "Japan")


def snapshot_of(machine: StateMachine) -> dict[str, Any]:
    """The machine's snapshot, deep-copied so a later change to a stored document cannot reach it too."""
    snapshot: dict[str, Any] = copy.deepcopy(machine.snapshot())
    return snapshot


def hash_is_true(collection: Collection) -> bool:
    """Whether the incrementally kept content hash matches one computed from what is stored now."""
    fresh = sum(document_hash(collection.model.name, doc) for doc in collection.docs.values()) % HASH_MODULUS
    return fresh == collection.content_hash


# -- the collection --------------------------------------------------------------


def test_collection_reads_return_copies_that_share_no_list_with_what_is_stored() -> None:
    collection = Collection(Note, slot_of)
    for key in (1, 2):
        collection.put(Note.validate({"id": key, "tags": [["a", "b"], ["c"]]}))
    stored = [Note.validate({"id": key, "tags": [["a", "b"], ["c"]]}) for key in (1, 2)]
    topic = value_key("misc")
    for doc in [collection.get(1), *collection.all(), *collection.scan_index("topic", topic, topic)]:
        assert doc is not None
        scribble(doc)
    assert list(collection.docs.values()) == stored  # the stored dicts themselves, not an accessor's view
    assert hash_is_true(collection)


# -- app code: queries and mutations ---------------------------------------------


def careless_machine() -> StateMachine:
    machine = owning_all(CARELESS)
    for key in (1, 2, 3):
        assert "ok" in machine.apply({"type": "mutation", "endpoint": "add_note", "args": {"id": key}})
    return machine


def test_a_query_that_changes_what_it_read_changes_nothing_stored() -> None:
    machine = careless_machine()
    before = snapshot_of(machine)
    for key in (1, None):
        result = machine.query("read_and_scribble", {"id": key})
        assert result["value"] and all(doc["topic"] == "scribbled" for doc in result["value"])
    assert snapshot_of(machine) == before


@pytest.mark.parametrize(
    ("endpoint", "args"),
    [("scribble_on_get", {"id": 2}), ("delete_scribble_and_fail", {"id": 2})],
)
def test_a_mutation_that_changes_a_document_in_place_changes_nothing_stored(
    endpoint: str, args: dict[str, Any]
) -> None:
    """In place, not through ``put``: neither a read nor the copy a delete returns reaches the store or its undo log."""
    machine = careless_machine()
    before = snapshot_of(machine)["collections"]
    machine.apply({"type": "mutation", "endpoint": endpoint, "args": args})
    assert snapshot_of(machine)["collections"] == before
    assert hash_is_true(machine.collections["Note"])


def test_a_mutation_that_changes_what_it_wrote_leaves_the_validated_documents_stored() -> None:
    machine = careless_machine()
    result = machine.apply({"type": "mutation", "endpoint": "scribble_on_written", "args": {"id": 10}})
    assert [doc["topic"] for doc in result["ok"]] == ["scribbled"] * 3
    notes = machine.collections["Note"]
    assert notes.get(10) == {"id": 10, "topic": "misc", "tags": [["new"]]}
    assert notes.get(11) == {"id": 11, "topic": "updated", "tags": [["new"]]}
    assert hash_is_true(notes)


# -- every read through a router calling its shards in-process -------------------


def one_replica_per_shard(shards: int) -> ClusterConfig:
    """A cluster file whose addresses are never dialled: every call below stays in this process."""
    layout = [(f"s{s}", [(f"s{s}r0", f"127.0.0.1:{7100 + s}", f"127.0.0.1:{7200 + s}", ".")]) for s in range(shards)]
    text = render_config(new_secret(), "examples.people", layout, [("d0", "127.0.0.1:7299")])
    return parse_config(tomllib.loads(text), Path("/tmp/cluster.toml"))


class GroupOfOne:
    """Stands in for ``consensus.replica.Replica`` under a real ``ShardService``: it leads, applies on submit.

    A linearizable read's no-op barrier is not applied: a group of one has
    nothing to wait for, and the no-op would change the log hash the snapshots compare.
    """

    def __init__(self, state_machine: StateMachine) -> None:
        self.state_machine = state_machine
        self.index = 0
        self.fault = None  # it never distrusts its own state

    async def submit(self, command: dict[str, Any], timeout: float) -> Result:
        if command.get("type") == "noop":
            return {"ok": None}
        self.index += 1
        return self.state_machine.apply(command, self.index)

    def check_leader_read(self) -> None:
        return None

    def read_locally(self, reader: Any) -> Result:
        result: Result = reader(self.state_machine)
        return result

    def status(self) -> dict[str, Any]:
        index = self.index
        return {
            "role": "leader",
            "term": 1,
            "leader_raft": None,
            "applied_index": index,
            "commit_index": index,
            "fault": None,
        }


class InProcessShards:
    """Every replica through its own ``ShardClient(local=service)``: the path a replica's router takes to itself."""

    def __init__(self, config: ClusterConfig, services: dict[str, ShardService]) -> None:
        self.clients = {replica_id: ShardClient(config, local=service) for replica_id, service in services.items()}

    def is_local(self, replica: ReplicaConfig) -> bool:
        return True

    async def read(self, replica: ReplicaConfig, request: dict[str, Any], timeout: float) -> Result:
        return await self.clients[replica.id].read(replica, request, timeout)

    async def write(self, replica: ReplicaConfig, command: dict[str, Any], timeout: float) -> Result:
        return await self.clients[replica.id].write(replica, command, timeout)

    async def status(self, replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
        return await self.clients[replica.id].status(replica, timeout)


def texts_for(value_type: ValueType) -> st.SearchStrategy[str]:
    """Query-string texts for a parameter: mostly values that match stored documents, some that fail."""
    if isinstance(value_type, Optional):
        return st.just("") | texts_for(value_type.inner)
    if isinstance(value_type, ListOf):
        return st.lists(texts_for(value_type.item), max_size=3).map(",".join)
    if isinstance(value_type, Reference):
        return texts_for(value_type.key)
    assert isinstance(value_type, Scalar), value_type
    if value_type.python_type is int:
        return st.integers(-1, 12).map(str)
    if value_type.python_type is float:
        return st.floats(allow_nan=False, allow_infinity=False).map(repr)
    if value_type.python_type is bool:
        return st.sampled_from(["true", "false"])
    return st.sampled_from(COUNTRIES) | st.text(max_size=4)


RESERVED_CHOICES = {
    "include": ["orders", "orders", "orders,orders", "invoices", ""],
    "explain": ["0", "1"],
    "consistency": ["stale", "leader", "linearizable"],
}


@st.composite
def reads(draw: st.DrawFn) -> tuple[str, dict[str, list[str]]]:
    """A call of any query endpoint of the people app, with any arguments and reserved parameters."""
    name = draw(st.sampled_from(sorted(n for n, e in PEOPLE.endpoints.items() if e.kind == "query")))
    args = {
        param.name: [draw(texts_for(param.type))]
        for param in PEOPLE.endpoint(name).params.values()
        if param.required or draw(st.booleans())
    }
    for reserved, choices in RESERVED_CHOICES.items():
        if draw(st.booleans()):
            args[reserved] = [draw(st.sampled_from(choices))]
    return name, args


def scribble_on_response(response: dict[str, Any]) -> None:
    """What a careless caller might do with a response: change every document in it, embedded ones too."""
    for item in response.get("items", []):
        embedded = [doc for value in item.values() if isinstance(value, list) for doc in value]
        for doc in [*embedded, item]:
            doc["scribbled"] = True


async def read_pages(router: Router, name: str, args: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Every page of the read, following ``next``; an answered error ends it."""
    responses: list[dict[str, Any]] = []
    while True:
        try:
            response = await router.call(name, "GET", args, None)
        except DocraftError:
            return responses
        responses.append(response)
        if not response.get("next") or "cursor" not in PEOPLE.endpoint(name).params:
            return responses
        args = {**args, "cursor": [response["next"]]}


async def reads_leave_every_snapshot_alone(
    users: dict[int, str], orders: list[tuple[int, float]], calls: list[tuple[str, dict[str, list[str]]]]
) -> None:
    config = one_replica_per_shard(2)
    machines = {shard.id: StateMachine(PEOPLE) for shard in config.shards}
    for shard in config.shards:  # what each group's first leader commits (Replica's initial_slots)
        machines[shard.id].apply({"type": "init_slots", "ranges": [list(r) for r in shard.slots]})
    services = {
        s.replicas[0].id: ShardService(GroupOfOne(machines[s.id]), s.replicas[0], ShardMap(config))  # type: ignore[arg-type]
        for s in config.shards
    }
    router = Router(config, PEOPLE, InProcessShards(config, services), deadline=1.0)  # type: ignore[arg-type]
    for uid, country in users.items():
        args = {"id": [str(uid)], "first_name": ["A"], "last_name": ["B"], "country": [country]}
        await router.call("insert_user", "POST", args, None)
    ids = sorted(users)
    for oid, (pick, amount) in enumerate(orders):
        args = {"id": [str(oid)], "user_id": [str(ids[pick % len(ids)])], "item": ["book"], "amount": [repr(amount)]}
        await router.call("insert_order", "POST", args, None)
    before = {shard_id: snapshot_of(machine) for shard_id, machine in machines.items()}
    for name, args in calls:
        for response in await read_pages(router, name, args):
            scribble_on_response(response)
    assert {shard_id: snapshot_of(machine) for shard_id, machine in machines.items()} == before


def test_no_read_through_an_in_process_router_changes_a_snapshot() -> None:
    loop = asyncio.new_event_loop()

    @settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        users=st.dictionaries(st.integers(1, 10), st.sampled_from(COUNTRIES), min_size=1, max_size=8),
        orders=st.lists(st.tuples(st.integers(0, 7), st.floats(0, 1e6)), max_size=12),
        calls=st.lists(reads(), min_size=1, max_size=6),
    )
    def check(users: dict[int, str], orders: list[tuple[int, float]], calls: list[Any]) -> None:
        loop.run_until_complete(reads_leave_every_snapshot_alone(users, orders, calls))

    async def close_http_client() -> None:
        AsyncHTTPClient().close()  # the one ShardClient's constructor made for this loop

    try:
        check()
    finally:
        loop.run_until_complete(close_http_client())
        loop.close()


# -- real clusters -----------------------------------------------------------------


def stale_items(cluster: Cluster, replica_id: str, path: str, **params: Any) -> list[dict[str, Any]]:
    """What ``replica_id`` itself stores for a read of its own shard, asked on its own port."""
    code, body = cluster.get(path, base=cluster.replica_url(replica_id), consistency="stale", **params)
    assert code == 200, body
    assert [s["replica"] for s in body["served_by"]] == [replica_id], body["served_by"]
    items: list[dict[str, Any]] = body["items"]
    return items


def settled_digests(cluster: Cluster, shard_id: str) -> dict[str, str]:
    """Each replica's digest of ``shard_id``, read when every one of them has applied the same index."""

    def read() -> dict[str, str] | None:
        reports = {r: cluster.get("/_admin/digest", base=cluster.replica_url(r)) for r in cluster.replica_ids(shard_id)}
        if len({body["applied_index"] for _, body in reports.values()}) != 1:
            return None
        return {replica_id: body["digest"] for replica_id, (_, body) in reports.items()}

    return wait_for(read, 15, f"every replica of {shard_id} at the same applied index")


def revalidate_everything(cluster: Cluster) -> None:
    """Migrate each model to its own version: every replica checks every stored document against its model."""
    for model in ("User", "Order"):
        code, body = cluster.post("/_admin/migrate", {"model": model, "to": 1})
        assert code == 200, body


def user(uid: int, country: str = "Peru") -> dict[str, Any]:
    return {"id": uid, "first_name": "Ada", "last_name": "L", "country": country, "address": "", "city": ""}


@pytest.mark.cluster
def test_include_read_on_a_replicas_own_port_leaves_its_stored_user_alone(cluster_factory: Any) -> None:
    cluster = cluster_factory(shards=1)
    assert cluster.post("/insert_user", user(1001))[0] == 200
    for oid in (1, 2):
        assert cluster.get("/insert_order", id=oid, user_id=1001, item="book", amount=9.5)[0] == 200
    follower = next(r for r in cluster.replica_ids("s0") if r != cluster.leader_of("s0"))
    wait_for(lambda: len(stale_items(cluster, follower, "/get_user_orders", user_id=1001)) == 2, 10, "orders")

    code, body = cluster.get(
        "/get_user", base=cluster.replica_url(follower), id=1001, include="orders", consistency="stale"
    )
    assert code == 200 and [s["replica"] for s in body["served_by"]] == [follower], body
    assert [o["id"] for o in body["items"][0]["orders"]] == [1, 2]

    assert stale_items(cluster, follower, "/get_user", id=1001) == [user(1001)]
    revalidate_everything(cluster)
    assert cluster.get("/insert_order", id=3, user_id=1001, item="pen", amount=1.0)[0] == 200
    digests = settled_digests(cluster, "s0")
    assert len(set(digests.values())) == 1, digests


@pytest.mark.cluster
def test_reads_over_http_at_every_port_and_consistency_change_no_replica(cluster_factory: Any) -> None:
    cluster = cluster_factory()
    users = {uid: user(uid, COUNTRIES[uid % 3]) for uid in range(1, 9)}
    for doc in users.values():
        assert cluster.post("/insert_user", doc)[0] == 200
    for oid, uid in enumerate((1, 1, 2, 5, 8)):
        assert cluster.get("/insert_order", id=oid, user_id=uid, item="book", amount=2.5)[0] == 200
    shard_ids = [s.id for s in cluster.processes.config.shards]
    for shard_id in shard_ids:
        settled_digests(cluster, shard_id)  # every replica holds every document before the reads

    reads: list[tuple[str, dict[str, Any]]] = [
        ("/get_user", {"id": 1, "include": "orders"}),
        ("/get_user", {"country": "Chile", "include": "orders", "explain": 1}),
        ("/get_user", {"include": "orders", "limit": 3}),
        ("/get_user_orders", {"user_id": 1, "limit": 1}),
    ]
    bases = [cluster.url] + [cluster.replica_url(r) for s in shard_ids for r in cluster.replica_ids(s)]
    for base in bases:
        for consistency in ("stale", "leader", "linearizable"):
            for path, params in reads:
                code, body = cluster.get(path, base=base, consistency=consistency, **params)
                assert code == 200, (base, path, body)

    shard_map = ShardMap(cluster.processes.config)
    for uid, doc in users.items():
        for replica in shard_map.shard_for_key(uid).replicas:
            assert stale_items(cluster, replica.id, "/get_user", id=uid) == [doc]
            orders = stale_items(cluster, replica.id, "/get_user_orders", user_id=uid)
            assert all(set(order) == {"id", "user_id", "item", "amount", "created_at"} for order in orders)
    revalidate_everything(cluster)
    for shard_id in shard_ids:
        digests = settled_digests(cluster, shard_id)
        assert len(set(digests.values())) == 1, (shard_id, digests)
