"""Coalescing of a router's writes per replica (``node.coalescer``, ``ShardClient``, ``ShardCallHandler``).

Unit tests drive a ``ShardClient`` over a fake HTTP transport that holds each
request until released, so what travels together is decided by the test, and
check that each caller sees what it would have seen calling alone. Cluster
tests send coalesced requests to real replicas and concurrent writes through a
real dispatcher, and count requests and Raft entries.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ujson
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from models.errors import DocraftError, NotLeader, OutcomeUnknown, ShardUnavailable, WrongShard
from node.cluster_secret import new_secret
from node.coalescer import Coalescer
from node.config import ClusterConfig, parse_config, render_config
from node.servers import dispatcher
from node.shard_client import ShardClient
from node.shard_map import ShardMap
from node.signing import Verifier, internal_key
from query.app import load_app
from tests.harness import Cluster, http, running, wait_for

SECRET = new_secret()
LAYOUT = [("s0", [("s0r0", "127.0.0.1:7400", "127.0.0.1:7500", ".")])]
CONFIG: ClusterConfig = parse_config(
    tomllib.loads(render_config(SECRET, "examples.people", LAYOUT, [("d0", "127.0.0.1:7499")])),
    Path("/tmp/cluster.toml"),
)
REPLICA = CONFIG.replica("s0r0")
WRITE = "/_shard/write"
READ = "/_shard/read"

# What the fake replica answers a command with, by its request id's prefix: (status, body) as a replica would.
ERRORS: dict[str, DocraftError] = {
    "not-leader": NotLeader("this replica does not lead its group", leader_raft="127.0.0.1:7501"),
    "wrong-shard": WrongShard("User.id 9: slot 3 moved", slot=3, owner="s1", shard="s1", epoch=2),
    "unknown": OutcomeUnknown("the write may or may not have been applied: no answer from Raft within 1.0s"),
}
INTERNAL = (500, DocraftError("internal error; the server log has the details").to_json())


def answer(command: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    kind = command["request_id"].split(":")[0]
    if kind in ERRORS:
        return ERRORS[kind].status, ERRORS[kind].to_json()
    if kind == "internal":
        return INTERNAL
    return 200, {"ok": command["request_id"], "served_by": {"replica": "s0r0"}}


class FakeTransport:
    """Stands in for the curl client: records each request and answers once ``release`` lets it."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], dict[str, str], bytes]] = []
        self.paths: list[str] = []
        self.released = 0
        self.fail_with: Exception | None = None
        self._changed = asyncio.Condition()

    async def fetch(self, url: str, *, method: str, body: bytes, headers: dict[str, str], **_: Any) -> Any:
        async with self._changed:
            self.requests.append((ujson.loads(body), headers, body))
            self.paths.append(url.removeprefix(REPLICA.http_url))
            self._changed.notify_all()
            mine = len(self.requests)
            await self._changed.wait_for(lambda: self.released >= mine)
        if self.fail_with is not None:
            raise self.fail_with
        sent = ujson.loads(body)
        many = sent.get("commands", sent.get("requests"))
        if many is None:
            status, decoded = answer(sent)
        else:
            results = [dict(zip(("status", "body"), answer(c), strict=True)) for c in many]
            status, decoded = 200, {"results": results}
        return SimpleNamespace(code=status, body=ujson.dumps(decoded).encode(), error=None)

    async def release(self, count: int = 1) -> None:
        async with self._changed:
            self.released += count
            self._changed.notify_all()

    async def wait_requests(self, count: int) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.requests) >= count), 5.0)


def client_over(transport: FakeTransport, batch_bytes: int | None = None) -> ShardClient:
    client = ShardClient(CONFIG)
    client.http = transport  # type: ignore[assignment]
    if batch_bytes is not None:
        client.batch_bytes = batch_bytes
    return client


def command(request_id: str, padding: int = 0) -> dict[str, Any]:
    return {
        "type": "mutation",
        "endpoint": "insert_user",
        "args": {"id": 1, "pad": "x" * padding},
        "request_id": request_id,
    }


async def settled(calls: list[asyncio.Task[Any]]) -> list[Any]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


def outcome_of(result: Any) -> Any:
    """What a caller saw, comparable: a result, or an error's type, status, message and details."""
    if isinstance(result, DocraftError):
        return (type(result), result.status, result.message, result.details)
    return result


async def first_in_flight(client: ShardClient, transport: FakeTransport) -> asyncio.Task[Any]:
    """A write that is in flight (its request sent, not yet answered) when this returns."""
    task = asyncio.ensure_future(client.write(REPLICA, command("first"), 2.0))
    await transport.wait_requests(1)
    return task


