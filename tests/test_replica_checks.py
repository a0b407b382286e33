"""Replicas re-check what they are asked to write: the mutation's argument types, as the router checks them,
and that every key written belongs to the replica's own shard (a key of another shard is refused, never stored).

Unit tests drive a real ``ShardService`` over a fake replica that records what would be proposed to Raft;
cluster tests send commands straight to a replica's ``/_shard/write``, as a router would (signed).
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consensus.state_machine import Result, StateMachine
from models.errors import DocraftError
from node.cluster_secret import new_secret
from node.config import ClusterConfig, parse_config, render_config
from node.shard_map import ShardMap, slot_of
from node.shard_service import ShardService
from query import WriteView, mutation
from query.app import App, load_app
from tests.harness import Cluster, http, running

PEOPLE = load_app("examples.people")


@mutation(shard_key="id")
def tag_user(db: WriteView, id: int, tags: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """A mutation whose default is not of its parameter's type (a tuple for a list), as apps declare them."""
    return {"id": id, "tags": list(tags)}


APP = App("tests.test_replica_checks", dict(PEOPLE.models), {**PEOPLE.endpoints, "tag_user": tag_user})


def two_shards() -> ClusterConfig:
    layout = [(f"s{s}", [(f"s{s}r0", f"127.0.0.1:{7100 + s}", f"127.0.0.1:{7200 + s}", ".")]) for s in range(2)]
    text = render_config(new_secret(), "examples.people", layout, [("d0", "127.0.0.1:7299")])
    return parse_config(tomllib.loads(text), Path("/tmp/cluster.toml"))


CONFIG = two_shards()
SHARDS = ShardMap(CONFIG)


def key_on(shard_id: str, after: int = 0) -> int:
    """The first user id after ``after`` that shard ``shard_id`` holds."""
    return next(i for i in range(after + 1, after + 10_000) if SHARDS.shard_for_key(i).id == shard_id)


class RecordingReplica:
    """Stands in for ``consensus.replica.Replica``: records each proposed command and applies it to a state machine."""

    def __init__(self, app: App, slots: list[list[int]]) -> None:
        self.state_machine = StateMachine(app)
        self.state_machine.apply({"type": "init_slots", "ranges": slots})  # as its group's first leader does
        self.proposed: list[dict[str, Any]] = []

    def read_locally(self, reader: Any) -> Any:
        return reader(self.state_machine)

    async def submit(self, command: dict[str, Any], timeout: float) -> Result:
        self.proposed.append(command)
        return self.state_machine.apply(command, len(self.proposed))

    def status(self) -> dict[str, Any]:
        return {"role": "leader", "term": 1, "applied_index": len(self.proposed)}


def service_of(shard_id: str) -> tuple[ShardService, RecordingReplica]:
    replica = RecordingReplica(APP, [[first, last] for first, last in CONFIG.shard(shard_id).slots])
    return ShardService(replica, CONFIG.shard(shard_id).replicas[0], SHARDS), replica  # type: ignore[arg-type]


def write(service: ShardService, command: dict[str, Any]) -> Result:
    return asyncio.run(service.write({"request_id": "r1", **command}))


def refused(service: ShardService, command: dict[str, Any]) -> DocraftError:
    with pytest.raises(DocraftError) as error:
        write(service, command)
    return error.value


def user(uid: Any, **fields: Any) -> dict[str, Any]:
    return {"id": uid, "first_name": "A", "last_name": "B", "country": "France", "address": "", "city": "", **fields}


def insert_user(uid: Any, **fields: Any) -> dict[str, Any]:
    return {"type": "mutation", "endpoint": "insert_user", "args": user(uid, **fields)}


# -- keys of another shard ------------------------------------------------------------------------------


def test_a_mutation_whose_shard_key_belongs_to_another_shard_is_refused_naming_the_owner() -> None:
    service, replica = service_of("s0")
    stranger = key_on("s1")
    error = refused(service, insert_user(stranger))
    assert (error.status, error.code) == (421, "wrong_shard")
    assert error.details["shard"] == "s1" and repr(stranger) in error.message
    assert replica.proposed == []


