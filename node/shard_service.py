"""What one replica offers the routers: propose a write, run a read, report status.

The replica server exposes these as ``/_shard/*`` routes, and a router inside
the same process calls them directly, so both paths run the same code.

A replica re-checks every write it is asked to propose, as the router did
before sending it: a mutation's arguments against the endpoint's types, and
that every key it writes belongs to this replica's shard. A command that
fails is refused before it reaches the log, so nothing is stored.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any, ClassVar

from consensus.moves import replicas
from consensus.replica import Replica
from consensus.state_machine import Result, StateMachine, is_insert_part
from models.errors import BadRequest, CodeMismatch, DocraftError, ReplicaFaulted, WrongShard
from node.config import ReplicaConfig
from node.consistency import Consistency
from node.fault_injection import corrupt
from node.move_commands import SHAPES, checked_move, export_request
from node.shard_map import ShardMap, slot_of
from query.endpoints import Endpoint

# How long a write or a read barrier may wait for Raft when the caller names no deadline.
DEFAULT_TIMEOUT = 10.0

Check = Callable[["ShardService", dict[str, Any]], dict[str, Any]]


class ShardService:
    def __init__(self, replica: Replica, config: ReplicaConfig, shard_map: ShardMap) -> None:
        """The service of ``replica`` (``config``); ``shard_map`` says which keys its shard holds."""
        self.replica = replica
        self.config = config
        self.shard_map = shard_map

    async def write(self, command: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Propose ``command`` through Raft and return the state machine's result.

        The leader stamps the wall-clock time into the command, so every
        replica applies the same time. Raises ``NotLeader``, ``NoLeader`` or
        ``OutcomeUnknown`` (see ``Replica.submit``), the last also when no
        answer came within ``timeout`` seconds. Before proposing, the command
        is checked by its row of ``ROUTED_COMMANDS``: ``BadRequest`` or
        ``NotFound`` for arguments the router would have refused, and
        ``WrongShard`` for a key of another shard; nothing is proposed then.
        """
        if not isinstance(command, dict) or not isinstance(command.get("request_id"), str):
            raise BadRequest("a shard write needs a JSON object with a string request_id")
        kind = command.get("type")
        if not isinstance(kind, str) or kind not in self.ROUTED_COMMANDS:
            raise BadRequest(f"a shard write carries one of {', '.join(self.ROUTED_COMMANDS)}")
        checked = self.ROUTED_COMMANDS[kind](self, command)
        if kind == "batch":
            result = await self._submit_together(checked["commands"], timeout)
        else:
            result = await self.replica.submit({**checked, "time": time.time()}, timeout)
        return {**result, "served_by": self._served_by(None)}

    async def _submit_together(self, commands: list[dict[str, Any]], timeout: float) -> Result:
        """A routed batch: ``{"ok": [one result per command]}``, each command applied (checked, fenced,
        remembered) on its own. Proposed in one loop turn, they travel in one log entry (``Replica.submit``);
        raises the first failure, as ``write`` does, when any could not be learned."""
        now = time.time()
        outcomes = await asyncio.gather(
            *(self.replica.submit({**c, "time": now}, timeout) for c in commands), return_exceptions=True
        )
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            raise failure
        return {"ok": outcomes}

    # -- what a replica checks before proposing a routed command ------------------

    def _checked_mutation(self, command: dict[str, Any]) -> dict[str, Any]:
        """The mutation with its arguments parsed as the router parses them; its shard key must be ours."""
        endpoint = self.replica.state_machine.app.endpoint(str(command.get("endpoint")))
        if endpoint.kind != "mutation":
            raise BadRequest(f"{endpoint.name} is a query, not a mutation")
        args = command.get("args")
        if not isinstance(args, dict):
            raise BadRequest(f"{endpoint.name}'s args must be a JSON object", param="args")
        unknown = sorted(set(args) - set(endpoint.params))
        if unknown:
            raise BadRequest(f"{endpoint.name} takes no parameter {unknown[0]!r}", param=unknown[0])
        # A default the router filled in need not be of its parameter's type (``tags: list[str] = ()``).
        given = {name: value for name, value in args.items() if not _is_default(endpoint, name, value)}
        parsed = endpoint.parse({}, given)
        self._check_ours(endpoint.shard_key_of(parsed), f"{endpoint.name}'s {endpoint.shard_key}")
        return {**command, "args": parsed}

    def _checked_batch(self, command: dict[str, Any]) -> dict[str, Any]:
        """The batch as sent, if every document that validates has a partition key of ours.

        A document that does not validate is left to the state machine, which
        refuses it alone and stores nothing for it, as for any batch.
        """
        model = self.replica.state_machine.app.model(str(command.get("model")))
        docs = command.get("docs")
        if not isinstance(docs, list):
            raise BadRequest("insert_batch needs a list of documents", param="docs")
        for doc in docs:
            try:
                valid = model.validate(doc)
            except DocraftError:
                continue
            self._check_ours(valid[model.partition_key], f"{model.name}.{model.partition_key}")
        return command

    def _checked_routed_batch(self, command: dict[str, Any]) -> dict[str, Any]:
        """A router's bulk insert for this group: ``insert_batch`` commands, one per slot, each checked."""
        commands = command.get("commands")
        if not isinstance(commands, list) or not commands or not all(_slot_insert(c) for c in commands):
            raise BadRequest("a routed batch holds insert_batch commands, each with a slot and a request_id")
        return {**command, "commands": [self._checked_batch(c) for c in commands]}

    def _checked_parts(self, command: dict[str, Any]) -> dict[str, Any]:
        """A router's bulk insert for this group in one command (``Router.insert_batch``), as sent, if the
        model exists and every part's slot is held here. Its documents are checked at apply, where one of
        another slot than its part's is refused alone (``wrong_shard``) and stored nowhere."""
        self.replica.state_machine.app.model(str(command.get("model")))
        parts = command.get("parts")
        if not isinstance(parts, list) or not parts or not all(map(is_insert_part, parts)):
            raise BadRequest("insert_parts holds parts, each with a slot, a request_id and docs", param="parts")
        self._check_slots({part["slot"]: f"slot {part['slot']} of {part['request_id']}" for part in parts})
        return command

    def _as_sent(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commands for every shard (``set_fingerprint``, ``migrate``) write no key; the state machine checks them."""
        return command

    def _check_ours(self, key: Any, what: str) -> None:
        """Raise ``WrongShard`` when ``key``'s slot moved away or was never held here, ``SlotsUnknown``
        before the group's slot table is committed. A slot moving in or out passes: the fence at apply
        answers the write (``StateMachine._fence``). The owner named is the tombstone's; for a slot never
        held here, the cluster file's owner at version 0 (the map every group started from).

        Refusing before the table is committed is what keeps every new write fenced: until ``init_slots``
        is applied the state machine fences nothing (it replays entries logged before slots existed), and
        a write proposed after this check passed lands after ``init_slots`` in the log."""
        self._check_slots({slot_of(key): f"{what} {key!r}"})

    def _check_slots(self, slots: dict[int, str]) -> None:
        """``_check_ours`` for each slot, named in an error by what ``slots`` maps it to, in one read."""

        def check(state: StateMachine) -> Result:
            for slot, what in slots.items():
                try:
                    state.check_route(slot)
                except WrongShard as refusal:
                    details = dict(refusal.details)
                    first_owner = self.shard_map.shard_for_slot(slot).id
                    if details.get("owner") is None and first_owner != self.config.shard:
                        details.update(owner=first_owner, shard=first_owner, epoch=0)
                    raise WrongShard(f"{what}: {refusal.message}", **details) from None
            return {}

        self.replica.read_locally(check)

    def _checked_members(self, command: dict[str, Any]) -> dict[str, Any]:
        """``set_members``: ``voters`` and ``learners`` are lists of ``{"id", "raft", "http"}``; else ``BadRequest``."""
        for role in ("voters", "learners"):
            replicas(command.get(role), role)
        return command

    # Commands a router may propose, each with its check; batches are made by the replica itself.
    ROUTED_COMMANDS: ClassVar[dict[str, Check]] = {
        "mutation": _checked_mutation,
        "insert_batch": _checked_batch,
        "set_fingerprint": _as_sent,
        "migrate": _as_sent,
        "batch": _checked_routed_batch,  # a bulk insert's per-slot commands, as routers before insert_parts send
        "insert_parts": _checked_parts,  # a bulk insert's slots in one command (Router.insert_batch)
        **dict.fromkeys(SHAPES, checked_move),  # slot moves (node.rebalance): shapes here, states at apply
        "set_members": _checked_members,  # after a membership change (node.membership)
    }

    async def read(self, request: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Run a query endpoint here at the requested consistency.

        ``request`` is ``{"endpoint", "args", "explain", "consistency"}``, or
        ``{"lookup": {"model", "field", "values"}, "consistency"}`` to fetch
        related documents, or ``{"migration_plan": {"model", "to"}}`` for a
        migration's dry run here, or ``{"export": {"move", "after", "limit"},
        "consistency": "linearizable"}`` for a page of a frozen move's
        documents (``StateMachine.export_page``; only a linearizable read
        sees every write the freeze let in), or ``{"slots": {"counts": bool}}``
        for the group's slot table at any consistency (``slots_report``).

        Raises ``NotLeader`` when a ``leader`` or ``linearizable`` read
        reaches a follower, ``NoLeader`` when a leader's lease has lapsed,
        ``ReplicaFaulted`` when this replica does not trust its own state, and
        ``OutcomeUnknown`` when a ``linearizable`` read's barrier got no answer
        within ``timeout`` seconds.
        """
        consistency = Consistency.parse(request.get("consistency"))
        if self.replica.fault is not None:
            raise ReplicaFaulted(f"replica {self.config.id} serves nothing: {self.replica.fault.message}")
        if not self.replica.state_machine.code_ok:
            raise CodeMismatch(f"replica {self.config.id} runs app code other than the cluster's; it serves no data")
        if consistency is Consistency.LINEARIZABLE:
            await self.replica.submit({"type": "noop"}, timeout)
        elif consistency is Consistency.LEADER:
            self.replica.check_leader_read()
        endpoint = str(request.get("endpoint"))
        args = request.get("args") or {}
        explain = bool(request.get("explain"))
        lookup = request.get("lookup")
        plan = request.get("migration_plan")

        if isinstance(plan, dict) and (not isinstance(plan.get("to"), int) or isinstance(plan.get("to"), bool)):
            raise BadRequest("a migration plan needs an integer version")
        if "export" in request and consistency is not Consistency.LINEARIZABLE:
            raise BadRequest("an export read must be linearizable", param="consistency")
        export = export_request(request["export"]) if "export" in request else None

        slots = request.get("slots")

        def run(state: StateMachine) -> Result:
            if isinstance(slots, dict):
                return state.slots_report(bool(slots.get("counts")))
            if export is not None:
                return state.export_page(*export)
            if isinstance(plan, dict):
                return state.migration_plan(str(plan.get("model")), plan["to"])
            if isinstance(lookup, dict):
                found = state.lookup(str(lookup.get("model")), str(lookup.get("field")), lookup.get("values"))
                return {**found, "owned": state.readable_ranges()}
            return _query(state, endpoint, args, explain)

        result = self.replica.read_locally(run)
        result["served_by"] = self._served_by(consistency)
        return result

    def _served_by(self, consistency: Consistency | None) -> dict[str, Any]:
        """Who answered: replica, role, term and applied index (and the read's consistency)."""
        status = self.replica.status()
        served = {
            "shard": self.config.shard,
            "replica": self.config.id,
            "role": status["role"],
            "term": status["term"],
            "applied_index": status["applied_index"],
        }
        if consistency is not None:
            served["consistency"] = consistency.value
        return served

    def integrity(self) -> dict[str, Any]:
        """Digest, checkpoints and code fingerprints, read between applies, with Raft progress.

        ``applied_index`` is the state machine's, the index the digest is at.
        ``raft_applied_index`` and ``commit_index`` are PySyncObj's, which also
        count its own entries (no-ops the state machine never sees): the
        monitor compares these two to find a replica that stopped applying.
        ``role``, ``term``, ``fault`` (a condition the replica found in
        itself, or None) and ``voters`` (the group's, by Raft address) are as
        ``status()`` reports them.
        """
        report = self.replica.read_locally(lambda state: state.integrity())
        raft = self.replica.status()
        return {
            "replica": self.config.id,
            "shard": self.config.shard,
            **report,
            "raft_applied_index": raft["applied_index"],
            "commit_index": raft["commit_index"],
            "role": raft["role"],
            "term": raft["term"],
            "fault": raft.get("fault"),
            "voters": raft.get("voters"),
        }

    def corrupt(self, request: dict[str, Any]) -> dict[str, Any]:
        """Fault injection: change one local document without Raft (``--unsafe-fault-injection``)."""
        collection, key, fields = request.get("collection"), request.get("id"), request.get("fields")
        if not isinstance(collection, str) or key is None or not isinstance(fields, dict):
            raise BadRequest('corrupt takes {"collection": MODEL, "id": KEY, "fields": {...}}')
        return self.replica.read_locally(lambda state: corrupt(state, collection, key, fields))

    def slots(self, counts: bool = False) -> dict[str, Any]:
        """This replica's copy of its group's slot table, from local state (``GET /_shard/slots``):
        ``{"shard", "replica", "role", "term", "applied_index", **StateMachine.slots_report(counts)}``."""
        report = self.replica.read_locally(lambda state: state.slots_report(counts))
        return {**self._served_by(None), **report}

    def status(self) -> dict[str, Any]:
        """This replica's id, shard, process id (``pid``) and Raft status."""
        return {"id": self.config.id, "shard": self.config.shard, "pid": os.getpid(), **self.replica.status()}


def _query(state: StateMachine, name: str, args: Any, explain: bool) -> Result:
    """Run query ``name`` on ``state``, under the replica's lock. A query given its shard key is
    answered only where the key's slot is read (``StateMachine.check_read``); any other answers with
    the slot ranges it covers, ``owned``, read with the documents, so a router can tell a scatter
    that saw a moving slot twice or not at all."""
    endpoint = state.app.endpoints.get(name)
    is_query = endpoint is not None and endpoint.kind == "query" and isinstance(args, dict)
    key = endpoint.shard_key_of(args) if endpoint is not None and is_query else None
    if key is not None:
        state.check_read(slot_of(key))
        return state.query(name, args, explain)
    return {**state.query(name, args, explain), "owned": state.readable_ranges()}


def _slot_insert(command: Any) -> bool:
    """Whether ``command`` is shaped as one slot's ``insert_batch`` of a routed batch."""
    return (
        isinstance(command, dict)
        and command.get("type") == "insert_batch"
        and type(command.get("slot")) is int
        and isinstance(command.get("request_id"), str)
    )


def _is_default(endpoint: Endpoint, name: str, value: Any) -> bool:
    """Whether ``value`` is the default of optional parameter ``name``, of the same type (``1`` is not ``True``)."""
    param = endpoint.params[name]
    return not param.required and type(value) is type(param.default) and value == param.default