# -- the client: what travels together, and what each caller sees --------------------------------------------


def test_writes_made_while_one_is_in_flight_travel_in_one_signed_request() -> None:
    async def scenario() -> tuple[FakeTransport, list[Any]]:
        transport = FakeTransport()
        client = client_over(transport)
        first = await first_in_flight(client, transport)
        queued = [asyncio.ensure_future(client.write(REPLICA, command(f"w{i}"), 2.0)) for i in range(5)]
        await asyncio.sleep(0)  # let every queued write reach the coalescer (one loop turn, no timing)
        await transport.release(2)
        return transport, await settled([first, *queued])

    transport, results = asyncio.run(scenario())
    assert [r["ok"] for r in results] == ["first", "w0", "w1", "w2", "w3", "w4"]
    assert len(transport.requests) == 2
    single, (batch, headers, raw) = transport.requests[0][0], transport.requests[1]
    assert single["request_id"] == "first"  # a lone write goes as it always did
    assert [c["request_id"] for c in batch["commands"]] == ["w0", "w1", "w2", "w3", "w4"]
    assert len(batch["timeouts"]) == 5 and all(0 < t <= 2.0 for t in batch["timeouts"])
    Verifier(internal_key(SECRET)).verify("POST", WRITE, raw, headers, time.time())  # raises if not signed


def test_each_coalesced_write_raises_or_returns_what_it_alone_would() -> None:
    ids = ["ok:1", "not-leader:2", "wrong-shard:3", "unknown:4", "internal:5", "ok:6"]

    async def scenario() -> tuple[list[Any], list[Any]]:
        alone_transport = FakeTransport()
        alone_client = client_over(alone_transport)
        await alone_transport.release(len(ids))
        alone = [await settled([asyncio.ensure_future(alone_client.write(REPLICA, command(i), 2.0))]) for i in ids]
        transport = FakeTransport()
        client = client_over(transport)
        first = await first_in_flight(client, transport)
        together = [asyncio.ensure_future(client.write(REPLICA, command(i), 2.0)) for i in ids]
        await asyncio.sleep(0)
        await transport.release(2)
        await first
        assert len(transport.requests) == 2 and len(transport.requests[1][0]["commands"]) == len(ids)
        return [a[0] for a in alone], await settled(together)

    alone, together = asyncio.run(scenario())
    assert [outcome_of(r) for r in together] == [outcome_of(r) for r in alone]
    kinds = [type(r) for r in together]
    assert kinds == [dict, NotLeader, WrongShard, OutcomeUnknown, ShardUnavailable, dict]
    assert together[1].details["leader_raft"] == "127.0.0.1:7501" and together[2].details["owner"] == "s1"


def test_a_cancelled_caller_leaves_its_request_running_and_a_cancelled_waiting_one_is_not_sent() -> None:
    async def scenario() -> tuple[FakeTransport, list[Any]]:
        transport = FakeTransport()
        client = client_over(transport)
        first = await first_in_flight(client, transport)
        queued = [asyncio.ensure_future(client.write(REPLICA, command(f"w{i}"), 2.0)) for i in range(3)]
        await asyncio.sleep(0)
        first.cancel()  # as the router's watcher cancels an attempt on a leader that no longer leads
        queued[1].cancel()  # cancelled before its request left
        await transport.release(2)
        return transport, await settled([first, *queued])

    transport, results = asyncio.run(scenario())
    assert isinstance(results[0], asyncio.CancelledError) and isinstance(results[2], asyncio.CancelledError)
    assert results[1]["ok"] == "w0" and results[3]["ok"] == "w2"  # the in-flight request went on for the others
    assert [c["request_id"] for c in transport.requests[1][0]["commands"]] == ["w0", "w2"]


def test_a_transport_failure_fails_every_write_of_its_request_as_it_would_one() -> None:
    async def scenario() -> list[Any]:
        transport = FakeTransport()
        client = client_over(transport)
        first = await first_in_flight(client, transport)
        queued = [asyncio.ensure_future(client.write(REPLICA, command(f"w{i}"), 2.0)) for i in range(3)]
        await asyncio.sleep(0)
        transport.fail_with = ConnectionRefusedError(111, "Connection refused")
        await transport.release(2)
        return await settled([first, *queued])

    results = asyncio.run(scenario())
    assert all(isinstance(r, ShardUnavailable) and "Connection refused" in r.message for r in results), results
    assert len({id(r) for r in results}) == len(results)  # each caller raises an exception of its own