def test_a_mutation_whose_shard_key_is_ours_is_proposed() -> None:
    service, replica = service_of("s0")
    assert write(service, insert_user(key_on("s0")))["ok"]["id"] == key_on("s0")
    assert len(replica.proposed) == 1


def test_a_co_located_write_is_checked_by_its_shard_key_not_its_primary_key() -> None:
    service, _ = service_of("s1")
    owner, order_id = key_on("s1"), key_on("s0")  # the order's own id would map to s0: it does not matter
    write(service, insert_user(owner))
    order = {"id": order_id, "user_id": owner, "item": "book", "amount": 3.0}
    assert write(service, {"type": "mutation", "endpoint": "insert_order", "args": order, "request_id": "r2"})["ok"]
    error = refused(service, {"type": "mutation", "endpoint": "insert_order", "args": {**order, "user_id": order_id}})
    assert error.code == "wrong_shard" and error.details["shard"] == "s0"


def test_a_batch_holding_one_document_of_another_shard_is_refused_whole() -> None:
    service, replica = service_of("s0")
    ours, stranger = key_on("s0"), key_on("s1")
    error = refused(service, {"type": "insert_batch", "model": "User", "docs": [user(ours), user(stranger)]})
    assert error.code == "wrong_shard" and error.details["shard"] == "s1" and repr(stranger) in error.message
    assert replica.proposed == []


def test_a_batch_of_our_documents_is_proposed_as_sent_and_invalid_ones_are_left_to_the_state_machine() -> None:
    service, replica = service_of("s0")
    docs = [user(key_on("s0")), {"id": key_on("s1")}, "not a document"]  # the last two fail validation
    result = write(service, {"type": "insert_batch", "model": "User", "docs": docs, "slot": slot_of(key_on("s0"))})
    assert replica.proposed[0]["docs"] == docs
    assert [r.get("ok") or r["error"]["code"] for r in result["ok"]] == [
        key_on("s0"),
        "validation_failed",
        "validation_failed",
    ]


# -- argument types, as the router checks them ------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "code", "param"),
    [
        (insert_user("1"), "bad_request", "id"),
        (insert_user(True), "bad_request", "id"),
        (insert_user(1, country=7), "bad_request", "country"),
        (insert_user(1, nickname="x"), "bad_request", "nickname"),
        (insert_user(1, explain=True), "bad_request", "explain"),
        ({"type": "mutation", "endpoint": "insert_user", "args": {"id": 1}}, "bad_request", "first_name"),
        ({"type": "mutation", "endpoint": "insert_user", "args": [1]}, "bad_request", "args"),
        ({"type": "mutation", "endpoint": "insert_user"}, "bad_request", "args"),
        ({"type": "mutation", "endpoint": "get_user", "args": {"id": 1}}, "bad_request", None),
        ({"type": "mutation", "endpoint": "drop_everything", "args": {}}, "not_found", None),
        ({"type": "insert_batch", "model": "User", "docs": {"id": 1}}, "bad_request", "docs"),
        ({"type": "insert_batch", "model": "Nothing", "docs": []}, "not_found", None),
        ({"type": ["mutation"]}, "bad_request", None),
    ],
    ids=[
        "text id",
        "boolean id",
        "number for text",
        "unknown parameter",
        "reserved name",
        "missing parameter",
        "args not an object",
        "no args",
        "a query",
        "unknown endpoint",
        "docs not a list",
        "unknown model",
        "type not text",
    ],
)
def test_a_write_the_router_would_have_refused_is_refused_before_raft(
    command: dict[str, Any], code: str, param: str | None
) -> None:
    service, replica = service_of("s0")
    error = refused(service, command)
    assert error.code == code and error.details.get("param") == param, error.to_json()
    assert replica.proposed == []


def test_a_mutation_is_proposed_with_its_arguments_as_the_router_parses_them() -> None:
    service, replica = service_of("s1")
    owner = key_on("s1")
    write(service, insert_user(owner))
    order = {"id": 1, "user_id": owner, "item": "book", "amount": 3}
    write(service, {"type": "mutation", "endpoint": "insert_order", "args": order, "request_id": "r2"})
    amount = replica.proposed[1]["args"]["amount"]
    assert amount == 3.0 and isinstance(amount, float)  # an int given for a float, as the router makes it


