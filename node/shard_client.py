"""How a router talks to replicas: HTTP with kept-alive connections, or in-process.

Replica-to-replica and dispatcher-to-replica calls use Tornado's
``CurlAsyncHTTPClient``: it keeps connections open, where the default
``simple_httpclient`` opens one per request (FACTS.md: 2,100 req/s behind it
falls to 550). A router embedded in a replica server calls its own replica's
``ShardService`` directly instead of over the loopback. Every request it
sends is signed with the cluster's internal key (``node.signing``), so the
replica accepts it as a cluster member's. With ``[tls]`` it speaks HTTPS and
verifies each replica's certificate, host name included, against the
cluster's CA (``node.tls``).

Writes and reads to one replica are coalesced (``node.coalescer``; reads
per consistency): while one request is in flight, further calls wait and
then travel together in one request. The replica runs them concurrently, so
writes are proposed in one loop turn, hence one Raft entry (and linearizable
reads share one barrier); each caller still gets its own result or error, as
if it had called alone.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import ujson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from consensus.state_machine import Result
from models.errors import DocraftError, ShardUnavailable, error_from_json
from node.coalescer import MAX_BYTES, Coalescer
from node.config import ClusterConfig, ReplicaConfig
from node.limits import INTERNAL_PATHS
from node.shard_service import ShardService
from node.signing import internal_key, sign

AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=256)

JSON_HEADERS = {"Content-Type": "application/json"}
# How long the replica may wait for Raft (seconds): a little less than the router waits for its answer.
TIMEOUT_HEADER = "X-Docraft-Timeout"
# Told of every HTTP call to a replica: route called, replica, HTTP status (599: no answer), seconds taken.
CallObserver = Callable[[str, ReplicaConfig, int, float], None]


class ShardClient:
    """Calls ``/_shard/*`` on replicas; raises the ``DocraftError`` a replica answered with.

    Connection failures and timeouts raise ``ShardUnavailable``. A result is
    the caller's to change on either path: decoded from the response, or, in
    process, built by the shard service from copies of stored documents (see
    ``query.collection``), so a router may embed related documents into it.
    """

    def __init__(
        self,
        config: ClusterConfig,
        local: ShardService | None = None,
        timeout: float = 5.0,
        observe: CallObserver | None = None,
    ) -> None:
        """A client of ``config``'s replicas, signing with its secret; ``local`` is this process's own replica.

        ``observe`` is told of every HTTP call it makes (not of calls to ``local``, made in process, nor of
        calls abandoned before an answer), for ``/metrics``.
        """
        self.key = internal_key(config.secret)
        self.local = local
        self.observe = observe
        self.timeout = timeout
        self.ca_certs = str(config.ca) if config.ca is not None else None
        # With a CA of its own it needs curl handles of its own: curl cannot unset a CA file once set, so
        # sharing them would make other requests (alert webhooks, say) trust the cluster's CA only.
        self.http = AsyncHTTPClient(force_instance=self.ca_certs is not None)
        # Below the internal body limit replicas hold requests to, with room for the wrapping.
        self.batch_bytes = min(MAX_BYTES, config.limits.body_limit_of(INTERNAL_PATHS) // 2)
        self._coalescers: dict[tuple[str, str, str, str], Coalescer[Result]] = {}

    def is_local(self, replica: ReplicaConfig) -> bool:
        return self.local is not None and self.local.config.id == replica.id

    async def write(self, replica: ReplicaConfig, command: dict[str, Any], timeout: float) -> Result:
        """Commit ``command`` on ``replica``; it waits for Raft at most ``timeout`` seconds."""
        if self.local is not None and self.is_local(replica):
            return await self.local.write(command, timeout)
        coalescer = self._coalescer(replica, "/_shard/write", "commands", "")
        return await coalescer.call(ujson.dumps(command).encode(), timeout)

    async def read(self, replica: ReplicaConfig, request: dict[str, Any], timeout: float) -> Result:
        """Run a read on ``replica``; it waits for Raft at most ``timeout`` seconds."""
        if self.local is not None and self.is_local(replica):
            return await self.local.read(request, timeout)
        # One lane per consistency, so a read never waits on a slower kind's barrier.
        coalescer = self._coalescer(replica, "/_shard/read", "requests", str(request.get("consistency")))
        return await coalescer.call(ujson.dumps(request).encode(), timeout)

    async def status(self, replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
        if self.local is not None and self.is_local(replica):
            return self.local.status()
        return await self._call(replica, "GET", "/_shard/status", None, timeout)

    async def slots(self, replica: ReplicaConfig, timeout: float = 1.0, counts: bool = False) -> dict[str, Any]:
        """``replica``'s view of its group's slot table (``GET /_shard/slots``; ``ShardService.slots``)."""
        if self.local is not None and self.is_local(replica):
            return self.local.slots(counts)
        return await self._call(replica, "GET", "/_shard/slots" + ("?counts=1" if counts else ""), None, timeout)

    async def integrity(self, replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
        if self.local is not None and self.is_local(replica):
            return self.local.integrity()
        return await self._call(replica, "GET", "/_admin/digest", None, timeout)

    def _coalescer(self, replica: ReplicaConfig, path: str, many: str, lane: str) -> Coalescer[Result]:
        """The coalescer of calls to ``path`` on ``replica`` in ``lane``; a request of several carries them
        as ``many``."""
        key = (path, lane, replica.id, replica.http_url)
        coalescer = self._coalescers.get(key)
        if coalescer is None:
            coalescer = self._coalescers[key] = Coalescer(
                functools.partial(self._send, replica, path, many),
                functools.partial(_timed_out, replica),
                max_bytes=self.batch_bytes,
            )
        return coalescer

    async def _send(
        self, replica: ReplicaConfig, path: str, many: str, payloads: list[bytes], timeouts: list[float]
    ) -> list[Result | DocraftError]:
        """``Coalescer``'s request: one call as it is, several as ``{many: [...], "timeouts": [...]}``, answered
        ``{"results": [{"status", "body"}, ...]}`` (``node.handlers.ShardCallHandler``)."""
        if len(payloads) == 1:
            return [await self._request(replica, "POST", path, payloads[0], timeouts[0])]
        waits = ",".join(f"{_raft_wait(t):.3f}" for t in timeouts).encode()
        body = b'{"%s":[%s],"timeouts":[%s]}' % (many.encode(), b",".join(payloads), waits)
        results = (await self._request(replica, "POST", path, body, max(timeouts))).get("results")
        if not isinstance(results, list) or len(results) != len(payloads):
            raise ShardUnavailable(f"replica {replica.id} answered a coalesced request wrongly", replica=replica.id)
        return [_outcome(replica, result) for result in results]

    async def _call(
        self, replica: ReplicaConfig, method: str, path: str, payload: Any, timeout: float
    ) -> dict[str, Any]:
        body = None if payload is None else ujson.dumps(payload).encode()
        return await self._request(replica, method, path, body, timeout)

    async def _request(
        self, replica: ReplicaConfig, method: str, path: str, body: bytes | None, timeout: float
    ) -> dict[str, Any]:
        headers = {
            **JSON_HEADERS,
            TIMEOUT_HEADER: f"{_raft_wait(timeout):.3f}",
            **sign(self.key, method, path, body or b"", time.time()),
        }
        started = time.perf_counter()
        try:
            response = await self.http.fetch(
                replica.http_url + path,
                method=method,
                body=body,
                headers=headers,
                request_timeout=max(timeout, 0.05),
                connect_timeout=min(max(timeout, 0.05), 1.0),
                ca_certs=self.ca_certs,
                raise_error=False,
            )
        except (OSError, HTTPClientError) as exc:
            self._observed(path, replica, 599, started)
            raise ShardUnavailable(f"replica {replica.id} unreachable: {exc}", replica=replica.id) from None
        self._observed(path, replica, response.code, started)
        if response.code == 599 or not response.body:
            raise ShardUnavailable(f"replica {replica.id} unreachable: {response.error}", replica=replica.id)
        try:
            decoded = ujson.loads(response.body)
        except ValueError:
            raise ShardUnavailable(f"replica {replica.id} sent a body that is not JSON", replica=replica.id) from None
        return _answer(replica, response.code, decoded)

    def _observed(self, path: str, replica: ReplicaConfig, status: int, started: float) -> None:
        """Tell ``observe`` of a call to ``path`` (its route: the query string left out) begun at ``started``."""
        if self.observe is not None:
            self.observe(path.partition("?")[0], replica, status, time.perf_counter() - started)


def _answer(replica: ReplicaConfig, status: int, decoded: Any) -> dict[str, Any]:
    """A replica's answer ``decoded`` with HTTP ``status``: the body if 200, else raises the error it holds."""
    if not isinstance(decoded, dict):
        raise ShardUnavailable(f"replica {replica.id} sent a body that is not a JSON object", replica=replica.id)
    if status != 200:
        error: DocraftError = error_from_json(decoded)
        if type(error) is DocraftError and status >= 500:
            # Not one of docraft's answers (a replica stopping mid-request, a bug): what happened is unknown.
            raise ShardUnavailable(f"replica {replica.id} failed: {error.message}", replica=replica.id)
        raise error
    return decoded


def _outcome(replica: ReplicaConfig, result: Any) -> Result | DocraftError:
    """One call's outcome in a coalesced answer: its result, or the error it alone would have raised."""
    try:
        if not isinstance(result, dict) or not isinstance(result.get("status"), int):
            raise ShardUnavailable(f"replica {replica.id} answered a coalesced call wrongly", replica=replica.id)
        return _answer(replica, result["status"], result.get("body"))
    except DocraftError as error:
        return error


def _raft_wait(timeout: float) -> float:
    """How long a replica may wait for Raft when the router waits ``timeout``: a little less, to answer in time."""
    return max(timeout - 0.05, 0.05)


def _timed_out(replica: ReplicaConfig, timeout: float) -> ShardUnavailable:
    return ShardUnavailable(f"replica {replica.id} unreachable: no answer within {timeout:.2f}s", replica=replica.id)