def test_a_write_whose_time_runs_out_while_it_waits_times_out_alone_and_is_not_sent() -> None:
    async def scenario() -> tuple[FakeTransport, Any, Any]:
        transport = FakeTransport()
        client = client_over(transport)
        first = await first_in_flight(client, transport)
        hurried = await settled([asyncio.ensure_future(client.write(REPLICA, command("hurried"), 0.05))])
        await transport.release(1)
        return transport, await first, hurried[0]

    transport, first, hurried = asyncio.run(scenario())
    assert first["ok"] == "first"
    assert isinstance(hurried, ShardUnavailable) and "no answer within" in hurried.message
    assert len(transport.requests) == 1


def test_a_request_carries_at_most_128_writes_and_the_rest_wait_for_the_next() -> None:
    async def scenario() -> tuple[FakeTransport, list[Any]]:
        transport = FakeTransport()
        client = client_over(transport)
        first = await first_in_flight(client, transport)
        queued = [asyncio.ensure_future(client.write(REPLICA, command(f"w{i}"), 5.0)) for i in range(300)]
        await asyncio.sleep(0)
        await transport.release(4)
        return transport, await settled([first, *queued])

    transport, results = asyncio.run(scenario())
    assert [r["ok"] for r in results[1:]] == [f"w{i}" for i in range(300)]
    assert [len(body.get("commands", [body])) for body, _, _ in transport.requests] == [1, 128, 128, 44]


def test_a_request_carries_at_most_its_byte_cap_and_a_larger_write_goes_alone() -> None:
    async def scenario() -> tuple[FakeTransport, list[Any]]:
        transport = FakeTransport()
        client = client_over(transport, batch_bytes=1000)
        first = await first_in_flight(client, transport)
        paddings = [200, 200, 200, 200, 2000, 200]
        queued = [
            asyncio.ensure_future(client.write(REPLICA, command(f"w{i}", pad), 5.0)) for i, pad in enumerate(paddings)
        ]
        await asyncio.sleep(0)
        await transport.release(5)
        return transport, await settled([first, *queued])

    transport, results = asyncio.run(scenario())
    assert [r["ok"] for r in results[1:]] == [f"w{i}" for i in range(6)]
    sent = [[c["request_id"] for c in body.get("commands", [body])] for body, _, _ in transport.requests]
    assert sent == [["first"], ["w0", "w1", "w2"], ["w3"], ["w4"], ["w5"]]
    assert all(len(raw) < 1100 for body, _, raw in transport.requests if "commands" in body)


def test_reads_made_while_one_is_in_flight_travel_together_per_consistency() -> None:
    def read(request_id: str, consistency: str) -> dict[str, Any]:
        return {"endpoint": "get_user", "args": {"id": 1}, "consistency": consistency, "request_id": request_id}

    async def scenario() -> tuple[FakeTransport, list[Any]]:
        transport = FakeTransport()
        client = client_over(transport)
        first = asyncio.ensure_future(client.read(REPLICA, read("first", "leader"), 2.0))
        await transport.wait_requests(1)
        leader = [asyncio.ensure_future(client.read(REPLICA, read(f"l{i}", "leader"), 2.0)) for i in range(3)]
        linear = asyncio.ensure_future(client.read(REPLICA, read("lin", "linearizable"), 2.0))
        await transport.wait_requests(2)  # the linearizable read does not wait for the leader reads' request
        await transport.release(3)
        return transport, await settled([first, *leader, linear])

    transport, results = asyncio.run(scenario())
    assert [r["ok"] for r in results] == ["first", "l0", "l1", "l2", "lin"]
    sent = [[c["request_id"] for c in body.get("requests", [body])] for body, _, _ in transport.requests]
    assert sent == [["first"], ["lin"], ["l0", "l1", "l2"]]
    assert all(path == READ for path in transport.paths)


def test_a_coalescer_refuses_caps_that_would_send_nothing() -> None:
    async def send(payloads: list[bytes], timeouts: list[float]) -> list[Any]:
        return list(payloads)

    with pytest.raises(ValueError, match="at least one"):
        Coalescer(send, lambda seconds: TimeoutError(), max_calls=0)


# -- real processes ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(Cluster(tmp_path_factory.mktemp("coalescing"), shards=2, replicas=3)) as started:
        yield started


def user_command(uid: int, request_id: str) -> dict[str, Any]:
    doc = {"id": uid, "first_name": "A", "last_name": "B", "country": "France", "address": "", "city": ""}
    return {"type": "mutation", "endpoint": "insert_user", "args": doc, "request_id": request_id}


