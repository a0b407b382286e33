"""Signed internal requests (``node.signing``): what a verifier accepts, what it refuses and counts,
that docraft's own callers (``ShardClient``, ``node.admin.http_json``) sign what a server receives,
and that a replica refuses internal requests from a process without the cluster's secret."""

from __future__ import annotations

import asyncio
import threading
import time
import tomllib
from collections.abc import Iterator
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import pytest
import ujson
from tornado.httpclient import AsyncHTTPClient

from models.errors import Unauthorized
from node.admin import http_json
from node.cluster_secret import new_secret
from node.config import ClusterConfig, parse_config, render_config
from node.shard_client import ShardClient
from node.signing import (
    DATE_HEADER,
    NONCE_HEADER,
    REASONS,
    SIGNATURE_HEADER,
    NonceMemory,
    Verifier,
    internal_key,
    key_id,
    sign,
)
from tests.harness import Cluster, JSONReplyHandler, http, member_key

SECRET, OTHER_SECRET = new_secret(), new_secret()
KEY = internal_key(SECRET)
OTHER_KEY = internal_key(OTHER_SECRET)
NOW = 1_700_000_000.0
BODY = b'{"type":"mutation","endpoint":"insert_user","args":{"id":1}}'


def refusal(verifier: Verifier, headers: dict[str, str], **request: Any) -> str:
    """The reason ``verifier`` refuses the request (POST /_shard/write with BODY at NOW unless given)."""
    call = {"method": "POST", "path_with_query": "/_shard/write", "body": BODY, "now": NOW, **request}
    with pytest.raises(Unauthorized) as refused:
        verifier.verify(call["method"], call["path_with_query"], call["body"], headers, call["now"])
    assert refused.value.status == 401 and refused.value.code == "unauthorized"
    reason: str = refused.value.details["reason"]
    return reason


def signed(key: bytes = KEY, now: float = NOW, method: str = "POST", path: str = "/_shard/write") -> dict[str, str]:
    return sign(key, method, path, BODY, now)


# -- keys ---------------------------------------------------------------------------------------


def test_the_internal_key_is_derived_from_the_secret_and_is_not_the_secret() -> None:
    secret = SECRET
    assert internal_key(secret) == KEY and len(KEY) == 32
    assert KEY != OTHER_KEY
    assert secret.encode() not in KEY


def test_a_signature_names_its_key_without_revealing_it() -> None:
    headers = signed()
    assert headers[SIGNATURE_HEADER].split(":")[0] == key_id(KEY) != key_id(OTHER_KEY)
    assert KEY.hex() not in "".join(headers.values())


def test_every_signature_has_a_fresh_nonce() -> None:
    assert len({signed()[NONCE_HEADER] for _ in range(100)}) == 100


# -- what a verifier accepts -----------------------------------------------------------------------


def test_a_signed_request_is_accepted_and_nothing_is_counted() -> None:
    verifier = Verifier(KEY)
    verifier.verify("POST", "/_shard/write", BODY, signed(), NOW)
    verifier.verify("GET", "/_admin/digest?x=1", b"", sign(KEY, "GET", "/_admin/digest?x=1", b"", NOW), NOW)
    assert verifier.refused == dict.fromkeys(REASONS, 0)


@pytest.mark.parametrize("skew", [-30.0, -1.0, 0.0, 29.9, 30.0])
def test_a_request_dated_within_the_window_either_way_is_accepted(skew: float) -> None:
    Verifier(KEY, window=30.0).verify("POST", "/_shard/write", BODY, signed(now=NOW + skew), NOW)


# -- what it refuses, and counts ---------------------------------------------------------------------


def test_an_unsigned_request_is_refused_as_missing() -> None:
    verifier = Verifier(KEY)
    assert refusal(verifier, {}) == "missing"
    partial = signed()
    del partial[NONCE_HEADER]
    assert refusal(verifier, partial) == "missing"
    assert verifier.refused["missing"] == 2


