"""Idempotency keys, outcome reporting and following a new leader, through the real router.

Handler tests use fake shards (real state machines, no network); the last
tests run on real processes.
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import ujson

from models.errors import OutcomeUnknown
from node.config import ReplicaConfig
from tests.harness import Cluster
from tests.test_handlers import FakeClusterCase

USER = {"id": 7, "first_name": "A", "last_name": "B", "country": "France"}
JSON = {"Content-Type": "application/json"}


class IdempotencyTest(FakeClusterCase):
    def post(self, path: str, body: Any, key: str | None = None) -> tuple[int, Any, Any]:
        headers = {"Content-Type": "application/json"} if key is None else {**JSON, "Idempotency-Key": key}
        response = self.fetch(path, method="POST", body=ujson.dumps(body), headers=headers)
        return response.code, ujson.loads(response.body), response.headers.get("Idempotency-Key")

    def test_the_same_key_and_request_is_applied_once_and_answered_alike(self) -> None:
        first = self.post("/insert_user", USER, key="k-1")
        again = self.post("/insert_user", USER, key="k-1")
        assert first[0] == again[0] == 200, (first, again)
        assert first[1]["result"] == again[1]["result"]  # not 409 duplicate_key: the retry was not applied
        assert first[2] == again[2] == "k-1"
        assert self.post("/insert_user", USER, key="k-2")[0] == 409  # a new key is a new write

    def test_the_same_key_for_another_request_is_refused(self) -> None:
        assert self.post("/insert_user", USER, key="k-1")[0] == 200
        code, body, _ = self.post("/insert_user", {**USER, "id": 8}, key="k-1")
        assert code == 422 and body["error"]["code"] == "idempotency_key_reused", body
        assert self.call("GET", "/get_user?id=8")[1]["items"] == []

    def test_a_mutation_without_a_key_gets_one_to_retry_with(self) -> None:
        code, _, key = self.post("/insert_user", USER)
        assert code == 200 and key
        code, body, _ = self.post("/insert_user", USER, key=key)
        assert code == 200, body  # retried with the key it was given: applied once

    def test_a_malformed_key_is_a_bad_request(self) -> None:
        for key in ("x" * 129, "has space", "semi;colon", "colon:inside", "über"):
            response = self.fetch(
                "/insert_user", method="POST", body=ujson.dumps(USER), headers={**JSON, "Idempotency-Key": key}
            )
            assert response.code == 400, (key, response.body)
            assert ujson.loads(response.body)["error"]["code"] == "bad_request"
        assert self.call("GET", "/get_user?id=7")[1]["items"] == []

    def test_a_bulk_insert_sent_twice_with_its_key_is_applied_once(self) -> None:
        docs = [{**USER, "id": uid} for uid in range(20, 40)]
        first = self.post("/_bulk/User", {"docs": docs}, key="bulk-1")
        again = self.post("/_bulk/User", {"docs": docs}, key="bulk-1")
        assert first[0] == again[0] == 200
        assert first[1] == again[1] and all("ok" in r for r in again[1]["results"])

    def test_a_flagged_leader_after_an_attempt_that_may_have_applied_is_outcome_unknown(self) -> None:
        # 46377ff answered 503 replica_flagged here, which the README defines as "nothing was proposed".
        shards, flagged = self.shards, self.parts.router.groups.flagged
        real_write = shards.write

        async def write_then_flag(replica: ReplicaConfig, command: dict[str, Any], timeout: float) -> Any:
            await real_write(replica, command, timeout)  # it was applied...
            flagged.add(replica.id)  # ...and then its leader was flagged before the answer came
            raise OutcomeUnknown("fake: the answer was lost")

        shards.write = write_then_flag  # type: ignore[method-assign]
        code, body, key = self.post("/insert_user", USER, key="k-9")
        assert code == 504 and body["error"]["code"] == "outcome_unknown", body
        assert body["error"]["details"]["idempotency_key"] == key == "k-9"
        assert "Idempotency-Key: k-9" in body["error"]["message"]


class FollowTheNewLeaderTest(FakeClusterCase):
    def test_a_silent_leader_is_abandoned_as_soon_as_another_replica_leads(self) -> None:
        # 46377ff waited out its 2 s attempt timeout on a paused leader before asking who leads.
        shards = self.shards
        real_write, real_status = shards.write, shards.status

        served: list[str] = []

        async def paused_leader(replica: ReplicaConfig, command: dict[str, Any], timeout: float) -> Any:
            served.append(replica.id)
            if replica.id.endswith("r0"):
                await asyncio.sleep(timeout)  # SIGSTOPped: never answers
                raise OutcomeUnknown("fake: timed out")
            return await real_write(replica, command, timeout)

        async def elected(replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
            status = await real_status(replica, timeout)
            if replica.id.endswith("r0"):
                await asyncio.sleep(timeout)
            if replica.id.endswith("r1"):
                return {**status, "role": "leader", "term": 2}
            return status

        shards.write = paused_leader  # type: ignore[method-assign]
        shards.status = elected  # type: ignore[method-assign]
        for shard in self.config.shards:
            shards.leader[shard.id] = shard.replicas[1]  # the fake's own leadership check
            self.parts.router.view.leaders.leaders[shard.id] = shard.replicas[0]  # the router still believes r0
        started = time.monotonic()
        code, body = self.call("POST", "/insert_user", USER)
        elapsed = time.monotonic() - started
        assert code == 200, body
        assert served[-1].endswith("r1") and served[0].endswith("r0"), served
        assert elapsed < 1.0, f"took {elapsed:.2f}s to leave the silent leader"


@pytest.mark.cluster
def test_a_keyed_write_retried_after_its_leader_died_is_applied_once(cluster_factory) -> None:
    cluster: Cluster = cluster_factory(shards=1, replicas=3)
    url = f"{cluster.url}/insert_user"

    def post(body: dict[str, Any], key: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            url, data=ujson.dumps(body).encode(), method="POST", headers={**JSON, "Idempotency-Key": key}
        )
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, ujson.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, ujson.loads(exc.read())

    first = post(USER, "across-failover")
    assert first[0] == 200, first
    leader = cluster.leader_of("s0")
    cluster.kill(leader, signal.SIGKILL)
    again = post(USER, "across-failover")
    assert again[0] == 200 and again[1]["result"] == first[1]["result"], again
    assert again[1]["served_by"][0]["replica"] != leader
    assert post({**USER, "id": 99}, "across-failover")[0] == 422
