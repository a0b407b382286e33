"""``GET /metrics``: each process's Prometheus metrics (``node.metrics``, ``node.collectors``).

Units drive the recorders and collectors on fakes; a dispatcher with fake shards
is scraped after requests; a live cluster's dispatcher and replicas are scraped
after writes and their numbers checked against the status routes.
"""

from __future__ import annotations

import re
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from tornado.testing import AsyncHTTPTestCase

from consensus.raft_stats import RaftStats
from node.alerts import KINDS, Alert, AlertBook
from node.collectors import AlertsCollector, MovesCollector, RaftCollector
from node.launcher import Layout
from node.metrics import ProcessMetrics, histogram
from node.servers import dispatcher
from tests.harness import Cluster, http, running, wait_for
from tests.test_handlers import APP, FakeShards, two_shard_config

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, Metric], Samples]:
    """Families by name, and every sample's value by (sample name, labels)."""
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = {(s.name, frozenset(s.labels.items())): s.value for f in families.values() for s in f.samples}
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of the one sample ``name`` whose labels include ``labels``; 0 if there is none (yet)."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} samples"
    return found[0] if found else 0.0


def scrape(collector: Any) -> tuple[dict[str, Metric], Samples]:
    """What a scrape of one collector alone shows, through the text format."""
    metrics = ProcessMetrics({"replica": "r"})
    metrics.register(collector)
    body, _ = metrics.exposition(None)
    return parse(body.decode())


# -- units ------------------------------------------------------------------------------------


def test_the_readmes_scrape_config_targets_every_process_of_docraft_up_at_its_http_address() -> None:
    section = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8").split("## Metrics")[1]
    targets = re.findall(r'"(127\.0\.0\.1:\d+)"', section.split("```yaml")[1].split("```")[0])
    cluster = tomllib.loads(Layout().render("examples.people"))  # docraft up's defaults
    replicas = [replica for shard in cluster["shards"] for replica in shard["replicas"]]
    assert sorted(targets) == sorted([d["http"] for d in cluster["dispatchers"]] + [r["http"] for r in replicas])


def test_a_leader_change_is_counted_once_per_new_leader() -> None:
    stats = RaftStats()
    for leader in [None, "a:1", "a:1", None, "a:1", "b:2", None, "a:1"]:
        stats.saw_leader(leader)
    assert stats.leader_changes == 3  # a, b, a again; a spell without a leader is no change


def test_durations_make_a_cumulative_histogram() -> None:
    stats = RaftStats()
    for seconds in (0.003, 0.2, 0.2, 0.25, 100.0):
        stats.snapshot_took(seconds)
    name = "docraft_raft_snapshot_duration_seconds"
    family = histogram(name, "snapshots", [], [((), stats.snapshots)])
    _, samples = scrape(type("One", (), {"collect": lambda self: [family]})())
    assert value(samples, f"{name}_bucket", le="0.005") == 1
    assert value(samples, f"{name}_bucket", le="0.25") == 4  # a bound holds what equals it
    assert value(samples, f"{name}_bucket", le="30.0") == 4
    assert value(samples, f"{name}_bucket", le="+Inf") == 5 == value(samples, f"{name}_count")
    assert value(samples, f"{name}_sum") == pytest.approx(100.653)


def test_every_sample_carries_the_process_identity_and_requests_are_counted() -> None:
    metrics = ProcessMetrics({"shard": "s1", "replica": "s1r2"})
    metrics.record_request("insert_user", "POST", 200, 0.002)
    metrics.record_request("insert_user", "POST", 200, 0.3)
    metrics.record_request("/{endpoint}", "BREW", 405, 0.001)  # a made-up method creates no series of its own
    metrics.record_call("/_shard/write", two_shard_config().replica("s0r1"), 599, 1.5)
    body, content_type = metrics.exposition(None)
    _, samples = parse(body.decode())
    assert content_type.startswith("text/plain")
    assert value(samples, "docraft_http_requests_total", endpoint="insert_user", method="POST", status="200") == 2
    assert value(samples, "docraft_http_requests_total", method="other", status="405") == 1
    insert = {"endpoint": "insert_user", "method": "POST"}
    assert value(samples, "docraft_http_request_duration_seconds_bucket", le="0.0025", **insert) == 1
    assert value(samples, "docraft_http_request_duration_seconds_count", **insert) == 2
    call = {"call": "/_shard/write", "to_shard": "s0", "to_replica": "s0r1", "status": "599"}
    assert value(samples, "docraft_internal_call_duration_seconds_count", **call) == 1
    assert not any(name.endswith("_created") for name, _ in samples)
    for (name, labels), _ in samples.items():
        assert {("shard", "s1"), ("replica", "s1r2")} <= labels, name


