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
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import ujson

from consensus.state_machine import Result
from models.errors import (
    BadRequest,
    DocraftError,
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
from node.shard_client import ShardClient
from node.shard_map import ShardMap
from query.app import App
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
    ) -> None:
        self.config = config
        self.attempt_timeout = attempt_timeout
        self.app = app
        self.client = client
        self.deadline = deadline
        self.shard_map = ShardMap(config)
        self.leaders: dict[str, ReplicaConfig | None] = {s.id: None for s in config.shards}
        # Replicas the integrity monitor flagged (divergent or wrong code): nothing is read from them.
        self.flagged: set[str] = set()
        self._by_raft = {r.raft: r for s in config.shards for r in s.replicas}
        self._stale_turns = {s.id: itertools.count() for s in config.shards}

    # -- public entry points ---------------------------------------------------

    async def call(
        self,
        name: str,
        method: str,
        query_args: Mapping[str, list[str]],
        body: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """Run endpoint ``name`` for an HTTP request and return the response body.

        Raises the ``DocraftError`` to answer with: ``NotFound``,
        ``MethodNotAllowed``, ``BadRequest``, ``NoLeader``, app errors...
        """
        endpoint = self.app.endpoint(name)
        if method not in endpoint.methods:
            raise MethodNotAllowed(
                f"{name} accepts {', '.join(endpoint.methods)}, not {method}", allowed=list(endpoint.methods)
            )
        args = endpoint.parse(query_args, body)
        explain = _flag(query_args, body, "explain")
        if endpoint.kind == "mutation":
            shard = self.shard_map.shard_for_key(endpoint.shard_key_of(args))
            command = {"type": "mutation", "endpoint": name, "args": args, "request_id": new_request_id()}
            outcome = await self.write(shard, command)
            return {"result": _unwrap(outcome), "served_by": [outcome.get("served_by")]}
        consistency = Consistency.parse(_single(query_args, body, "consistency"), endpoint.consistency)
        request = {"endpoint": name, "args": args, "explain": explain, "consistency": consistency.value}
        key = endpoint.shard_key_of(args)
        shards = self.config.shards if key is None else (self.shard_map.shard_for_key(key),)
        results = await asyncio.gather(*(self.read(shard, request, consistency) for shard in shards))
        includes = [n for n in str(_single(query_args, body, "include") or "").split(",") if n]
        model_name = results[0].get("model")
        response = self._response(results, explain)
        if includes:
            if "items" not in response:
                raise BadRequest(f"{name} does not return documents, so include= cannot apply", param="include")
            await self._include(self.app.model(str(model_name)), response["items"], includes, consistency)
        return response

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

    async def insert_batch(self, model_name: str, docs: list[Any]) -> list[Result]:
        """Validate and store many documents; one result per document, in order.

        Documents are grouped by owning shard and each group is one replicated
        command, so a batch costs one Raft round per shard.
        """
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
                "request_id": new_request_id(),
            }
            outcome = _unwrap(await self.write(self.config.shard(shard_id), command))
            for i, result in zip(positions, outcome, strict=True):
                results[i] = result

        await asyncio.gather(*(store(shard_id, positions) for shard_id, positions in groups.items()))
        return [r for r in results if r is not None]

    async def _write_everywhere(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commit ``command`` (a fresh request id per shard) on every shard; each shard's result by id."""

        async def one(shard: ShardConfig) -> Any:
            return _unwrap(await self.write(shard, {**command, "request_id": new_request_id()}))

        results = await asyncio.gather(*(one(shard) for shard in self.config.shards))
        return {shard.id: result for shard, result in zip(self.config.shards, results, strict=True)}

    async def set_fingerprint(self, fingerprint: str) -> dict[str, Any]:
        """Record ``fingerprint`` as the cluster's app code on every shard (a deliberate upgrade)."""
        return await self._write_everywhere({"type": "set_fingerprint", "fingerprint": fingerprint})

    async def migrate(self, model_name: str, target: int, dry_run: bool) -> dict[str, Any]:
        """Migrate ``model_name`` to version ``target`` on every shard, or only plan it.

        Every shard first checks that each document would validate after the
        change; if any would not, nothing starts and ``MigrationRefused`` lists
        them. Then each shard migrates in one replicated command, atomically.
        """
        model = self.app.model(model_name)
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

        Raises ``NoLeader`` (503) if no attempt could be proposed before the
        deadline, ``OutcomeUnknown`` (504) if one may have been.
        """
        maybe_applied = False

        async def attempt(replica: ReplicaConfig, timeout: float) -> Result:
            nonlocal maybe_applied
            try:
                return await self.client.write(replica, command, timeout)
            except (OutcomeUnknown, ShardUnavailable):
                maybe_applied = True
                raise

        try:
            # Accepting new code must reach leaders flagged for running it.
            return await self._with_leader(shard, attempt, command.get("type") == "set_fingerprint")
        except NoLeader as exc:
            if maybe_applied:
                raise OutcomeUnknown(
                    f"shard {shard.id}: the write may or may not have been applied; "
                    f"retrying with request id {command['request_id']} is safe",
                    shard=shard.id,
                    request_id=command["request_id"],
                ) from exc
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

        Raises ``ReplicaFlagged`` when the leader is flagged, unless ``to_flagged``.
        """
        deadline = time.monotonic() + self.deadline
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.leaders[shard.id] = None
                raise NoLeader(
                    f"shard {shard.id} has no reachable leader; retry shortly", shard=shard.id, retry_after=1
                )
            leader = self.leaders[shard.id] or await self._discover_leader(shard, remaining)
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
                return await attempt(leader, min(remaining, self.attempt_timeout))
            except NotLeader as exc:
                hint = self._by_raft.get(str(exc.details.get("leader_raft")))
                self.leaders[shard.id] = hint if hint is not None and hint.shard == shard.id else None
                if self.leaders[shard.id] is None:
                    await asyncio.sleep(min(RETRY_PAUSE, remaining))
            except (NoLeader, OutcomeUnknown, ShardUnavailable):
                self.leaders[shard.id] = None
                await asyncio.sleep(min(RETRY_PAUSE, remaining))

    async def _discover_leader(self, shard: ShardConfig, timeout: float) -> ReplicaConfig | None:
        """Ask every replica of ``shard``; the leader with the highest term wins."""

        async def ask(replica: ReplicaConfig) -> dict[str, Any] | None:
            try:
                return await self.client.status(replica, min(timeout, 1.0))
            except DocraftError:
                return None

        answers = [a for a in await asyncio.gather(*(ask(r) for r in shard.replicas)) if a]
        leaders = [a for a in answers if a.get("role") == "leader"]
        found: ReplicaConfig | None
        if leaders:
            best = max(leaders, key=lambda a: a["term"])
            found = next(r for r in shard.replicas if r.id == best["id"])
        else:
            hints = [self._by_raft.get(str(a.get("leader_raft"))) for a in answers]
            found = next((h for h in hints if h is not None and h.shard == shard.id), None)
        self.leaders[shard.id] = found
        return found

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


def new_request_id() -> str:
    return uuid.uuid4().hex


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
