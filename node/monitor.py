"""The integrity monitor: compares replicas' digests and raises admin alerts.

It runs inside every dispatcher (``docraft dispatcher``, and so in
``docraft up``). Every ``monitor_interval`` seconds it asks each replica of
each shard for ``/_admin/digest`` and judges the group:

- at the newest log index that a majority of the group reports with one
  digest, a replica reporting another digest is ``divergence``;
- a replica whose code fingerprint is not the cluster's is ``code_mismatch``;
- a replica that has not answered for ``unreachable_after`` seconds is
  ``replica_unreachable``;
- an index that every replica reports with no digest held by a majority is
  ``no_majority``, a shard-wide alert.

A replica with a divergence or code alert is flagged: routers read nothing
from it. Alerts clear, and flags lift, when the replica agrees again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from models.errors import DocraftError
from node.alerts import Alert, AlertBook
from node.config import ClusterConfig, IntegrityConfig, ShardConfig
from node.shard_client import ShardClient

log = logging.getLogger("docraft.monitor")


@dataclass
class Judgement:
    """The monitor's reading of one shard's reports."""

    agreeing: set[str] = field(default_factory=set)
    divergent: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    no_majority: tuple[int, dict[str, str]] | None = None


def judge(reports: dict[str, dict[str, Any]], group_size: int) -> Judgement:
    """Compare digests at common indexes, newest first; the majority of the group decides.

    ``reports`` maps replica id to its ``/_admin/digest`` answer. Each replica
    is judged at the newest index it reports: agreeing or divergent when a
    majority of the group shares one digest there; left unjudged when the
    reporters there disagree with no majority (an older index where they
    happened to agree must not clear it), or when it reports no index a
    majority shares.
    """

    points: dict[int, dict[str, str]] = {}
    for replica, report in reports.items():
        for index, digest in [*report["checkpoints"], [report["applied_index"], report["digest"]]]:
            points.setdefault(int(index), {})[replica] = digest
    majority = group_size // 2 + 1
    verdict = Judgement()
    judged: set[str] = set()
    for index in sorted(points, reverse=True):
        seen = points[index]
        pending = [r for r in seen if r not in judged]
        if not pending:
            continue
        digest, count = Counter(seen.values()).most_common(1)[0]
        if count >= majority:
            for replica in pending:
                judged.add(replica)
                if seen[replica] == digest:
                    verdict.agreeing.add(replica)
                else:
                    verdict.divergent[replica] = (index, dict(seen))
        elif len(set(seen.values())) > 1:
            judged.update(pending)  # a disagreement nobody can settle yet: judge these later
            if len(seen) == group_size and verdict.no_majority is None:
                verdict.no_majority = (index, dict(seen))

    return verdict


class IntegrityMonitor:
    def __init__(self, config: ClusterConfig, client: ShardClient, alerts: AlertBook, flagged: set[str]) -> None:
        """``flagged`` is the router's set of replicas not to read from; the monitor keeps it."""
        self.config = config
        self.settings: IntegrityConfig = config.integrity
        self.client = client
        self.alerts = alerts
        self.flagged = flagged
        started = time.monotonic()
        self.last_answer = {r.id: started for s in config.shards for r in s.replicas}

    async def run(self) -> None:
        """Check every shard forever, one round per ``monitor_interval``."""
        while True:
            started = time.monotonic()
            try:
                await asyncio.gather(*(self.check(shard) for shard in self.config.shards))
            except Exception:  # a monitor bug must not stop monitoring
                log.exception("integrity check failed")
            await asyncio.sleep(max(self.settings.monitor_interval - (time.monotonic() - started), 0.05))

    async def check(self, shard: ShardConfig) -> None:
        """One round for one shard: fetch reports, then raise and clear alerts."""

        async def ask(replica_id: str) -> dict[str, Any] | None:
            try:
                return await self.client.integrity(self.config.replica(replica_id), timeout=1.0)
            except DocraftError:
                return None

        ids = [r.id for r in shard.replicas]
        answers = dict(zip(ids, await asyncio.gather(*(ask(r) for r in ids)), strict=True))
        reports = {r: a for r, a in answers.items() if a is not None}
        now = time.monotonic()
        for replica in ids:
            if replica in reports:
                self.last_answer[replica] = now
                self.alerts.clear("replica_unreachable", shard.id, replica)
            elif now - self.last_answer[replica] >= self.settings.unreachable_after:
                silent = now - self.last_answer[replica]
                self.alerts.raise_alert(
                    Alert("replica_unreachable", shard.id, replica, None, {}, f"no answer for {silent:.1f}s")
                )
        wrong_code = self._check_code(shard, reports)
        verdict = judge(reports, len(ids))
        for replica, (index, digests) in verdict.divergent.items():
            if replica in wrong_code:
                continue
            self.flagged.add(replica)
            self.alerts.raise_alert(
                Alert(
                    "divergence",
                    shard.id,
                    replica,
                    index,
                    digests,
                    f"replica {replica} disagrees with the majority of shard {shard.id} at log index {index}",
                )
            )
        for replica in verdict.agreeing - wrong_code:
            self.alerts.clear("divergence", shard.id, replica)
            self.flagged.discard(replica)
        if verdict.no_majority is not None:
            index, digests = verdict.no_majority
            message = f"no majority of shard {shard.id} agrees at log index {index}"
            self.alerts.raise_alert(Alert("no_majority", shard.id, None, index, digests, message))
        elif verdict.agreeing:
            self.alerts.clear("no_majority", shard.id, None)

    def _check_code(self, shard: ShardConfig, reports: dict[str, dict[str, Any]]) -> set[str]:
        wrong = set()
        for replica, report in reports.items():
            fingerprint = report["fingerprint"]
            if fingerprint["ok"]:
                if self.alerts.is_active("code_mismatch", shard.id, replica):
                    self.alerts.clear("code_mismatch", shard.id, replica)
                    self.flagged.discard(replica)
                continue
            wrong.add(replica)
            self.flagged.add(replica)
            self.alerts.raise_alert(
                Alert(
                    "code_mismatch",
                    shard.id,
                    replica,
                    report["applied_index"],
                    {"cluster": fingerprint["cluster"], "local": fingerprint["local"]},
                    f"replica {replica} runs app code other than the cluster's and serves no data",
                )
            )
        return wrong