def test_a_request_signed_with_another_key_is_refused_as_forged() -> None:
    verifier = Verifier(KEY)
    assert refusal(verifier, signed(OTHER_KEY)) == "forged"
    assert verifier.refused == {**dict.fromkeys(REASONS, 0), "forged": 1}


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (SIGNATURE_HEADER, "not a signature"),
        (SIGNATURE_HEADER, "0" * 16),
        (DATE_HEADER, "yesterday"),
        (DATE_HEADER, "nan"),
        (DATE_HEADER, "1e999"),
        (NONCE_HEADER, "short"),
        (NONCE_HEADER, "G" * 32),
    ],
)
def test_malformed_signature_headers_are_refused_as_forged(header: str, value: str) -> None:
    verifier = Verifier(KEY)
    assert refusal(verifier, {**signed(), header: value}) == "forged"
    assert verifier.refused["forged"] == 1


@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY.replace(b'"id":1', b'"id":2')},
        {"body": b""},
        {"path_with_query": "/_shard/read"},
        {"path_with_query": "/_shard/write?x=1"},
        {"method": "PUT"},
    ],
    ids=["body", "no body", "path", "query", "method"],
)
def test_a_request_changed_after_signing_is_refused_as_altered(change: dict[str, Any]) -> None:
    verifier = Verifier(KEY)
    assert refusal(verifier, signed(), **change) == "altered"
    assert verifier.refused["altered"] == 1


def test_a_changed_date_or_nonce_is_refused_as_altered() -> None:
    verifier = Verifier(KEY)
    headers = signed()
    assert refusal(verifier, {**headers, DATE_HEADER: f"{NOW + 1:.3f}"}) == "altered"
    assert refusal(verifier, {**headers, NONCE_HEADER: "0" * 32}) == "altered"
    assert verifier.refused["altered"] == 2


def test_a_replayed_request_is_refused_as_replayed() -> None:
    verifier = Verifier(KEY)
    headers = signed()
    verifier.verify("POST", "/_shard/write", BODY, headers, NOW)
    assert refusal(verifier, headers, now=NOW + 1) == "replayed"
    assert refusal(verifier, headers, now=NOW + 29) == "replayed"
    assert verifier.refused["replayed"] == 2


@pytest.mark.parametrize("skew", [-30.01, -3600.0, 30.01, 3600.0], ids=["late", "an hour late", "early", "future"])
def test_a_request_dated_beyond_the_window_is_refused_as_expired(skew: float) -> None:
    verifier = Verifier(KEY, window=30.0)
    assert refusal(verifier, signed(now=NOW + skew)) == "expired"
    assert verifier.refused["expired"] == 1


def test_an_expired_refusal_says_how_long_ago_or_ahead_the_request_was_signed() -> None:
    verifier = Verifier(KEY)
    for skew, said in ((37.5, "signed 37.5s ago"), (-37.5, "signed 37.5s in the future")):
        with pytest.raises(Unauthorized, match=said):
            verifier.verify("POST", "/_shard/write", BODY, signed(now=NOW - skew), NOW)


def test_a_replay_after_the_window_is_refused_as_expired() -> None:
    verifier = Verifier(KEY, window=30.0)
    headers = signed()
    verifier.verify("POST", "/_shard/write", BODY, headers, NOW)
    assert refusal(verifier, headers, now=NOW + 31) == "expired"


def test_refusals_are_counted_per_reason() -> None:
    verifier = Verifier(KEY)
    replayed = signed()
    verifier.verify("POST", "/_shard/write", BODY, replayed, NOW)
    for headers, request in [
        ({}, {}),
        (signed(OTHER_KEY), {}),
        (signed(), {"body": b"{}"}),
        (signed(now=NOW - 100), {}),
        (replayed, {}),
        (replayed, {}),
    ]:
        refusal(verifier, headers, **request)
    assert verifier.refused == {"missing": 1, "forged": 1, "altered": 1, "expired": 1, "replayed": 2}


