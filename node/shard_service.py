"""What one replica offers the routers: propose a write, run a read, report status.

The replica server exposes these as ``/_shard/*`` routes, and a router inside
the same process calls them directly, so both paths run the same code.
"""

from __future__ import annotations

import time
from typing import Any

from consensus.replica import Replica
from consensus.state_machine import Result, StateMachine
from models.errors import BadRequest, CodeMismatch, ReplicaFaulted
from node.config import ReplicaConfig
from node.consistency import Consistency
from node.fault_injection import corrupt

# How long a write or a read barrier may wait for Raft when the caller names no deadline.
DEFAULT_TIMEOUT = 10.0
# Commands a router may propose; batches are made by the replica itself.
ROUTED_COMMANDS = ("mutation", "insert_batch", "set_fingerprint", "migrate")


class ShardService:
    def __init__(self, replica: Replica, config: ReplicaConfig) -> None:
        self.replica = replica
        self.config = config

    async def write(self, command: dict[str, Any], timeout: float = DEFAULT_TIMEOUT) -> Result:
        """Propose ``command`` through Raft and return the state machine's result.

        The leader stamps the wall-clock time into the command, so every
        replica applies the same time. Raises ``NotLeader``, ``NoLeader`` or
        ``OutcomeUnknown`` (see ``Replica.submit``), the last also when no
        answer came within ``timeout`` seconds.
        """
        if not isinstance(command, dict) or not isinstance(command.get("request_id"), str):
            raise BadRequest("a shard write needs a JSON object with a string request_id")
        if command.get("type") not in ROUTED_COMMANDS:
            raise BadRequest(f"a shard write carries one of {', '.join(ROUTED_COMMANDS)}")
        result = await self.replica.submit({**command, "time": time.time()}, timeout)
        return {**result, "served_by": self._served_by(None)}

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
