"""Metrics read from live state when ``/metrics`` is scraped, not counted on the request path.

Each collector is a prometheus_client custom collector (``collect()`` yields
metric families) over state its process keeps anyway: a replica's Raft status
and documents (``RaftCollector``, ``DocumentsCollector``), a dispatcher's
active alerts (``AlertsCollector``), the slot moves a router's view knows
(``MovesCollector``) and the refusals of a process's gate (``AuthCollector``).
Names and labels are listed in README's "Metrics" section. Scrapes run on the
process's event loop; the replica's state is read as its status route reads it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from consensus.replica import SNAPSHOT_FILE
from node.admin_ops import moves
from node.alerts import KINDS, AlertBook
from node.auth import Gate
from node.cluster_view import ClusterView
from node.config import ClusterConfig
from node.metrics import ProcessMetrics, histogram
from node.shard_service import ShardService

ROLES = ("leader", "follower", "candidate")
# Move states that end a move; any other is in progress.
FINISHED_MOVES = ("committed", "aborted")


class RaftCollector:
    """A replica's Raft member: term, indexes, role, leader changes, log and snapshot sizes and durations,
    and, on a leader, each follower's lag. ``followers`` names replicas by Raft address (an address
    it does not know is its own label)."""

    def __init__(self, service: ShardService, followers: Mapping[str, str]) -> None:
        self.service = service
        self.followers = dict(followers)

    def collect(self) -> Iterator[Metric]:
        replica = self.service.replica
        status = replica.status()
        yield _gauge("docraft_raft_term", "The Raft term this replica is in", status["term"])
        yield _gauge(
            "docraft_raft_commit_index", "The highest log index this replica knows committed", status["commit_index"]
        )
        yield _gauge(
            "docraft_raft_applied_index", "The highest log index this replica applied", status["applied_index"]
        )
        yield _gauge("docraft_raft_last_index", "The highest log index in this replica's log", status["last_index"])
        role = GaugeMetricFamily(
            "docraft_raft_role", "1 for this replica's Raft role, 0 for the others", labels=["role"]
        )
        for name in ROLES:
            role.add_metric([name], 1 if status["role"] == name else 0)
        yield role
        changes = replica.stats.leader_changes
        yield CounterMetricFamily("docraft_raft_leader_changes", "Leader changes this replica saw", value=changes)
        entries = len(replica.journal)
        yield _gauge("docraft_raft_log_entries", "Entries in this replica's Raft log (since its snapshot)", entries)
        journal = _file_size(Path(replica.journal.path))
        yield _gauge("docraft_raft_log_bytes", "Size of this replica's Raft journal file", journal)
        snapshot = _file_size(replica.data_dir / SNAPSHOT_FILE)
        yield _gauge("docraft_raft_snapshot_bytes", "Size of this replica's newest snapshot (0: none yet)", snapshot)
        yield histogram(
            "docraft_raft_snapshot_duration_seconds",
            "Time this replica took to write each snapshot",
            [],
            [((), replica.stats.snapshots)],
        )
        yield from self._lag(status)

    def _lag(self, status: Mapping[str, Any]) -> Iterator[Metric]:
        """On a leader: each voter's entries behind the leader's log, and seconds since it answered."""
        lag = GaugeMetricFamily(
            "docraft_raft_follower_lag_entries",
            "On a leader: entries a follower lacks of the leader's log (last index minus its match index)",
            labels=["follower"],
        )
        silent = GaugeMetricFamily(
            "docraft_raft_follower_last_response_seconds",
            "On a leader: seconds since a follower last answered it",
            labels=["follower"],
        )
        if status["role"] == "leader":
            for address, matched in sorted(status["match_index"].items()):
                lag.add_metric([self.followers.get(address, address)], max(status["last_index"] - matched, 0))
            for address, age in sorted(status["last_response_age"].items()):
                silent.add_metric([self.followers.get(address, address)], age)
        yield lag
        yield silent


class DocumentsCollector:
    """Documents this replica holds, per collection (model), as its state machine has applied them."""

    def __init__(self, service: ShardService) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        counts = self.service.replica.read_locally(lambda state: dict(state.document_count()))
        documents = GaugeMetricFamily(
            "docraft_documents", "Documents this replica holds, by collection", labels=["collection"]
        )
        for name, count in sorted(counts.items()):
            documents.add_metric([name], count)
        yield documents


class AlertsCollector:
    """A dispatcher's active integrity alerts, by kind (every kind, 0 when none is active)."""

    def __init__(self, alerts: AlertBook) -> None:
        self.alerts = alerts

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "docraft_alerts_active", "Integrity alerts active now, by kind (see /_admin/alerts)", labels=["kind"]
        )
        for kind in KINDS:
            active.add_metric([kind], sum(1 for alert in self.alerts.active.values() if alert.kind == kind))
        yield active


class MovesCollector:
    """Slot moves in progress, as this process's view of the groups' slot reports lists them."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        moving = [m for m in moves(self.view.reports) if m["state"] not in FINISHED_MOVES]
        yield _gauge(
            "docraft_slot_moves_in_progress",
            "Slot moves neither committed nor aborted, as the groups last reported them to this process",
            len(moving),
        )


class AuthCollector:
    """Requests a process's gate refused, by error code, and signatures it refused, by reason."""

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def collect(self) -> Iterator[Metric]:
        refusals = CounterMetricFamily(
            "docraft_auth_refusals",
            "Requests refused for their credentials: unauthorized (401) or forbidden (403)",
            labels=["code"],
        )
        for code, count in sorted(self.gate.refusals.items()):
            refusals.add_metric([code], count)
        yield refusals
        signatures = CounterMetricFamily(
            "docraft_signature_refusals",
            "Signed (cluster member) requests refused, by reason; each is also an unauthorized refusal",
            labels=["reason"],
        )
        for reason, count in sorted(self.gate.verifier.refused.items()):
            signatures.add_metric([reason], count)
        yield signatures


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _file_size(path: Path) -> int:
    """``path``'s size in bytes; 0 if it does not exist (yet)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def watch_replica(
    metrics: ProcessMetrics, service: ShardService, config: ClusterConfig, view: ClusterView, gate: Gate
) -> None:
    """Register a replica process's collectors with ``metrics``: Raft, documents, moves, refusals."""
    names = {r.raft: r.id for shard in config.shards for r in shard.replicas}
    for collector in (
        RaftCollector(service, names),
        DocumentsCollector(service),
        MovesCollector(view),
        AuthCollector(gate),
    ):
        metrics.register(collector)


def watch_dispatcher(metrics: ProcessMetrics, alerts: AlertBook, view: ClusterView, gate: Gate) -> None:
    """Register a dispatcher's collectors with ``metrics``: alerts, moves, refusals."""
    for collector in (AlertsCollector(alerts), MovesCollector(view), AuthCollector(gate)):
        metrics.register(collector)
