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
  ``no_majority``, a shard-wide alert;
- a replica that has not applied an entry ``apply_stall_after`` seconds after
  reporting it committed is ``apply_stalled``;
- a shard in which no answering replica has led for ``no_leader_after``
  seconds is ``no_leader``, a shard-wide alert;
- a replica whose report carries a ``fault`` it found in itself raises an
  alert of that kind (``entries_lost``, ``snapshot_unloadable``) while it
  reports it.

A replica with a ``divergence``, ``code_mismatch`` or ``snapshot_unloadable``
alert is flagged: routers read nothing from it. Alerts clear, and flags lift,
when the condition ends (the replica agrees again, applies, reports no fault;
the shard has a leader again).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.errors import DocraftError
from node.alerts import Alert, AlertBook
from node.config import ClusterConfig, IntegrityConfig, ShardConfig
from node.shard_client import ShardClient

log = logging.getLogger("docraft.monitor")

# Alerts that flag their replica: routers read nothing from it while one is active.
FLAGGING = ("divergence", "code_mismatch", "snapshot_unloadable")
# The conditions a replica reports about itself in its report's ``fault``.
REPLICA_FAULTS = ("entries_lost", "snapshot_unloadable")


@dataclass
class Judgement:
    """The monitor's reading of one shard's reports."""

    agreeing: set[str] = field(default_factory=set)
    divergent: dict[str, tuple[int, dict[str, str]]] = field(default_factory=dict)
    no_majority: tuple[int, dict[str, str]] | None = None