def test_the_window_must_be_a_positive_number() -> None:
    for window in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="replay window"):
            Verifier(KEY, window=window)


# -- the nonce memory is bounded ------------------------------------------------------------------------


def test_nonces_are_forgotten_once_their_window_has_passed() -> None:
    verifier = Verifier(KEY, window=30.0)
    for second in range(10):
        verifier.verify("POST", "/_shard/write", BODY, signed(now=NOW + second), NOW + second)
    assert len(verifier.nonces) == 10
    verifier.verify("POST", "/_shard/write", BODY, signed(now=NOW + 100), NOW + 100)
    assert len(verifier.nonces) == 1


def test_a_full_nonce_memory_stays_bounded_and_never_accepts_a_replay() -> None:
    verifier = Verifier(KEY, window=30.0, nonces_kept=3)
    sent = [signed(now=NOW + i / 10) for i in range(10)]
    for i, headers in enumerate(sent):
        verifier.verify("POST", "/_shard/write", BODY, headers, NOW + i / 10)
        assert len(verifier.nonces) <= 3
    # the seven forgotten nonces are refused (they can no longer be told apart from replays), the others as replays
    reasons = [refusal(verifier, headers, now=NOW + 1) for headers in sent]
    assert reasons == ["expired"] * 7 + ["replayed"] * 3
    # while requests signed now still get in
    verifier.verify("POST", "/_shard/write", BODY, signed(now=NOW + 1), NOW + 1)


def test_a_nonce_memory_answers_new_seen_and_forgotten() -> None:
    memory = NonceMemory(capacity=2)
    assert [memory.remember(n, expires, now=0.0) for n, expires in [("a", 10.0), ("b", 20.0), ("a", 10.0)]] == [
        "new",
        "new",
        "seen",
    ]
    assert memory.remember("c", 30.0, now=0.0) == "new"  # full: "a", expiring first, is forgotten
    assert len(memory) == 2 and memory.horizon == 10.0
    assert memory.remember("a", 10.0, now=0.0) == "forgotten"
    assert memory.remember("b", 20.0, now=25.0) == "new"  # "b" expired at 20, so it is a new nonce again
    with pytest.raises(ValueError):
        NonceMemory(capacity=0)


# -- docraft's callers sign what the server receives -------------------------------------------------------


class VerifyingServer(HTTPServer):
    """A server on a free loopback port that answers 200 to requests ``verifier`` accepts and 401 to others."""

    def __init__(self, verifier: Verifier) -> None:
        super().__init__(("127.0.0.1", 0), VerifyingHandler)
        self.verifier = verifier
        self.seen: list[tuple[str, str, bytes]] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class VerifyingHandler(JSONReplyHandler):
    server: VerifyingServer

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.seen.append((self.command, self.path, body))
        try:
            self.server.verifier.verify(self.command, self.path, body, self.headers, time.time())  # type: ignore[arg-type]
            status, reply = 200, {"ok": "verified"}
        except Unauthorized as exc:
            status, reply = 401, exc.to_json()
        self.reply(status, reply)


@pytest.fixture
def server() -> Iterator[VerifyingServer]:
    server = VerifyingServer(Verifier(KEY))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def config_with_secret(secret: str, replica_http: str) -> ClusterConfig:
    text = render_config(
        secret, "examples.people", [("s0", [("s0r0", "127.0.0.1:1", replica_http, ".")])], [("d0", "127.0.0.1:2")]
    )
    return parse_config(tomllib.loads(text), Path("/tmp/cluster.toml"))