def ids_on(cluster: Cluster, shard_id: str, count: int, after: int) -> list[int]:
    shards = ShardMap(cluster.processes.config)
    return [i for i in range(after, after + 100 * count) if shards.shard_for_key(i).id == shard_id][:count]


def raft_entries(cluster: Cluster, replica_id: str) -> int:
    index: int = cluster.shard_status(replica_id)["commit_index"]
    return index


def settled_entries(cluster: Cluster, replica_id: str) -> Callable[[], int]:
    """The leader's commit index once it has stopped moving (two equal readings in a row)."""

    def read() -> int | None:
        first = raft_entries(cluster, replica_id)
        return first if raft_entries(cluster, replica_id) == first else None

    return lambda: wait_for(read, 5.0, f"{replica_id}'s commit index to settle")


@pytest.mark.cluster
def test_a_coalesced_request_is_answered_per_command_as_each_alone_and_takes_one_raft_entry(cluster: Cluster) -> None:
    leader = cluster.leader_of("s0")
    ours, theirs = ids_on(cluster, "s0", 3, 50_000), ids_on(cluster, "s1", 1, 50_000)
    commands: list[Any] = [user_command(uid, f"co-{uid}") for uid in ours]
    commands += [user_command(theirs[0], "co-stranger"), "not an object", {"type": "noop"}]
    entries = settled_entries(cluster, leader)
    before = entries()
    code, body = http("POST", f"{cluster.replica_url(leader)}{WRITE}", {"commands": commands})
    assert code == 200, body
    assert entries() == before + 1  # three proposed writes, one Raft entry
    together = body["results"]
    for command_sent, result in zip(commands, together[:4], strict=False):
        alone_code, alone = http("POST", f"{cluster.replica_url(leader)}{WRITE}", command_sent)  # a retry
        assert result["status"] == alone_code
        assert result["body"].get("ok", result["body"].get("error")) == alone.get("ok", alone.get("error"))
    assert [r["status"] for r in together] == [200, 200, 200, 421, 400, 400]
    assert together[4]["body"]["error"]["message"] == "the request body must be a JSON object"
    code, body = http("POST", f"{cluster.replica_url(leader)}{WRITE}", {"commands": commands, "timeouts": [1]})
    assert (code, body["error"]["details"]) == (400, {"param": "timeouts"}), body
    reads = [{"endpoint": "get_user", "args": {"id": uid}, "consistency": "leader"} for uid in (ours[0], theirs[0])]
    code, body = http("POST", f"{cluster.replica_url(leader)}{READ}", {"requests": reads})
    assert code == 200 and [r["status"] for r in body["results"]] == [200, 421], body
    assert body["results"][0]["body"]["items"][0]["id"] == ours[0]


@pytest.mark.cluster
def test_concurrent_writes_through_a_dispatcher_take_far_fewer_requests_and_raft_entries(cluster: Cluster) -> None:
    """A dispatcher application in this process (its shard client's requests counted) over the real replicas."""
    config = cluster.processes.config
    leader = cluster.leader_of("s0")
    entries = settled_entries(cluster, leader)
    uids = ids_on(cluster, "s0", 32, 70_000)
    internal: list[str] = []

    async def through_dispatcher() -> list[int]:
        shard_client = ShardClient(config)  # made on this loop: its curl client is bound to it
        fetch = shard_client.http.fetch

        def counting_fetch(url: str, **kwargs: Any) -> Any:
            internal.append(url)
            return fetch(url, **kwargs)

        shard_client.http.fetch = counting_fetch  # type: ignore[method-assign,assignment]
        parts = dispatcher(config, load_app(config.app), shard_client)
        sock, port = bind_unused_port()
        server = HTTPServer(parts.application)
        server.add_sockets([sock])
        load = AsyncHTTPClient(force_instance=True, max_clients=64)
        try:
            responses = await asyncio.gather(
                *(
                    load.fetch(
                        f"http://127.0.0.1:{port}/insert_user",
                        method="POST",
                        body=ujson.dumps(user_command(uid, "")["args"]),
                        headers={"Content-Type": "application/json", "Host": config.dispatcher(None).http},
                        raise_error=False,
                        request_timeout=15,
                    )
                    for uid in uids
                )
            )
        finally:
            load.close()
            server.stop()
            await server.close_all_connections()
        return [r.code for r in responses]

    before = entries()
    assert asyncio.run(through_dispatcher()) == [200] * 32
    writes = [url for url in internal if url.endswith(WRITE)]
    assert len(writes) <= 4, f"32 concurrent writes took {len(writes)} internal requests"
    assert entries() - before <= len(writes), "more Raft entries than internal requests"