def judge(reports: dict[str, dict[str, Any]], group_size: int, voters: set[str] | None = None) -> Judgement:
    """Compare digests at common indexes, newest first; the majority of the group decides.

    ``reports`` maps replica id to its ``/_admin/digest`` answer; ``group_size``
    is the number of voters, and only the reports of ``voters`` (default:
    every reporter) count towards a majority, learners being judged by it. Each replica
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
        counted = [d for r, d in seen.items() if voters is None or r in voters]
        digest, count = Counter(counted).most_common(1)[0] if counted else ("", 0)
        if count >= majority:
            for replica in pending:
                judged.add(replica)
                if seen[replica] == digest:
                    verdict.agreeing.add(replica)
                else:
                    verdict.divergent[replica] = (index, dict(seen))
        elif len(set(seen.values())) > 1:
            judged.update(pending)  # a disagreement nobody can settle yet: judge these later
            if len(counted) == group_size and verdict.no_majority is None:
                verdict.no_majority = (index, dict(seen))

    return verdict


def group_voters(shard: ShardConfig, reports: dict[str, dict[str, Any]]) -> tuple[int, set[str]]:
    """How many voters ``shard``'s group has, and which of the file's replicas they are.

    The newest report (leader first, then highest term) that lists ``voters`` (Raft addresses) says;
    without one, every replica of the file is a voter (replicas from before membership changes).
    """
    listing = [r for r in reports.values() if r.get("voters")]
    if not listing:
        return len(shard.replicas), {r.id for r in shard.replicas}
    newest = max(listing, key=lambda r: (r["term"], r["role"] == "leader"))
    addresses = set(newest["voters"])
    return len(addresses), {r.id for r in shard.replicas if r.raft in addresses}


def leader_of(reports: dict[str, dict[str, Any]]) -> str | None:
    """The replica leading its shard according to the replicas that answered, or None.

    It must answer itself with role ``leader`` in the newest term any of them
    reports: a replica that others name as leader but that is silent does not
    count, nor does a deposed leader that has not stepped down yet (its term is
    older than a candidate's).
    """
    if not reports:
        return None
    newest = max(report["term"] for report in reports.values())
    leaders = (r for r, report in sorted(reports.items()) if report["role"] == "leader" and report["term"] == newest)
    return next(leaders, None)


@dataclass(frozen=True)
class Lag:
    """A replica whose applied index is behind ``target``, a commit index it reported at ``since``.

    ``applied`` is the applied index it reported last.
    """

    target: int
    applied: int
    since: float


def next_lag(lag: Lag | None, commit: int, applied: int, now: float) -> Lag | None:
    """The lag after a report of ``commit`` and ``applied`` (Raft indexes) at ``now``.

    A lag lasts while the replica stays below its target; once it reaches the
    target, any remaining lag starts afresh at the current commit index, so a
    replica that follows a moving commit index never lags long. An applied
    index that went down (the replica restarted) starts afresh too.
    """
    if lag is not None and lag.applied <= applied < lag.target:
        return dataclasses.replace(lag, applied=applied)
    return Lag(commit, applied, now) if commit > applied else None


@dataclass
class Progress:
    """``ProgressWatch.observe``'s reading of one round of a shard."""

    stalled: dict[str, Lag] = field(default_factory=dict)
    leaderless_for: float | None = None


class ProgressWatch:
    """Whether replicas apply what they commit, and shards have leaders, over successive rounds.

    Bookkeeping only, with no clock: every observation carries its time, so
    tests drive it with explicit times. Used on the monitor's event loop only.
    """

    def __init__(self, apply_stall_after: float, no_leader_after: float) -> None:
        self.apply_stall_after = apply_stall_after
        self.no_leader_after = no_leader_after
        self.lags: dict[str, Lag] = {}
        self.leaderless_since: dict[str, float] = {}

    def observe(self, shard: str, answers: dict[str, dict[str, Any] | None], now: float) -> Progress:
        """Record one round of ``shard``: each replica's report, or None if it did not answer, at ``now``.

        A replica is stalled once it has lagged (``next_lag``) for
        ``apply_stall_after`` seconds or more. A silent replica is not judged
        and its lag is forgotten: ``replica_unreachable`` covers silence, and a
        paused replica starts afresh when it answers again. The shard is
        leaderless once ``no_leader_after`` seconds or more have passed since
        the first of the rounds in which ``leader_of`` found no leader.
        """
        progress = Progress()
        reports = {r: report for r, report in answers.items() if report is not None}
        for replica, report in answers.items():
            previous = self.lags.pop(replica, None)
            if report is None:
                continue
            lag = next_lag(previous, report["commit_index"], report["raft_applied_index"], now)
            if lag is not None:
                self.lags[replica] = lag
                if now - lag.since >= self.apply_stall_after:
                    progress.stalled[replica] = lag
        if leader_of(reports) is not None:
            self.leaderless_since.pop(shard, None)
        else:
            leaderless = now - self.leaderless_since.setdefault(shard, now)
            if leaderless >= self.no_leader_after:
                progress.leaderless_for = leaderless
        return progress


class IntegrityMonitor:
    def __init__(
        self,
        config: ClusterConfig,
        client: ShardClient,
        alerts: AlertBook,
        flagged: set[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``flagged`` is the router's set of replicas not to read from; the monitor keeps it.

        ``clock`` gives monotonic seconds; tests pass their own.
        """
        self.config = config
        self.settings: IntegrityConfig = config.integrity
        self.client = client
        self.alerts = alerts
        self.flagged = flagged
        self.clock = clock
        self.watch = ProgressWatch(self.settings.apply_stall_after, self.settings.no_leader_after)
        started = clock()
        self.last_answer = {r.id: started for s in config.shards for r in s.replicas}

    async def run(self) -> None:
        """Check every shard forever, one round per ``monitor_interval``."""
        while True:
            started = self.clock()
            try:
                await asyncio.gather(*(self.check(shard) for shard in self.config.shards))
            except Exception:  # a monitor bug must not stop monitoring
                log.exception("integrity check failed")
            await asyncio.sleep(max(self.settings.monitor_interval - (self.clock() - started), 0.05))

    async def check(self, shard: ShardConfig) -> None:
        """One round for one shard: fetch reports, then raise and clear alerts and set flags."""

        async def ask(replica_id: str) -> dict[str, Any] | None:
            try:
                return await self.client.integrity(self.config.replica(replica_id), timeout=1.0)
            except DocraftError:
                return None

        ids = [r.id for r in shard.replicas]
        answers = dict(zip(ids, await asyncio.gather(*(ask(r) for r in ids)), strict=True))
        reports = {r: a for r, a in answers.items() if a is not None}
        now = self.clock()
        for replica in ids:
            if replica in reports:
                self.last_answer[replica] = now
                self.alerts.clear("replica_unreachable", shard.id, replica)
            elif now - self.last_answer[replica] >= self.settings.unreachable_after:
                silent = now - self.last_answer[replica]
                self.alerts.raise_alert(
                    Alert("replica_unreachable", shard.id, replica, None, {}, f"no answer for {silent:.1f}s")
                )
        self._check_progress(shard, answers, now)
        self._check_faults(shard, reports)
        wrong_code = self._check_code(shard, reports)
        size, voters = group_voters(shard, reports)
        verdict = judge(reports, size, voters)
        for replica, (index, digests) in verdict.divergent.items():
            if replica in wrong_code:
                continue
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
        if verdict.no_majority is not None:
            index, digests = verdict.no_majority
            message = f"no majority of shard {shard.id} agrees at log index {index}"
            self.alerts.raise_alert(Alert("no_majority", shard.id, None, index, digests, message))
        elif verdict.agreeing:
            self.alerts.clear("no_majority", shard.id, None)
        for replica in ids:
            if any(self.alerts.is_active(kind, shard.id, replica) for kind in FLAGGING):
                self.flagged.add(replica)
            else:
                self.flagged.discard(replica)

    def _check_progress(self, shard: ShardConfig, answers: dict[str, dict[str, Any] | None], now: float) -> None:
        progress = self.watch.observe(shard.id, answers, now)
        for replica, report in answers.items():
            if report is None:
                continue  # silence is replica_unreachable's; a stall alert stays as it was
            lag = progress.stalled.get(replica)
            if lag is None:
                self.alerts.clear("apply_stalled", shard.id, replica)
                continue
            message = (
                f"replica {replica} has not applied log index {lag.target} in the {now - lag.since:.1f}s "
                f"since it reported it committed (applied up to {lag.applied}, "
                f"committed up to {report['commit_index']})"
            )
            self.alerts.raise_alert(Alert("apply_stalled", shard.id, replica, lag.applied, {}, message))
        if progress.leaderless_for is None:
            self.alerts.clear("no_leader", shard.id, None)
            return
        seen = "; ".join(
            f"{r}: no answer" if a is None else f"{r}: {a['role']} in term {a['term']}" for r, a in answers.items()
        )
        message = f"shard {shard.id} has had no leader for {progress.leaderless_for:.1f}s ({seen})"
        self.alerts.raise_alert(Alert("no_leader", shard.id, None, None, {}, message))

    def _check_faults(self, shard: ShardConfig, reports: dict[str, dict[str, Any]]) -> None:
        for replica, report in reports.items():
            fault = report["fault"]
            for kind in REPLICA_FAULTS:
                if fault is not None and fault["kind"] == kind:
                    message = f"replica {replica}: {fault['message']}"
                    self.alerts.raise_alert(Alert(kind, shard.id, replica, report["applied_index"], {}, message))
                else:
                    self.alerts.clear(kind, shard.id, replica)

    def _check_code(self, shard: ShardConfig, reports: dict[str, dict[str, Any]]) -> set[str]:
        wrong = set()
        for replica, report in reports.items():
            fingerprint = report["fingerprint"]
            if fingerprint["ok"]:
                self.alerts.clear("code_mismatch", shard.id, replica)
                continue
            wrong.add(replica)
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
