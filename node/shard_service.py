"""What one replica offers the routers: propose a write, run a read, report status.

The replica server exposes these as ``/_shard/*`` routes, and a router inside
the same process calls them directly, so both paths run the same code.

A replica re-checks every write it is asked to propose, as the router did
before sending it: a mutation's arguments against the endpoint's types, and
that every key it writes belongs to this replica's shard. A command that
fails is refused before it reaches the log, so nothing is stored.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar

from consensus.replica import Replica
from consensus.state_machine import Result, StateMachine
from models.errors import BadRequest, CodeMismatch, DocraftError, ReplicaFaulted, WrongShard
from node.config import ReplicaConfig
from node.consistency import Consistency
from node.fault_injection import corrupt
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
        result = await self.replica.submit({**checked, "time": time.time()}, timeout)
        return {**result, "served_by": self._served_by(None)}

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

    def _as_sent(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commands for every shard (``set_fingerprint``, ``migrate``) write no key; the state machine checks them."""
        return command

    def _check_ours(self, key: Any, what: str) -> None:
        """Raise ``WrongShard`` naming the owner when ``key`` is not in this shard's slots."""
        slot = slot_of(key)
        owner = self.shard_map.shard_for_slot(slot).id
        if owner != self.config.shard:
            raise WrongShard(
                f"{what} {key!r} belongs to shard {owner} (slot {slot}), not {self.config.shard}; nothing was stored",
                shard=owner,
                slot=slot,
            )

    # Commands a router may propose, each with its check; batches are made by the replica itself.
    ROUTED_COMMANDS: ClassVar[dict[str, Check]] = {
        "mutation": _checked_mutation,
        "insert_batch": _checked_batch,
        "set_fingerprint": _as_sent,
        "migrate": _as_sent,
    }

    async def read(self, request: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Run a query endpoint here at the requested consistency.

        ``request`` is ``{"endpoint", "args", "explain", "consistency"}``, or
        ``{"lookup": {"model", "field", "values"}, "consistency"}`` to fetch
        related documents, or ``{"migration_plan": {"model", "to"}}`` for a
        migration's dry run here.

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

        def run(state: StateMachine) -> Result:
            if isinstance(plan, dict):
                return state.migration_plan(str(plan.get("model")), plan["to"])
            if isinstance(lookup, dict):
                return state.lookup(str(lookup.get("model")), str(lookup.get("field")), lookup.get("values"))
            return state.query(endpoint, args, explain)

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
        ``role``, ``term`` and ``fault`` (a condition the replica found in
        itself, or None) are as ``status()`` reports them.
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
        }

    def corrupt(self, request: dict[str, Any]) -> dict[str, Any]:
        """Fault injection: change one local document without Raft (``--unsafe-fault-injection``)."""
        collection, key, fields = request.get("collection"), request.get("id"), request.get("fields")
        if not isinstance(collection, str) or key is None or not isinstance(fields, dict):
            raise BadRequest('corrupt takes {"collection": MODEL, "id": KEY, "fields": {...}}')
        return self.replica.read_locally(lambda state: corrupt(state, collection, key, fields))

    def status(self) -> dict[str, Any]:
        """This replica's id, shard and Raft status."""
        return {"id": self.config.id, "shard": self.config.shard, **self.replica.status()}


def _is_default(endpoint: Endpoint, name: str, value: Any) -> bool:
    """Whether ``value`` is the default of optional parameter ``name``, of the same type (``1`` is not ``True``)."""
    param = endpoint.params[name]
    return not param.required and type(value) is type(param.default) and value == param.default