def test_active_alerts_are_counted_by_kind(caplog: pytest.LogCaptureFixture) -> None:
    book = AlertBook()
    with caplog.at_level("CRITICAL", logger="docraft.alerts"):  # raising an alert logs it; expected here
        book.raise_alert(Alert("divergence", "s0", "s0r1", 7, {}, "differs"))
        book.raise_alert(Alert("divergence", "s1", "s1r0", 9, {}, "differs"))
        book.raise_alert(Alert("no_leader", "s1", None, None, {}, "none"))
        book.clear("no_leader", "s1", None)
    families, samples = scrape(AlertsCollector(book))
    assert {s.labels["kind"] for s in families["docraft_alerts_active"].samples} == set(KINDS)
    assert value(samples, "docraft_alerts_active", kind="divergence") == 2
    assert value(samples, "docraft_alerts_active", kind="no_leader") == 0  # cleared


class FakeView:
    """A router's view holding the groups' slot reports: one move in progress, one committed."""

    reports: dict[str, dict[str, Any]] = {  # noqa: RUF012 - read only
        "s0": {"moves": [{"id": "m1", "role": "source", "state": "frozen"}, {"id": "m0", "role": "source"}]},
        "s1": {"moves": [{"id": "m1", "role": "target", "state": "importing"}]},
        "s2": {"moves": [{"id": "m0", "role": "target", "state": "committed"}]},
    }


def test_moves_in_progress_leave_out_finished_ones() -> None:
    _, samples = scrape(MovesCollector(FakeView()))  # type: ignore[arg-type]
    assert value(samples, "docraft_slot_moves_in_progress") == 1


class FakeJournal(list[bytes]):
    path = "/nonexistent/raft.journal"


class FakeReplica:
    """A leader at log index 10 whose followers matched 7 (s0r1) and 12 (an address the file lacks)."""

    def __init__(self, data_dir: Path) -> None:
        self.stats = RaftStats()
        self.journal = FakeJournal([b"x"] * 4)
        self.data_dir = data_dir

    def status(self) -> dict[str, Any]:
        return {
            "role": "leader",
            "term": 3,
            "commit_index": 9,
            "applied_index": 8,
            "last_index": 10,
            "match_index": {"127.0.0.1:7001": 7, "10.0.0.9:7000": 12},
            "last_response_age": {"127.0.0.1:7001": 0.25, "10.0.0.9:7000": 0.5},
        }


def test_a_leader_reports_each_followers_lag_by_replica_id(tmp_path: Path) -> None:
    (tmp_path / "snapshot.json").write_bytes(b"{}" * 10)
    service = type("Service", (), {"replica": FakeReplica(tmp_path)})()
    _, samples = scrape(RaftCollector(service, {"127.0.0.1:7001": "s0r1"}))
    assert value(samples, "docraft_raft_follower_lag_entries", follower="s0r1") == 3
    assert value(samples, "docraft_raft_follower_lag_entries", follower="10.0.0.9:7000") == 0  # ahead: no lag
    assert value(samples, "docraft_raft_follower_last_response_seconds", follower="s0r1") == 0.25
    assert value(samples, "docraft_raft_role", role="leader") == 1
    assert value(samples, "docraft_raft_role", role="follower") == 0
    assert (value(samples, "docraft_raft_term"), value(samples, "docraft_raft_applied_index")) == (3, 8)
    assert value(samples, "docraft_raft_log_entries") == 4
    assert value(samples, "docraft_raft_log_bytes") == 0  # no journal file
    assert value(samples, "docraft_raft_snapshot_bytes") == 20


# -- a dispatcher on fake shards ----------------------------------------------------------------


