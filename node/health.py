"""Health checks: ``GET /livez`` (the process is serving) and ``GET /readyz`` (it can do its job now).

As etcd's and Kubernetes' health endpoints do, each answers with the checks it
ran and which failed: 200 with ``{"live"|"ready": true, "checks": [...],
"failed": []}``, or, for ``/readyz``, 503 ``not_ready`` in the one error shape
with ``checks`` and ``failed`` in its details. A check is ``{"name", "ok"}``
plus ``reason`` when it failed.

A replica is ready (``replica_checks``) when it knows a leader (and, leading,
has applied an entry of its own term), has applied what its group committed
to within ``READY_LAG`` entries, found no fault in itself and runs the
cluster's app code. A dispatcher is ready (``shard_check``) when every group
that owns slots has a leader that answers. Both routes are public: they hold
no data, and load balancers and orchestrators probe them without a token.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from models.errors import DocraftError, NotReady
from node.config import ReplicaConfig, ShardConfig
from node.handlers import JSONHandler
from node.monitor import leader_of
from node.router import Router
from node.shard_service import ShardService

# A replica further behind its group's commit index than this many log entries is not ready.
READY_LAG = 100
# How long a dispatcher's readiness waits for each replica's status (seconds).
STATUS_TIMEOUT = 0.5


@dataclass(frozen=True)
class Check:
    """One health check's outcome; ``reason`` says why it failed."""

    name: str
    ok: bool
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": True} if self.ok else {"name": self.name, "ok": False, "reason": self.reason}


class Readiness(Protocol):
    """What ``/readyz`` asks: the process's checks, run now."""

    async def checks(self) -> list[Check]: ...


def replica_checks(status: Mapping[str, Any], code_ok: bool, max_lag: int = READY_LAG) -> list[Check]:
    """A replica's readiness from its Raft ``status`` (``Replica.status``) and whether it runs the cluster's code.

    ``leader``: it leads (having applied an entry of its term) or follows a known
    leader. ``applied``: its applied index is within ``max_lag`` entries of the
    group's commit index (the leader's, as the leader last told it). ``fault``:
    it found none in itself. ``code``: it runs the app code the cluster accepted.
    """
    role, term = status["role"], status["term"]
    if role == "leader":
        leader = Check("leader", bool(status["ready"]), f"it leads term {term} but has not applied an entry of it yet")
    else:
        leader = Check("leader", status["leader_raft"] is not None, f"no leader known ({role} in term {term})")
    committed = max(status["commit_index"], status.get("leader_commit_index") or 0)
    behind = committed - status["applied_index"]
    applied = Check(
        "applied",
        behind <= max_lag,
        f"applied up to {status['applied_index']}, {behind} entries behind the group's commit index "
        f"{committed} (at most {max_lag} allowed)",
    )
    fault = status.get("fault")
    faulted = Check("fault", fault is None, None if fault is None else f"{fault['kind']}: {fault['message']}")
    code = Check("code", code_ok, "it runs app code other than the cluster's")
    return [leader, applied, faulted, code]


def shard_check(shard: str, answers: Mapping[str, Mapping[str, Any] | None]) -> Check:
    """Check ``leader:<shard>``: whether a replica answered as the group's leader in the newest term any
    answer reports (``node.monitor.leader_of``); ``answers`` maps replica id to its status, ``None`` if silent."""
    reports = {r: dict(a) for r, a in answers.items() if a is not None}
    if leader_of(reports) is not None:
        return Check(f"leader:{shard}", True)
    seen = ", ".join(
        f"{r}: no answer" if a is None else f"{r}: {a['role']} in term {a['term']}" for r, a in sorted(answers.items())
    )
    return Check(f"leader:{shard}", False, f"no replica of {shard} answers as its leader ({seen})")


class ReplicaReadiness:
    """A replica process's readiness: ``replica_checks`` of its own state."""

    def __init__(self, service: ShardService, max_lag: int = READY_LAG) -> None:
        self.service = service
        self.max_lag = max_lag

    async def checks(self) -> list[Check]:
        replica = self.service.replica
        return replica_checks(replica.status(), replica.state_machine.code_ok, self.max_lag)


class DispatcherReadiness:
    """A dispatcher's readiness: one ``shard_check`` per group its view says owns slots."""

    def __init__(self, router: Router, timeout: float = STATUS_TIMEOUT) -> None:
        self.router = router
        self.timeout = timeout

    async def checks(self) -> list[Check]:
        return list(await asyncio.gather(*(self._shard(shard) for shard in self.router.view.serving())))

    async def _shard(self, shard: ShardConfig) -> Check:
        async def ask(replica: ReplicaConfig) -> dict[str, Any] | None:
            try:
                return await self.router.client.status(replica, self.timeout)
            except DocraftError:
                return None

        answers = await asyncio.gather(*(ask(replica) for replica in shard.replicas))
        return shard_check(shard.id, {r.id: a for r, a in zip(shard.replicas, answers, strict=True)})


class LivezHandler(JSONHandler):
    """``GET /livez``: answered at all, the process is serving."""

    def get(self) -> None:
        self.write_json({"live": True, "checks": [Check("serving", True).to_json()], "failed": []})


class ReadyzHandler(JSONHandler):
    """``GET /readyz``: 200 when every check of ``readiness`` passes, else 503 ``not_ready`` naming the failed."""

    def initialize(self, readiness: Readiness) -> None:
        self.readiness = readiness

    async def get(self) -> None:
        checks = await self.readiness.checks()
        failed = [check for check in checks if not check.ok]
        body = {"checks": [check.to_json() for check in checks], "failed": [check.name for check in failed]}
        if not failed:
            self.write_json({"ready": True, **body})
            return
        reasons = "; ".join(f"{check.name}: {check.reason}" for check in failed)
        # Answered, not raised: a probe of an unready process is no server error worth a traceback.
        self.send_error_for(NotReady(f"not ready: {reasons}", **body))
