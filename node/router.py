"""Routing endpoint calls to replica groups; the dispatcher and every replica use it.

Key-addressed calls (a mutation, or a query given its ``shard_key``) go to the
leader of the one shard owning the key; other queries go to every shard and
their answers are merged. Leaders are learned from replicas' status and from
``not_leader`` hints, and every call is retried within a deadline while
leadership moves. A write keeps its request id across retries, so the state
machine applies it once even when an earlier attempt did land.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import ujson

from consensus.state_machine import Result
from models.errors import (
    BadRequest,
    DocraftError,
    FingerprintRefused,
    MethodNotAllowed,
    MigrationRefused,
    NoLeader,
    NotLeader,
    OutcomeUnknown,
    ReplicaFaulted,
    ReplicaFlagged,
    ShardUnavailable,
    error_from_json,
)
from models.model import Model
from node.config import ClusterConfig, ReplicaConfig, ShardConfig
from node.consistency import Consistency
from node.leaders import LeaderTracker
from node.shard_client import ShardClient
from node.shard_map import ShardMap
from query.app import App
from query.cursors import cursor_key, open_cursor, seal_cursor
from query.endpoints import CURSOR_PARAM, Endpoint
from query.merge import merge_pages, merge_values
from query.ordering import value_key

T = TypeVar("T")

RETRY_PAUSE = 0.05


class Router:
    """Sends endpoint calls to the right replicas; one per process, used on its event loop."""

    def __init__(
        self,
        config: ClusterConfig,
        app: App,
        client: ShardClient,
        deadline: float = 10.0,
        attempt_timeout: float = 2.0,
        patience: float = 0.15,
    ) -> None:
        self.config = config
        self.attempt_timeout = attempt_timeout
        # How long an attempt may take before the router asks whether leadership moved.
        self.patience = patience
        self.app = app
        self.client = client
        self.deadline = deadline
        self.shard_map = ShardMap(config)
        self.limits = config.limits
        self.cursor_key = cursor_key(config.secret)
        self.leaders = LeaderTracker(config, client)
        # Replicas the integrity monitor flagged (divergent or wrong code): nothing is read from them.
        self.flagged: set[str] = set()
        self._stale_turns = {s.id: itertools.count() for s in config.shards}

    # -- public entry points ---------------------------------------------------

    def is_mutation(self, name: str) -> bool:
        """Whether ``name`` is a mutation endpoint of the app (``False`` for unknown names)."""
        endpoint = self.app.endpoints.get(name)
        return endpoint is not None and endpoint.kind == "mutation"

    async def call(
        self,
        name: str,
        method: str,
        query_args: Mapping[str, list[str]],
        body: Mapping[str, Any] | None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Run endpoint ``name`` for an HTTP request and return the response body.

        A mutation is committed under the request id of ``idempotency_key``
        (see ``request_id_for``): retried with the same key, it is applied at
        most once; it is called by GET only where ``[http] mutations_by_get``
        allows it. A page's ``next`` is sealed, and a ``cursor`` argument
        opened (``query.cursors``); ``limit`` and ``include`` are held to
        ``[limits]``. Raises the ``DocraftError`` to answer with: ``NotFound``,
        ``MethodNotAllowed``, ``BadRequest``, ``NoLeader``, ``OutcomeUnknown``, app errors...
        """
        endpoint = self.app.endpoint(name)
        self._check_method(endpoint, method)
        args = self.limits.page_arguments(endpoint, endpoint.parse(query_args, body), {*query_args, *(body or {})})
        if endpoint.takes_cursor and isinstance(args[CURSOR_PARAM], str):
            args[CURSOR_PARAM] = open_cursor(self.cursor_key, name, args[CURSOR_PARAM], CURSOR_PARAM)
        explain = _flag(query_args, body, "explain")
        if endpoint.kind == "mutation":
            shard = self.shard_map.shard_for_key(endpoint.shard_key_of(args))
            command = {
                "type": "mutation",
                "endpoint": name,
                "args": args,
                "request_id": request_id_for(idempotency_key),
            }
            outcome = await self.write(shard, command)
            return {"result": _unwrap(outcome), "served_by": [outcome.get("served_by")]}
        consistency = Consistency.parse(_single(query_args, body, "consistency"), endpoint.consistency)
        includes = self.limits.includes(_single(query_args, body, "include"))
        request = {"endpoint": name, "args": args, "explain": explain, "consistency": consistency.value}
        key = endpoint.shard_key_of(args)
        shards = self.config.shards if key is None else (self.shard_map.shard_for_key(key),)
        results = await asyncio.gather(*(self.read(shard, request, consistency) for shard in shards))
        model_name = results[0].get("model")
        response = self._response(results, explain)
        if response.get("next") is not None:
            response["next"] = seal_cursor(self.cursor_key, name, response["next"])
        if includes:
            if "items" not in response:
                raise BadRequest(f"{name} does not return documents, so include= cannot apply", param="include")
            await self._include(self.app.model(str(model_name)), response["items"], includes, consistency)
        return response

    def _check_method(self, endpoint: Endpoint, method: str) -> None:
        """Raise ``MethodNotAllowed`` unless ``endpoint`` may be called by ``method`` in this cluster."""
        by_get = endpoint.kind == "query" or self.config.http.mutations_by_get
        allowed = [m for m in endpoint.methods if m != "GET" or by_get]
        if method in allowed:
            return
        if method in endpoint.methods:
            how = f"call it with {' or '.join(allowed)}" if allowed else "it declares no other method"
            raise MethodNotAllowed(
                f"{endpoint.name} is a mutation and this cluster does not take mutations by GET ([http] "
                f"mutations_by_get is false): {how}",
                allowed=allowed,
            )
        raise MethodNotAllowed(
            f"{endpoint.name} accepts {', '.join(allowed) or 'no method in this cluster'}, not {method}",
            allowed=allowed,
        )

    async def _include(
        self, model: type[Model], items: list[dict[str, Any]], names: list[str], consistency: Consistency
    ) -> None:
        """Embed each item's related documents under each relation name, in the related model's key order.

        Children co-located with their parent are read from the parent's shard
        only; other relations are looked up on every shard.
        """
        for name in names:
            relation = model.relations.get(name)
            if relation is None:
                known = ", ".join(sorted(model.relations)) or "none"
                raise BadRequest(f"{model.name} has no relation {name!r} (it has: {known})", param="include")
            child, field = relation.model, relation.field
            co_located = child.co_located_with(model)
            groups: dict[str, list[Any]] = {}
            for key in (item[model.primary_key] for item in items):
                for shard in [self.shard_map.shard_for_key(key)] if co_located else self.config.shards:
                    groups.setdefault(shard.id, []).append(key)
            lookups = [
                self.read(
                    self.config.shard(shard_id),
                    {
                        "lookup": {"model": child.name, "field": field, "values": values},
                        "consistency": consistency.value,
                    },
                    consistency,
                )
                for shard_id, values in groups.items()
            ]
            children: dict[str, list[dict[str, Any]]] = {}
            for result in await asyncio.gather(*lookups):
                for doc in result["items"]:
                    refs = doc[field] if isinstance(doc[field], list) else [doc[field]]
                    for ref in refs:
                        children.setdefault(ujson.dumps(ref), []).append(doc)
            for item in items:
                related = children.get(ujson.dumps(item[model.primary_key]), [])
                item[name] = sorted(related, key=lambda d: value_key(d[child.primary_key]))

    async def insert_batch(self, model_name: str, docs: list[Any], idempotency_key: str | None = None) -> list[Result]:
        """Validate and store many documents; one result per document, in order.

        Documents are grouped by owning shard and each group is one replicated
        command, so a batch costs one Raft round per shard. With an
        ``idempotency_key``, each shard's command has a request id derived from
        it, so the same batch sent again is applied at most once.
        """
        key = idempotency_key or new_idempotency_key()
        model = self.app.model(model_name)
        results: list[Result | None] = [None] * len(docs)
        groups: dict[str, list[int]] = {}
        clean: list[dict[str, Any]] = []
        for i, doc in enumerate(docs):
            try:
                valid = model.validate(doc)
            except DocraftError as exc:
                results[i] = exc.to_json()
                clean.append({})
                continue
            clean.append(valid)
            groups.setdefault(self.shard_map.shard_for_key(valid[model.partition_key]).id, []).append(i)

        async def store(shard_id: str, positions: list[int]) -> None:
            command = {
                "type": "insert_batch",
                "model": model_name,
                "docs": [clean[i] for i in positions],
                "request_id": f"{request_id_for(key)}:{shard_id}",
            }
            outcome = _unwrap(await self.write(self.config.shard(shard_id), command))
            for i, result in zip(positions, outcome, strict=True):
                results[i] = result

        await asyncio.gather(*(store(shard_id, positions) for shard_id, positions in groups.items()))
        return [r for r in results if r is not None]

    async def _write_everywhere(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commit ``command`` (a fresh request id per shard) on every shard; each shard's result by id."""

        async def one(shard: ShardConfig) -> Any:
            return _unwrap(await self.write(shard, {**command, "request_id": request_id_for(None)}))

        results = await asyncio.gather(*(one(shard) for shard in self.config.shards))
        return {shard.id: result for shard, result in zip(self.config.shards, results, strict=True)}

    async def set_fingerprint(self, fingerprint: str) -> dict[str, Any]:
        """Record ``fingerprint`` as the cluster's app code on every shard (a deliberate upgrade).

        Only code that runs: each shard's replicas are asked for their own
        fingerprint first, and ``FingerprintRefused`` names every shard none
        of whose answering replicas runs ``fingerprint``; nothing changes then.
        """
        running = await asyncio.gather(*(self._running_code(shard) for shard in self.config.shards))
        refused = {
            shard.id: by_replica
            for shard, by_replica in zip(self.config.shards, running, strict=True)
            if fingerprint not in by_replica.values()
        }
        if refused:
            raise FingerprintRefused(
                f"no replica of shard {', '.join(refused)} runs app code {fingerprint[:12]}…: deploy the code, "
                "restart its replicas, then accept it; nothing changed",
                shards=refused,
            )
        return await self._write_everywhere({"type": "set_fingerprint", "fingerprint": fingerprint})

    async def _running_code(self, shard: ShardConfig) -> dict[str, str | None]:
        """Each replica of ``shard``'s own code fingerprint, ``None`` for one that did not answer."""

        async def local(replica: ReplicaConfig) -> str | None:
            try:
                report = await self.client.integrity(replica)
            except DocraftError:
                return None
            fingerprint = report.get("fingerprint", {}).get("local")
            return fingerprint if isinstance(fingerprint, str) else None

        fingerprints = await asyncio.gather(*(local(replica) for replica in shard.replicas))
        return {replica.id: fp for replica, fp in zip(shard.replicas, fingerprints, strict=True)}

    async def migrate(self, model_name: str, target: int, dry_run: bool) -> dict[str, Any]:
        """Migrate ``model_name`` to version ``target`` on every shard, or only plan it.

        ``BadRequest`` unless ``target`` is the version this process's code
        declares for the model (replicas check theirs too). Every shard first
        checks that each document would validate after the change; if any would
        not, nothing starts and ``MigrationRefused`` lists them. Then each shard
        migrates in one replicated command, atomically.
        """
        model = self.app.model(model_name)
        if target != model.version:
            raise BadRequest(
                f"the running code declares {model.name} version {model.version}, not {target}: "
                "deploy the code that declares it first",
                param="to",
            )
        request = {"migration_plan": {"model": model.name, "to": target}, "consistency": "linearizable"}

        plans = await asyncio.gather(*(self.read(s, request, Consistency.LINEARIZABLE) for s in self.config.shards))
        by_shard = {
            shard.id: {k: v for k, v in plan.items() if k != "served_by"}
            for shard, plan in zip(self.config.shards, plans, strict=True)
        }
        failing = sum(plan["failure_count"] for plan in by_shard.values())
        if failing:
            raise MigrationRefused(
                f"{failing} {model.name} documents would fail validation as version {target}; nothing changed",
                shards=by_shard,
            )
        if dry_run:
            return {"dry_run": True, "shards": by_shard}
        shards = await self._write_everywhere({"type": "migrate", "model": model.name, "to": target})
        return {"dry_run": False, "shards": shards}

    async def cluster_status(self) -> list[dict[str, Any]]:
        """Every shard with its slot range, leader and each replica's status."""

        async def replica_status(replica: ReplicaConfig) -> dict[str, Any]:
            entry: dict[str, Any] = {"id": replica.id, "raft": replica.raft, "http": replica.http}
            try:
                status = await self.client.status(replica)
            except DocraftError as exc:
                return {**entry, "role": "unreachable", "error": exc.message}
            return {**entry, **{k: v for k, v in status.items() if k not in ("id", "shard")}}

        shards = []
        for shard in self.config.shards:
            replicas = await asyncio.gather(*(replica_status(r) for r in shard.replicas))
            leaders = [r for r in replicas if r.get("role") == "leader"]
            leader = max(leaders, key=lambda r: r["term"])["id"] if leaders else None
            shards.append(
                {
                    "id": shard.id,
                    "slots": [shard.first_slot, shard.last_slot],
                    "leader": leader,
                    "replicas": replicas,
                }
            )
        return shards

    # -- shard calls with leader tracking and retries ---------------------------

    async def write(self, shard: ShardConfig, command: dict[str, Any]) -> Result:
        """Commit ``command`` on ``shard``'s leader, retrying with the same request id.

        Raises ``NoLeader`` or ``ReplicaFlagged`` (503) only when no attempt
        could have been applied, and ``OutcomeUnknown`` (504) naming the
        request id to retry with when one may have been.
        """
        maybe_applied = False

        async def attempt(replica: ReplicaConfig, timeout: float) -> Result:
            nonlocal maybe_applied
            try:
                return await self.client.write(replica, command, timeout)
            except (OutcomeUnknown, ShardUnavailable, asyncio.CancelledError):
                maybe_applied = True  # it reached a leader, or may have; abandoned attempts too
                raise

        try:
            # Accepting new code must reach leaders flagged for running it.
            return await self._with_leader(shard, attempt, command.get("type") == "set_fingerprint")
        except (NoLeader, ReplicaFlagged) as exc:
            if maybe_applied:
                raise _outcome_unknown(shard, command) from exc
            raise

    async def read(self, shard: ShardConfig, request: dict[str, Any], consistency: Consistency) -> Result:
        if consistency is Consistency.STALE:
            return await self._stale_read(shard, request)

        async def attempt(replica: ReplicaConfig, timeout: float) -> Result:
            return await self.client.read(replica, request, timeout)

        return await self._with_leader(shard, attempt)

    async def _stale_read(self, shard: ShardConfig, request: dict[str, Any]) -> Result:
        """Any replica will do: this process's own first, then the others in turn."""
        local = [r for r in shard.replicas if self.client.is_local(r)]
        turn = next(self._stale_turns[shard.id]) % len(shard.replicas)
        others = [r for r in shard.replicas[turn:] + shard.replicas[:turn] if r not in local]

        last_error: DocraftError = NoLeader(f"shard {shard.id}: no replica answered", shard=shard.id)
        for replica in local + others:
            if replica.id in self.flagged:
                continue
            try:
                return await self.client.read(replica, request, self.attempt_timeout)
            except (ShardUnavailable, ReplicaFaulted) as exc:
                last_error = exc
        raise last_error

    async def _with_leader(
        self, shard: ShardConfig, attempt: Callable[[ReplicaConfig, float], Awaitable[T]], to_flagged: bool = False
    ) -> T:
        """Run ``attempt`` on ``shard``'s leader, following leadership until the deadline.

        While an attempt is slow, the group is asked whether another replica
        leads in a newer term; if one does, the attempt is abandoned and the
        new leader tried (``_attempt_or_moved``). Raises ``NoLeader`` at the
        deadline, and ``ReplicaFlagged`` when the leader is flagged, unless ``to_flagged``.
        """
        deadline = time.monotonic() + self.deadline
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.leaders.forget(shard)
                raise NoLeader(
                    f"shard {shard.id} has no reachable leader; retry shortly", shard=shard.id, retry_after=1
                )
            leader = self.leaders.leaders[shard.id] or await self.leaders.discover(shard, remaining)
            if leader is None:
                await asyncio.sleep(min(RETRY_PAUSE, remaining))
                continue
            if leader.id in self.flagged and not to_flagged:
                raise ReplicaFlagged(
                    f"the leader of shard {shard.id}, {leader.id}, is flagged by the integrity monitor "
                    "(see /_admin/alerts); repair it with docraft repair",
                    shard=shard.id,
                    replica=leader.id,
                )
            try:
                return await self._attempt_or_moved(shard, leader, attempt, min(remaining, self.attempt_timeout))
            except _LeaderMoved:
                continue
            except NotLeader as exc:
                if self.leaders.follow_hint(shard, exc.details.get("leader_raft")) is None:
                    await asyncio.sleep(min(RETRY_PAUSE, remaining))
            except (NoLeader, OutcomeUnknown, ShardUnavailable, ReplicaFaulted):
                self.leaders.forget(shard)
                await asyncio.sleep(min(RETRY_PAUSE, remaining))

    async def _attempt_or_moved(
        self,
        shard: ShardConfig,
        leader: ReplicaConfig,
        attempt: Callable[[ReplicaConfig, float], Awaitable[T]],
        timeout: float,
    ) -> T:
        """``attempt`` on ``leader``; raises ``_LeaderMoved`` (the attempt cancelled) if another replica leads now.

        Costs one timer when the attempt answers within ``patience``, as nearly
        all do; only a slow attempt starts a watcher, which cancels this task
        when the group has a newer leader.
        """
        me = asyncio.current_task()
        assert me is not None, "routers run inside asyncio tasks"
        moved = False
        watcher: asyncio.Task[None] | None = None

        async def watch() -> None:
            nonlocal moved
            while await self.leaders.moved(shard, leader) is None:
                await asyncio.sleep(self.leaders.probe_interval)
            moved = True
            me.cancel()

        def start_watching() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(watch())

        timer = asyncio.get_running_loop().call_later(self.patience, start_watching)
        try:
            return await attempt(leader, timeout)
        except asyncio.CancelledError:
            if not moved:
                raise
            me.uncancel()
            raise _LeaderMoved() from None
        finally:
            timer.cancel()
            if watcher is not None:
                watcher.cancel()

    # -- responses ---------------------------------------------------------------

    def _response(self, results: list[Result], explain: bool) -> dict[str, Any]:
        served_by = [r.pop("served_by", None) for r in results]
        if all(r.get("kind") == "page" for r in results):
            model = self.app.model(results[0]["model"])
            page = results[0] if len(results) == 1 else merge_pages(results, model.primary_key)
            body: dict[str, Any] = {"items": page["items"], "next": page["next"]}
            if explain:
                body["plan"] = page["plan"]
        else:
            values = [r.get("value") for r in results]
            body = {"result": values[0] if len(values) == 1 else merge_values(values)["value"]}
        body["served_by"] = served_by
        return body


class _LeaderMoved(Exception):
    """Another replica leads now; the attempt on the old leader was abandoned."""


_KEY = re.compile(r"[A-Za-z0-9._-]{1,128}")


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def request_id_for(idempotency_key: str | None) -> str:
    """The request id a mutation is committed under: derived from the client's key, or from a fresh one.

    Raises ``BadRequest`` for a key that is not 1 to 128 of ``A-Z a-z 0-9 . _ -``.
    """
    key = new_idempotency_key() if idempotency_key is None else idempotency_key
    if not _KEY.fullmatch(key):
        raise BadRequest("Idempotency-Key must be 1 to 128 characters from A-Z a-z 0-9 . _ -", param="Idempotency-Key")
    return f"key:{key}"


def key_of(request_id: str) -> str:
    """The idempotency key a request id was derived from (the inverse of ``request_id_for``)."""
    return request_id.removeprefix("key:").split(":", 1)[0] if request_id.startswith("key:") else request_id


def _outcome_unknown(shard: ShardConfig, command: dict[str, Any]) -> OutcomeUnknown:
    key = key_of(command["request_id"])
    return OutcomeUnknown(
        f"shard {shard.id}: the write may or may not have been applied; retrying it with the header "
        f"Idempotency-Key: {key} applies it at most once",
        shard=shard.id,
        request_id=command["request_id"],
        idempotency_key=key,
    )


def _unwrap(result: Result) -> Any:
    if "error" in result:
        raise error_from_json(result)
    return result.get("ok")


def _single(query_args: Mapping[str, list[str]], body: Mapping[str, Any] | None, name: str) -> Any:
    if name in query_args:
        return query_args[name][-1]
    return (body or {}).get(name)


def _flag(query_args: Mapping[str, list[str]], body: Mapping[str, Any] | None, name: str) -> bool:
    value = _single(query_args, body, name)
    if value in (None, False, "", "0", "false"):
        return False
    if value in (True, "1", "true", "yes"):
        return True
    raise BadRequest(f"{name} must be 1 or 0, got {value!r}", param=name)