class DispatcherMetricsTest(AsyncHTTPTestCase):
    def get_app(self) -> Any:
        config = two_shard_config()
        return dispatcher(config, APP, FakeShards(config, APP)).application  # type: ignore[arg-type]

    def scrape(self) -> Samples:
        response = self.fetch("/metrics")
        assert response.code == 200 and response.headers["Content-Type"].startswith("text/plain")
        return parse(response.body.decode())[1]

    def test_requests_are_counted_by_endpoint_name_method_and_status(self) -> None:
        for n in range(3):
            assert self.fetch(f"/insert_user?id={n}&first_name=A&last_name=B&country=C").code == 200
        assert self.fetch("/get_user?id=1").code == 200
        assert self.fetch("/made_up_name_1").code == 404
        assert self.fetch("/made_up_name_2").code == 404
        assert self.fetch("/_admin/cluster", headers={"Authorization": "Bearer " + "x" * 43}).code == 401
        assert self.fetch("/_admin/cluster", headers={"X-Docraft-Signature": "v1 nonsense"}).code == 401
        samples = self.scrape()
        requests = "docraft_http_requests_total"
        assert value(samples, requests, endpoint="insert_user", method="GET", status="200", dispatcher="d0") == 3
        assert value(samples, requests, endpoint="get_user", method="GET", status="200") == 1
        assert value(samples, requests, endpoint="/{endpoint}", status="404") == 2  # not one series per name
        assert value(samples, requests, endpoint="/_admin/cluster", status="401") == 2
        assert value(samples, "docraft_http_request_duration_seconds_count", endpoint="insert_user") == 3
        assert value(samples, "docraft_auth_refusals_total", code="unauthorized") == 2
        assert value(samples, "docraft_auth_refusals_total", code="forbidden") == 0
        assert value(samples, "docraft_signature_refusals_total", reason="missing") == 1
        assert value(samples, "docraft_alerts_active", kind="divergence") == 0


# -- a live cluster -------------------------------------------------------------------------------


def scrape_url(base: str) -> tuple[dict[str, Metric], Samples]:
    """``GET base/metrics`` anonymously (the test cluster grants ``status``), parsed."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(response.read().decode())


def insert_user(cluster: Cluster, user_id: int) -> None:
    user = {"id": user_id, "first_name": "Ada", "last_name": "L", "country": "UK"}
    code, body = http("POST", f"{cluster.url}/insert_user", user)
    assert code == 200, body


@pytest.mark.cluster
def test_a_live_cluster_reports_requests_raft_progress_and_documents(tmp_path: Path) -> None:
    # Compaction after a few entries, so replicas write snapshots while the test writes.
    with running(Cluster(tmp_path, shards=1, replicas=3, raft={"compaction_min_entries": 5})) as cluster:
        requests = ("docraft_http_requests_total", {"endpoint": "insert_user", "method": "POST", "status": "200"})
        before = value(scrape_url(cluster.url)[1], requests[0], **requests[1])
        writes = 12
        for n in range(writes):
            insert_user(cluster, 500 + n)
        families, samples = scrape_url(cluster.url)
        assert value(samples, requests[0], **requests[1]) == before + writes
        assert value(samples, "docraft_http_request_duration_seconds_count", endpoint="insert_user") >= writes
        assert value(samples, "docraft_internal_call_duration_seconds_count", call="/_shard/write", status="200") > 0
        assert {f"docraft_alerts_active{{kind={k}}}" for k in KINDS} == {
            f"docraft_alerts_active{{kind={s.labels['kind']}}}" for s in families["docraft_alerts_active"].samples
        }
        assert value(samples, "docraft_slot_moves_in_progress", dispatcher="d0") == 0

        leader = cluster.leader_of("s0")
        for replica in cluster.replica_ids("s0"):
            base = cluster.replica_url(replica)

            def applied_all(base: str = base) -> Samples | None:
                samples = scrape_url(base)[1]
                return samples if value(samples, "docraft_documents", collection="User") == writes else None

            samples = wait_for(applied_all, 10, f"{replica} to report {writes} users")
            assert value(samples, "docraft_documents", collection="Order", shard="s0", replica=replica) == 0
            low = cluster.shard_status(replica)["applied_index"]
            scraped = value(scrape_url(base)[1], "docraft_raft_applied_index")
            high = cluster.shard_status(replica)["applied_index"]
            assert low <= scraped <= high
            assert value(samples, "docraft_raft_term") >= 1
            assert value(samples, "docraft_raft_commit_index") >= value(samples, "docraft_raft_applied_index") > 0
            assert value(samples, "docraft_raft_leader_changes_total") >= 1
            assert value(samples, "docraft_raft_role", role="leader") == (1 if replica == leader else 0)
            assert value(samples, "docraft_raft_log_bytes") > 0
            assert value(samples, "docraft_raft_snapshot_duration_seconds_count") >= 1
            assert value(samples, "docraft_raft_snapshot_bytes") > 0

        followers = {r for r in cluster.replica_ids("s0") if r != leader}

        def caught_up() -> bool:
            lag = scrape_url(cluster.replica_url(leader))[0]["docraft_raft_follower_lag_entries"].samples
            return {s.labels["follower"] for s in lag} == followers and all(s.value == 0 for s in lag)

        wait_for(caught_up, 10, "the leader to report both followers caught up")
