"""Admin calls that fan out to every group: accept new app code, migrate a model, report the cluster.

Each goes through the router (leader following, retries) to every group of
its ``ClusterView``; the report (``/_admin/cluster``, ``docraft status``) also
asks every replica for its status and each group for its slots and counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from models.errors import BadRequest, DocraftError, FingerprintRefused, MigrationRefused
from node.config import ReplicaConfig, ShardConfig
from node.consistency import Consistency
from node.group_calls import unwrap
from node.request_ids import request_id_for
from node.router import Router

# How long the report waits for a fresh look at every group's slots.
REFRESH_TIMEOUT = 1.0
REPORT_TIMEOUT = 1.0


class AdminOps:
    """The fan-out admin calls made through ``router``; used on its event loop."""

    def __init__(self, router: Router) -> None:
        self.router = router

    async def _write_everywhere(self, command: dict[str, Any]) -> dict[str, Any]:
        """Commit ``command`` (a fresh request id per group) on every group; each group's result by id."""

        async def one(shard: ShardConfig) -> Any:
            return unwrap(await self.router.groups.write(shard, {**command, "request_id": request_id_for(None)}))

        shards = self.router.view.shards()
        results = await asyncio.gather(*(one(shard) for shard in shards))
        return {shard.id: result for shard, result in zip(shards, results, strict=True)}

    async def set_fingerprint(self, fingerprint: str) -> dict[str, Any]:
        """Record ``fingerprint`` as the cluster's app code on every group (a deliberate upgrade).

        Only code that runs: each group's replicas are asked for their own
        fingerprint first, and ``FingerprintRefused`` names every group none
        of whose answering replicas runs ``fingerprint``; nothing changes then.
        """
        shards = self.router.view.shards()
        running = await asyncio.gather(*(self._running_code(shard) for shard in shards))
        refused = {
            shard.id: by_replica
            for shard, by_replica in zip(shards, running, strict=True)
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
                report = await self.router.client.integrity(replica)
            except DocraftError:
                return None
            fingerprint = report.get("fingerprint", {}).get("local")
            return fingerprint if isinstance(fingerprint, str) else None

        fingerprints = await asyncio.gather(*(local(replica) for replica in shard.replicas))
        return {replica.id: fp for replica, fp in zip(shard.replicas, fingerprints, strict=True)}

    async def migrate(self, model_name: str, target: int, dry_run: bool) -> dict[str, Any]:
        """Migrate ``model_name`` to version ``target`` on every group, or only plan it.

        ``BadRequest`` unless ``target`` is the version this process's code
        declares for the model (replicas check theirs too). Every group first
        checks that each document would validate after the change; if any would
        not, nothing starts and ``MigrationRefused`` lists them. Then each group
        migrates in one replicated command, atomically.
        """
        model = self.router.app.model(model_name)
        if target != model.version:
            raise BadRequest(
                f"the running code declares {model.name} version {model.version}, not {target}: "
                "deploy the code that declares it first",
                param="to",
            )
        request = {"migration_plan": {"model": model.name, "to": target}, "consistency": "linearizable"}
        shards = self.router.view.shards()
        plans = await asyncio.gather(*(self.router.groups.read(s, request, Consistency.LINEARIZABLE) for s in shards))
        by_shard = {
            shard.id: {k: v for k, v in plan.items() if k != "served_by"}
            for shard, plan in zip(shards, plans, strict=True)
        }
        failing = sum(plan["failure_count"] for plan in by_shard.values())
        if failing:
            raise MigrationRefused(
                f"{failing} {model.name} documents would fail validation as version {target}; nothing changed",
                shards=by_shard,
            )
        if dry_run:
            return {"dry_run": True, "shards": by_shard}
        results = await self._write_everywhere({"type": "migrate", "model": model.name, "to": target})
        return {"dry_run": False, "shards": results}

    async def cluster_status(self) -> dict[str, Any]:
        """The cluster as ``GET /_admin/cluster`` reports it (see docs; ``docraft status`` prints it).

        ``{"epoch", "pid", "shards": [{"id", "epoch", "slots", "slot_count", "documents", "leader", "replicas":
        [{"id", "raft", "http", "pid", "role", "mode", "voter", "applied_index", "commit_index", "lag_entries",
        "fault", ...status}]}], "moves": [...]}``. A ``pid`` is the answering process's (so a launcher tells its
        own processes from others on their ports). A replica that does not answer has role ``unreachable``;
        a group none of whose replicas answered has ``documents`` and ``epoch`` ``None``.
        """
        view = self.router.view
        with contextlib.suppress(TimeoutError):  # then report the view as it stands
            await asyncio.wait_for(view.refresh(), REFRESH_TIMEOUT)
        shards = await asyncio.gather(*(self._shard_status(shard) for shard in view.shards()))
        return {"epoch": view.epoch, "pid": os.getpid(), "shards": list(shards), "moves": moves(view.reports)}

    async def _shard_status(self, shard: ShardConfig) -> dict[str, Any]:
        view, client = self.router.view, self.router.client
        members = [*shard.replicas, *view.learners(shard.id)]

        async def status(replica: ReplicaConfig) -> dict[str, Any]:
            entry: dict[str, Any] = {"id": replica.id, "raft": replica.raft, "http": replica.http}
            try:
                answer = await client.status(replica, REPORT_TIMEOUT)
            except DocraftError as exc:
                return {**entry, "role": "unreachable", "error": exc.message}
            return {**entry, **{k: v for k, v in answer.items() if k not in ("id", "shard")}}

        async def counts() -> dict[str, Any] | None:
            for replica in shard.replicas:
                try:
                    return await client.slots(replica, REPORT_TIMEOUT, counts=True)
                except DocraftError:
                    continue
            return None

        statuses, report = await asyncio.gather(asyncio.gather(*(status(r) for r in members)), counts())
        replicas = list(statuses)
        leaders = [r for r in replicas if r.get("role") == "leader"]
        leader = max(leaders, key=lambda r: r["term"]) if leaders else None
        for replica in replicas:
            _describe(replica, leader, voter=replica["id"] in {r.id for r in shard.replicas})
        if report is not None:
            view.merge(shard.id, report)
        ranges = view.ranges_of(shard.id)
        return {
            "id": shard.id,
            "epoch": view.group_epoch(shard.id),
            "slots": ranges,
            "slot_count": sum(last - first + 1 for first, last in ranges),
            "documents": None if report is None else sum((report.get("counts") or {}).values()),
            "leader": None if leader is None else leader["id"],
            "replicas": replicas,
        }


def _describe(replica: dict[str, Any], leader: dict[str, Any] | None, voter: bool) -> None:
    """Add ``mode``, ``voter`` and ``lag_entries`` to a replica's status entry (in place).

    The mode is the replica's own (membership-aware replicas report it), else
    ``voter`` for a voter. A voter's lag is the leader's last index minus its
    match index when the leader reports match indexes, else the leader's
    applied index minus its own; a learner's the leader's commit index minus
    its applied index. ``None`` when there is no leader or no answer.
    """
    replica.setdefault("mode", "voter" if voter else "learner")
    replica["voter"] = replica["mode"] == "voter"
    for name in ("applied_index", "commit_index", "fault"):
        replica.setdefault(name, None)
    applied = replica["applied_index"]
    lag: int | None = None
    if leader is not None and isinstance(applied, int):
        match = (leader.get("match_index") or {}).get(replica["raft"])
        if replica["id"] == leader["id"]:
            lag = 0
        elif replica["voter"] and isinstance(match, int) and isinstance(leader.get("last_index"), int):
            lag = leader["last_index"] - match
        elif not replica["voter"] and isinstance(leader.get("commit_index"), int):
            lag = leader["commit_index"] - applied
        elif isinstance(leader.get("applied_index"), int):
            lag = leader["applied_index"] - applied
    replica["lag_entries"] = None if lag is None else max(lag, 0)


def moves(reports: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The moves the groups' slot reports list, one entry per move id, joined from source and target records.

    ``{"id", "slots", "from", "to", "epoch", "state", "docs_total", "docs_copied", "started_at",
    "touched_at"}``: ``state`` is ``committed`` once the target committed, ``aborted`` if either side
    aborted, else the source's (``frozen``) or, before the source froze, the target's (``importing``).
    """
    joined: dict[str, dict[str, Any]] = {}
    for shard_id, report in sorted(reports.items()):
        for record in report.get("moves") or []:
            entry = joined.setdefault(
                record["id"],
                {"id": record["id"], "slots": record.get("slots"), "epoch": record.get("epoch"), "sides": {}},
            )
            entry["sides"][record.get("role")] = (shard_id, record)
    result = []
    for entry in joined.values():
        sides = entry.pop("sides")
        source, target = sides.get("source"), sides.get("target")
        states = {side: record.get("state") for side, (_, record) in sides.items()}
        state: str | None
        if states.get("target") == "committed":
            state = "committed"
        elif "aborted" in states.values():
            state = "aborted"
        else:
            state = states.get("source") or states.get("target")
        either = source or target
        assert either is not None
        peer = either[1].get("peer")
        entry.update(
            {
                "from": source[0] if source else peer,
                "to": target[0] if target else peer,
                "state": state,
                "docs_total": (source or either)[1].get("count"),
                "docs_copied": target[1].get("docs_copied") if target else None,
                "started_at": min(r.get("started_at") or 0 for _, r in sides.values()),
                "touched_at": max(r.get("touched_at") or 0 for _, r in sides.values()),
            }
        )
        result.append(entry)
    return sorted(result, key=lambda m: (m["epoch"] or 0, m["id"]))