def test_http_json_signs_with_a_key_and_sends_nothing_signed_without(server: VerifyingServer) -> None:
    url = f"http://{server.address}/_admin/migrate?dry_run=1"
    assert http_json("POST", url, {"model": "User", "to": 2}, key=KEY) == (200, {"ok": "verified"})
    assert http_json("GET", f"http://{server.address}/_admin/digest", key=KEY)[0] == 200
    status, body = http_json("POST", url, {"model": "User", "to": 2})
    assert status == 401 and body["error"]["details"]["reason"] == "missing"
    assert http_json("POST", url, {"model": "User", "to": 2}, key=OTHER_KEY)[0] == 401
    assert server.verifier.refused == {**dict.fromkeys(REASONS, 0), "missing": 1, "forged": 1}


def test_http_json_sends_the_headers_it_is_given(server: VerifyingServer) -> None:
    headers = sign(KEY, "GET", "/_admin/digest", b"", time.time())
    assert http_json("GET", f"http://{server.address}/_admin/digest", headers=headers) == (200, {"ok": "verified"})


def test_a_shard_client_signs_every_call_with_its_cluster_secret(server: VerifyingServer) -> None:
    member = config_with_secret(SECRET, server.address)
    stranger = config_with_secret(OTHER_SECRET, server.address)
    replica = member.replica("s0r0")

    async def calls() -> tuple[list[Any], Unauthorized]:
        client = ShardClient(member)
        try:
            answers = [
                await client.write(replica, {"type": "noop", "request_id": "r"}, 2.0),
                await client.read(replica, {"endpoint": "get_user", "args": {}}, 2.0),
                await client.status(replica),
                await client.integrity(replica),
            ]
            with pytest.raises(Unauthorized) as refused:
                await ShardClient(stranger).status(stranger.replica("s0r0"))
            return answers, refused.value
        finally:
            AsyncHTTPClient().close()

    answers, refused = asyncio.run(calls())
    assert answers == [{"ok": "verified"}] * 4
    assert [(method, path) for method, path, _ in server.seen] == [
        ("POST", "/_shard/write"),
        ("POST", "/_shard/read"),
        ("GET", "/_shard/status"),
        ("GET", "/_admin/digest"),
        ("GET", "/_shard/status"),
    ]
    assert refused.details["reason"] == "forged"
    assert server.verifier.refused == {**dict.fromkeys(REASONS, 0), "forged": 1}


# -- real processes: without the cluster's secret, a process cannot use a replica's internal routes ---------


@pytest.mark.cluster
def test_a_process_without_the_secret_cannot_write_through_a_replica(cluster_factory: Any) -> None:
    cluster: Cluster = cluster_factory(shards=1, replicas=1)
    url = f"{cluster.replica_url('s0r0')}/_shard/write"
    key = member_key(url)
    assert key is not None

    def command(uid: int) -> dict[str, Any]:
        doc = {"id": uid, "first_name": "A", "last_name": "B", "country": "X", "address": "", "city": ""}
        return {"type": "mutation", "endpoint": "insert_user", "args": doc, "request_id": f"u{uid}"}

    status, body = http_json("POST", url, command(1))
    assert (status, body["error"]["details"]["reason"]) == (401, "missing"), body
    status, body = http_json("POST", url, command(2), key=internal_key("another-cluster-secret-" + "c" * 24))
    assert (status, body["error"]["details"]["reason"]) == (401, "forged"), body
    # a member's request is accepted once; the same bytes sent again are a replay
    replayed = sign(key, "POST", "/_shard/write", ujson.dumps(command(3)).encode(), time.time())
    assert http_json("POST", url, command(3), headers=replayed)[0] == 200
    status, body = http_json("POST", url, command(3), headers=replayed)
    assert (status, body["error"]["details"]["reason"]) == (401, "replayed"), body

    def stored(uid: int) -> bool:
        request = {"endpoint": "get_user", "args": {"id": uid}, "consistency": "stale"}
        code, answer = http("POST", f"{cluster.replica_url('s0r0')}/_shard/read", request)
        assert code == 200, answer
        return bool(answer["items"])

    assert [stored(uid) for uid in (1, 2, 3)] == [False, False, True]