def test_defaults_the_router_filled_in_are_accepted_even_when_not_of_the_parameter_type() -> None:
    service, replica = service_of("s0")
    uid = key_on("s0")
    # what an in-process router sends: the default as declared, a tuple
    assert write(service, {"type": "mutation", "endpoint": "tag_user", "args": {"id": uid, "tags": ()}})["ok"] == {
        "id": uid,
        "tags": [],
    }
    tagged = {"type": "mutation", "endpoint": "tag_user", "args": {"id": uid, "tags": ("a",)}}
    assert refused(service, tagged).details == {"param": "tags"}  # a tuple that is not the default is no list
    assert write(service, {"type": "mutation", "endpoint": "tag_user", "args": {"id": uid}, "request_id": "r2"})
    assert replica.proposed[1]["args"] == {"id": uid, "tags": ()}


@pytest.mark.parametrize(
    "command",
    [{"type": "set_fingerprint", "fingerprint": "f" * 64}, {"type": "migrate", "model": "User", "to": 1}],
    ids=["set_fingerprint", "migrate"],
)
def test_commands_for_every_shard_are_proposed_as_sent(command: dict[str, Any]) -> None:
    service, replica = service_of("s0")
    write(service, command)
    assert replica.proposed[0] == {**command, "request_id": "r1", "time": replica.proposed[0]["time"]}


# -- real processes: a key of another shard sent straight to a replica -------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(Cluster(tmp_path_factory.mktemp("replica-checks"), shards=2, replicas=1)) as started:
        yield started


def stored_on(cluster: Cluster, replica_id: str, uid: int) -> list[dict[str, Any]]:
    """The users with id ``uid`` that ``replica_id`` itself holds (read there, whatever shard owns the id:
    a lookup, as ``include=`` makes, is not refused for a key of another shard as ``get_user?id=`` is)."""
    request = {"lookup": {"model": "User", "field": "id", "values": [uid]}, "consistency": "stale"}
    code, body = http("POST", f"{cluster.replica_url(replica_id)}/_shard/read", request)
    assert code == 200, body
    items: list[dict[str, Any]] = body["items"]
    return items


def owner_of(cluster: Cluster, uid: int) -> str:
    return ShardMap(cluster.processes.config).shard_for_key(uid).id


def send_write(cluster: Cluster, replica_id: str, command: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    return http("POST", f"{cluster.replica_url(replica_id)}/_shard/write", command)


@pytest.mark.cluster
def test_a_mutation_for_another_shard_sent_straight_to_a_replica_is_refused_and_not_stored(cluster: Cluster) -> None:
    uid = next(i for i in range(500, 10_000) if owner_of(cluster, i) == "s1")
    command = {**insert_user(uid), "request_id": "straight-1"}
    code, body = send_write(cluster, "s0r0", command)
    assert (code, body["error"]["code"], body["error"]["details"]["shard"]) == (421, "wrong_shard", "s1"), body
    assert stored_on(cluster, "s0r0", uid) == []
    # the same command sent to its own shard is stored: it was refused for its key alone
    code, body = send_write(cluster, "s1r0", command)
    assert code == 200 and body["ok"]["id"] == uid, body
    assert [doc["id"] for doc in stored_on(cluster, "s1r0", uid)] == [uid]
    assert stored_on(cluster, "s0r0", uid) == []


@pytest.mark.cluster
def test_a_batch_with_a_document_for_another_shard_sent_straight_to_a_replica_stores_nothing(cluster: Cluster) -> None:
    ours = next(i for i in range(10_000, 20_000) if owner_of(cluster, i) == "s0")
    stranger = next(i for i in range(10_000, 20_000) if owner_of(cluster, i) == "s1")
    command = {"type": "insert_batch", "model": "User", "docs": [user(ours), user(stranger)], "request_id": "b-1"}
    code, body = send_write(cluster, "s0r0", command)
    assert (code, body["error"]["code"], body["error"]["details"]["shard"]) == (421, "wrong_shard", "s1"), body
    assert stored_on(cluster, "s0r0", ours) == [] and stored_on(cluster, "s0r0", stranger) == []
