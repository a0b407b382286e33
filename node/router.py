"""Routing endpoint calls to replica groups; the dispatcher and every replica use it.

Key-addressed calls (a mutation, or a query given its ``shard_key``) go to the
leader of the group owning the key's slot; other queries go to every group
that owns slots, and their answers are merged. Which group owns a slot, which
replicas a group has and which leads it is the ``ClusterView``'s
(``node.cluster_view``). Every call is retried within one deadline while
leadership or slots move: on ``wrong_shard`` the view is patched from the
answer and the call sent to the owner it names; on ``slot_frozen``,
``slot_importing`` or ``slots_unknown`` it is sent again after the answer's
``retry_after``. A write keeps its request id across retries, whichever group
they reach, so it is applied once even when an earlier attempt did land (a
move carries remembered request ids to the new owner). Calling one group's
leader and following leadership is ``node.group_calls``'s, request ids are
``node.request_ids``', ``include=`` is ``node.includes``'s, the admin fan-out
``node.admin_ops``'s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from consensus.slots import SLOT_COUNT, slot_of
from consensus.state_machine import Result
from models.errors import (
    BadRequest,
    DocraftError,
    MethodNotAllowed,
    SlotFrozen,
    SlotImporting,
    SlotsUnknown,
    WrongShard,
    error_from_json,
)
from node.cluster_view import ClusterView
from node.config import ClusterConfig, ShardConfig
from node.consistency import Consistency
from node.group_calls import Attempts, GroupCalls, unwrap
from node.includes import embed
from node.request_ids import new_idempotency_key, request_id_for
from node.shard_client import ShardClient
from query.app import App
from query.cursors import cursor_key, open_cursor, seal_cursor
from query.endpoints import CURSOR_PARAM, Endpoint
from query.merge import merge_pages, merge_values

T = TypeVar("T")

RETRY_PAUSE = 0.05


class Router:
    """Sends endpoint calls to the right replicas; one per process, used on its event loop.

    ``view`` (a ``ClusterView``) says where slots live; a server starts its
    polling task (``view.run``). Deadlines passed between methods are
    ``time.monotonic()`` values; a call without one gets ``deadline`` seconds.
    """

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
        self.app = app
        self.client = client
        self.deadline = deadline
        self.view = ClusterView(config, client)
        self.groups = GroupCalls(self.view, client, deadline, attempt_timeout, patience)
        self.limits = config.limits
        self.cursor_key = cursor_key(config.secret)

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
        ``MethodNotAllowed``, ``BadRequest``, ``NoLeader``, ``OutcomeUnknown``,
        ``SlotFrozen`` (a move outlasted the deadline), app errors...
        """
        deadline = time.monotonic() + self.deadline
        endpoint = self.app.endpoint(name)
        self._check_method(endpoint, method)
        args = self.limits.page_arguments(endpoint, endpoint.parse(query_args, body), {*query_args, *(body or {})})
        if endpoint.takes_cursor and isinstance(args[CURSOR_PARAM], str):
            args[CURSOR_PARAM] = open_cursor(self.cursor_key, name, args[CURSOR_PARAM], CURSOR_PARAM)
        explain = _flag(query_args, body, "explain")
        if endpoint.kind == "mutation":
            command = {
                "type": "mutation",
                "endpoint": name,
                "args": args,
                "request_id": request_id_for(idempotency_key),
            }
            outcome = await self.write_slot(slot_of(endpoint.shard_key_of(args)), command, deadline)
            return {"result": unwrap(outcome), "served_by": [outcome.get("served_by")]}
        consistency = Consistency.parse(_single(query_args, body, "consistency"), endpoint.consistency)
        includes = self.limits.includes(_single(query_args, body, "include"))
        request = {"endpoint": name, "args": args, "explain": explain, "consistency": consistency.value}
        key = endpoint.shard_key_of(args)
        if key is None:
            results = await self.scatter(request, consistency, deadline)
        else:
            results = [await self.read_slot(slot_of(key), request, consistency, deadline)]
        model_name = results[0].get("model")
        response = self._response(results, explain)
        if response.get("next") is not None:
            response["next"] = seal_cursor(self.cursor_key, name, response["next"])
        if includes:
            if "items" not in response:
                raise BadRequest(f"{name} does not return documents, so include= cannot apply", param="include")
            await embed(self, self.app.model(str(model_name)), response["items"], includes, consistency, deadline)
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

    async def insert_batch(self, model_name: str, docs: list[Any], idempotency_key: str | None = None) -> list[Result]:
        """Validate and store many documents; one result per document, in order.

        Documents are grouped by slot, each slot's documents are one part
        with the request id ``<request id of the key>:slot:<slot>``, and each
        group gets its slots' parts in one ``insert_parts`` command, so a batch
        costs one Raft entry per group, applied in one pass. Sent again with
        the same ``idempotency_key``, each part is applied at most once; and a
        part whose slot moved in between is retried at its new owner under the
        same id (remembered ids move with their slots), which names the same
        documents however the slots are grouped then.
        """
        base = request_id_for(idempotency_key or new_idempotency_key())
        deadline = time.monotonic() + self.deadline
        model = self.app.model(model_name)
        results: list[Result | None] = [None] * len(docs)
        by_slot: dict[int, list[int]] = {}
        clean: list[dict[str, Any]] = []
        for i, doc in enumerate(docs):
            try:
                valid = model.validate(doc)
            except DocraftError as exc:
                results[i] = exc.to_json()
                clean.append({})
                continue
            clean.append(valid)
            by_slot.setdefault(slot_of(valid[model.partition_key]), []).append(i)

        def part(slot: int) -> dict[str, Any]:
            return {"slot": slot, "request_id": f"{base}:slot:{slot}", "docs": [clean[i] for i in by_slot[slot]]}

        tried = Attempts()
        pending = sorted(by_slot)
        while pending:
            groups: dict[str, list[int]] = {}
            for slot in pending:
                groups.setdefault(self.view.shard_for_slot(slot), []).append(slot)
            answers = await asyncio.gather(
                *(
                    self._group_write(
                        shard_id,
                        {
                            "type": "insert_parts",
                            "model": model_name,
                            "parts": [part(s) for s in slots],
                            "request_id": f"{base}:batch",
                        },
                        deadline,
                        tried,
                    )
                    for shard_id, slots in groups.items()
                )
            )
            pending = []
            refusals: list[tuple[DocraftError, str]] = []
            for (shard_id, slots), answer in zip(groups.items(), answers, strict=True):
                outcomes: list[Any] = answer if isinstance(answer, list) else [answer] * len(slots)
                for slot, outcome in zip(slots, outcomes, strict=True):
                    refusal = outcome if isinstance(outcome, DocraftError) else _relocation(outcome)
                    if refusal is not None:
                        pending.append(slot)
                        refusals.append((refusal, shard_id))
                        continue
                    for i, result in zip(by_slot[slot], unwrap(outcome), strict=True):
                        results[i] = result
            if refusals:
                await self._after_refusals(refusals, deadline)
        return [r for r in results if r is not None]

    async def _group_write(
        self, shard_id: str, command: dict[str, Any], deadline: float, tried: Attempts
    ) -> list[Result] | DocraftError:
        """``command`` (an ``insert_parts``) on group ``shard_id``: one result per part, or the refusal that
        sent nothing."""
        try:
            return list(unwrap(await self.groups.write_with(self.view.shard(shard_id), command, deadline, tried)))
        except RELOCATIONS as exc:
            return exc

    # -- slot-addressed calls: following moves ------------------------------------

    async def write_slot(self, slot: int, command: dict[str, Any], deadline: float) -> Result:
        """Commit ``command`` at the group owning ``slot``, following moves with the same request id.

        Raises as ``write`` does, and the last ``SlotFrozen``/``SlotImporting``/
        ``SlotsUnknown``/``WrongShard`` when the slot did not settle by ``deadline``.
        """
        tried = Attempts()
        return await self._at_owner(
            slot, lambda shard: self.groups.write_with(shard, command, deadline, tried), deadline
        )

    async def read_slot(self, slot: int, request: dict[str, Any], consistency: Consistency, deadline: float) -> Result:
        """Run ``request`` at the group owning ``slot``, following moves; raises as ``write_slot``."""
        return await self._at_owner(
            slot, lambda shard: self.groups.read(shard, request, consistency, deadline), deadline
        )

    async def _at_owner(
        self, slot: int, attempt: Callable[[ShardConfig], Awaitable[Result]], deadline: float
    ) -> Result:
        while True:
            shard = self.view.shard(self.view.shard_for_slot(slot))
            try:
                result = await attempt(shard)
                refusal = _relocation(result)
                if refusal is None:
                    return result
                raise refusal
            except RELOCATIONS as exc:
                await self._after_refusals([(exc, shard.id)], deadline)

    async def _after_refusals(self, refusals: list[tuple[DocraftError, str]], deadline: float) -> None:
        """Get ready to send again after slot refusals (each with the group that gave it).

        ``wrong_shard``: the view is patched from the answer; if that does not
        name a new owner, the view is refreshed instead. Otherwise (a slot
        moving, a group not started): wait the longest ``retry_after``. Raises
        a refusal itself when ``deadline`` leaves no time to send again.
        """
        remaining = deadline - time.monotonic()
        pause = 0.0
        refresh = False
        for refusal, asked in refusals:
            if remaining <= 0:
                raise refusal
            if isinstance(refusal, WrongShard):
                moved = self.view.patch(refusal.details) and self.view.shard_for_slot(refusal.details["slot"]) != asked
                refresh = refresh or not moved
                continue
            wait = refusal.details.get("retry_after")
            wait = wait if isinstance(wait, int | float) and wait > 0 else RETRY_PAUSE
            if wait >= remaining:
                raise refusal
            pause = max(pause, wait)
        if refresh:
            await self._refresh(deadline)
        await asyncio.sleep(pause)

    async def _refresh(self, deadline: float) -> None:
        """Refresh the view, waiting at most until ``deadline`` and at least one retry pause."""
        started = time.monotonic()
        try:
            await asyncio.wait_for(self.view.refresh(), max(deadline - started, 0.001))
        except TimeoutError:
            return
        now = time.monotonic()
        await asyncio.sleep(max(min(RETRY_PAUSE - (now - started), deadline - now), 0))

    async def scatter(self, request: dict[str, Any], consistency: Consistency, deadline: float) -> list[Result]:
        """Run ``request`` on every group that owns slots; one answer per group.

        Answers that carry ``owned`` ranges must cover every slot exactly
        once; if they overlap or leave a gap (a move between two commits, a
        stale view or replica), the view is refreshed and the whole request
        sent again. ``SlotsUnknown`` when they still do not at ``deadline``.
        """
        while True:
            groups = self.view.serving()
            results = await asyncio.gather(*(self._read_group(g, request, consistency, deadline) for g in groups))
            problem = _cover_problem([r.get("owned") for r in results])
            if problem is None:
                return results
            await self._refresh(deadline)
            if deadline - time.monotonic() < RETRY_PAUSE:
                raise SlotsUnknown(
                    f"the groups' answers do not cover every slot once ({problem}): slots are moving; retry shortly",
                    retry_after=RETRY_PAUSE,
                )

    async def read_keys(
        self,
        keys: list[Any],
        request_for: Callable[[list[Any]], dict[str, Any]],
        consistency: Consistency,
        deadline: float,
    ) -> list[Result]:
        """Run ``request_for(keys of one group)`` at the owner of each partition key's slot; every answer.

        An answer whose ``owned`` ranges miss one of its keys' slots (the slot
        moved) is dropped, and its keys asked again after a refresh of the
        view, until ``deadline`` (then ``SlotsUnknown``).
        """
        results: list[Result] = []
        pending = list(keys)
        while pending:
            groups: dict[str, list[Any]] = {}
            for key in pending:
                groups.setdefault(self.view.shard_for_key(key), []).append(key)
            answers = await asyncio.gather(
                *(
                    self._read_group(self.view.shard(s), request_for(v), consistency, deadline)
                    for s, v in groups.items()
                )
            )
            pending = []
            for values, answer in zip(groups.values(), answers, strict=True):
                owned = answer.get("owned")
                if owned is None or all(_in_ranges(owned, slot_of(v)) for v in values):
                    results.append(answer)
                else:
                    pending += values
            if pending:
                await self._refresh(deadline)
                if deadline - time.monotonic() < RETRY_PAUSE:
                    raise SlotsUnknown(
                        "the owners of some keys' slots moved on every try; retry shortly", retry_after=RETRY_PAUSE
                    )
        return results

    async def _read_group(
        self, shard: ShardConfig, request: dict[str, Any], consistency: Consistency, deadline: float
    ) -> Result:
        """``request`` on ``shard``, sent again while the group answers that a slot is moving or unknown."""
        while True:
            try:
                return await self.groups.read(shard, request, consistency, deadline)
            except (SlotFrozen, SlotImporting, SlotsUnknown) as exc:
                await self._after_refusals([(exc, shard.id)], deadline)

    # -- responses ---------------------------------------------------------------

    def _response(self, results: list[Result], explain: bool) -> dict[str, Any]:
        served_by = [r.pop("served_by", None) for r in results]
        for result in results:
            result.pop("owned", None)
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


RELOCATIONS = (WrongShard, SlotFrozen, SlotImporting, SlotsUnknown)
_RELOCATION_CODES = {cls.code for cls in RELOCATIONS}


def _relocation(result: Result) -> DocraftError | None:
    """The slot refusal a group answered ``result`` with (not applied, not remembered), else ``None``."""
    error = result.get("error")
    if isinstance(error, dict) and error.get("code") in _RELOCATION_CODES:
        return error_from_json(result)
    return None


def _in_ranges(ranges: list[list[int]], slot: int) -> bool:
    return any(first <= slot <= last for first, last in ranges)


def _cover_problem(answers: list[Any]) -> str | None:
    """Whether the ``owned`` ranges of every answer cover each slot exactly once: ``None`` if so (or when an
    answer carries none, as replicas before slot tables do), else what is wrong."""
    if any(owned is None for owned in answers):
        return None
    expected = 0
    for first, last in sorted((first, last) for owned in answers for first, last in owned):
        if first > expected:
            return f"no answer holds slot {expected}"
        if first < expected:
            return f"two answers hold slot {first}"
        expected = last + 1
    return None if expected == SLOT_COUNT else f"no answer holds slot {expected}"


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
