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
"""

from __future__ import annotations

import time
from typing import Any

import ujson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from consensus.state_machine import Result
from models.errors import DocraftError, ShardUnavailable, error_from_json
from node.config import ClusterConfig, ReplicaConfig
from node.shard_service import ShardService
from node.signing import internal_key, sign

AsyncHTTPClient.configure("tornado.curl_httpclient.CurlAsyncHTTPClient", max_clients=256)

JSON_HEADERS = {"Content-Type": "application/json"}
# How long the replica may wait for Raft (seconds): a little less than the router waits for its answer.
TIMEOUT_HEADER = "X-Docraft-Timeout"


class ShardClient:
    """Calls ``/_shard/*`` on replicas; raises the ``DocraftError`` a replica answered with.

    Connection failures and timeouts raise ``ShardUnavailable``. A result is
    the caller's to change on either path: decoded from the response, or, in
    process, built by the shard service from copies of stored documents (see
    ``query.collection``), so a router may embed related documents into it.
    """

    def __init__(self, config: ClusterConfig, local: ShardService | None = None, timeout: float = 5.0) -> None:
        """A client of ``config``'s replicas, signing with its secret; ``local`` is this process's own replica."""
        self.key = internal_key(config.secret)
        self.local = local
        self.timeout = timeout
        self.ca_certs = str(config.ca) if config.ca is not None else None
        # With a CA of its own it needs curl handles of its own: curl cannot unset a CA file once set, so
        # sharing them would make other requests (alert webhooks, say) trust the cluster's CA only.
        self.http = AsyncHTTPClient(force_instance=self.ca_certs is not None)

    def is_local(self, replica: ReplicaConfig) -> bool:
        return self.local is not None and self.local.config.id == replica.id

    async def write(self, replica: ReplicaConfig, command: dict[str, Any], timeout: float) -> Result:
        """Commit ``command`` on ``replica``; it waits for Raft at most ``timeout`` seconds."""
        if self.local is not None and self.is_local(replica):
            return await self.local.write(command, timeout)
        return await self._call(replica, "POST", "/_shard/write", command, timeout)

    async def read(self, replica: ReplicaConfig, request: dict[str, Any], timeout: float) -> Result:
        """Run a read on ``replica``; it waits for Raft at most ``timeout`` seconds."""
        if self.local is not None and self.is_local(replica):
            return await self.local.read(request, timeout)
        return await self._call(replica, "POST", "/_shard/read", request, timeout)

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

    async def _call(
        self, replica: ReplicaConfig, method: str, path: str, payload: Any, timeout: float
    ) -> dict[str, Any]:
        body = None if payload is None else ujson.dumps(payload).encode()
        headers = {
            **JSON_HEADERS,
            TIMEOUT_HEADER: f"{max(timeout - 0.05, 0.05):.3f}",
            **sign(self.key, method, path, body or b"", time.time()),
        }
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
            raise ShardUnavailable(f"replica {replica.id} unreachable: {exc}", replica=replica.id) from None
        if response.code == 599 or not response.body:
            raise ShardUnavailable(f"replica {replica.id} unreachable: {response.error}", replica=replica.id)
        try:
            decoded: dict[str, Any] = ujson.loads(response.body)
        except ValueError:
            raise ShardUnavailable(f"replica {replica.id} sent a body that is not JSON", replica=replica.id) from None
        if response.code != 200:
            error: DocraftError = error_from_json(decoded)
            if type(error) is DocraftError and response.code >= 500:
                # Not one of docraft's answers (a replica stopping mid-request, a bug): what happened is unknown.
                raise ShardUnavailable(f"replica {replica.id} failed: {error.message}", replica=replica.id)
            raise error
        return decoded
