"""Prometheus metrics of one process, served at ``GET /metrics``.

Each process (a dispatcher or a replica) has one ``ProcessMetrics``: a
``CollectorRegistry`` of its own, not prometheus_client's global one, so
several servers in one test process do not collide. Every sample it exposes
carries the process's identity labels (``shard`` and ``replica`` on a replica,
``dispatcher`` on a dispatcher).

Recording is on the request path, so it is one histogram observation per
request (``record_request``, from ``JSONHandler.on_finish``) and per internal
call (``record_call``, from ``ShardClient``) into plain lists
(``consensus.raft_stats.Durations``: a bisect and two additions, a tenth of
what prometheus_client's locked ``Counter`` and ``Histogram`` cost); the request
counter and the histograms are built from them when scraped. State the process
keeps anyway (Raft indexes, documents, alerts...) is read when scraped too, by
the collectors of ``node.collectors``. README's "Metrics" section lists every metric.

Used on the process's event loop: recording and scrapes both run there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from consensus.raft_stats import Durations
from node.config import ReplicaConfig
from node.handlers import JSONHandler

# Seconds: a request served from memory takes well under a millisecond, a write a Raft round, a
# scatter over every shard or a slow leader election seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A method outside these is counted as ``other``: a client must not create series at will.
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class ProcessMetrics:
    """One process's metrics registry, its request and internal call recorders, and its collectors.

    ``identity`` labels every sample this process exposes (``{"shard": "s0", "replica": "s0r1"}``).
    ``requests`` and ``calls`` hold the recorded durations by label values.
    """

    def __init__(self, identity: Mapping[str, str]) -> None:
        self.identity = dict(identity)
        self.registry = CollectorRegistry()
        self.requests: dict[tuple[str, str, str], Durations] = {}  # (endpoint, method, status)
        self.calls: dict[tuple[str, str, str, str], Durations] = {}  # (call, to_shard, to_replica, status)
        self.registry.register(_Traffic(self))

    def register(self, collector: Collector) -> None:
        """Add a collector read at every scrape (``node.collectors``)."""
        self.registry.register(collector)

    def record_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and how long it took."""
        key = (endpoint, method if method in METHODS else "other", str(status))
        durations = self.requests.get(key)
        if durations is None:
            durations = self.requests[key] = Durations(LATENCY_BUCKETS)
        durations.observe(seconds)

    def record_call(self, call: str, replica: ReplicaConfig, status: int, seconds: float) -> None:
        """Count one HTTP call to ``replica``'s route ``call`` answered with ``status`` (599: no answer)."""
        key = (call, replica.shard, replica.id, str(status))
        durations = self.calls.get(key)
        if durations is None:
            durations = self.calls[key] = Durations(LATENCY_BUCKETS)
        durations.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        """Every metric of the registry, each sample with this process's identity labels added."""
        for family in self.registry.collect():
            family.samples = [s._replace(labels={**self.identity, **s.labels}) for s in family.samples]
            yield family

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape's body and its content type, in the format ``accept`` asks for (Prometheus text by
        default, OpenMetrics when asked)."""
        encode, content_type = choose_encoder(accept or "")
        return encode(self), content_type


class _Traffic:
    """The collector of what ``ProcessMetrics`` recorded: requests, their latency, internal calls."""

    def __init__(self, metrics: ProcessMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "docraft_http_requests",
            "HTTP requests answered, by endpoint (app endpoint name or route path), method and status",
            labels=["endpoint", "method", "status"],
        )
        by_route: dict[tuple[str, str], Durations] = {}
        for (endpoint, method, status), durations in sorted(self.metrics.requests.items()):
            requests.add_metric([endpoint, method, status], durations.count)
            by_route.setdefault((endpoint, method), Durations(LATENCY_BUCKETS)).add(durations)
        yield requests
        yield histogram(
            "docraft_http_request_duration_seconds",
            "Time from a request's arrival to its answer, by endpoint and method",
            ["endpoint", "method"],
            by_route.items(),
        )
        yield histogram(
            "docraft_internal_call_duration_seconds",
            "HTTP calls this process made to replicas (routers, the integrity monitor), by route called, "
            "replica called and HTTP status (599: no answer)",
            ["call", "to_shard", "to_replica", "status"],
            self.metrics.calls.items(),
        )


def histogram(
    name: str, documentation: str, labels: Sequence[str], series: Iterable[tuple[Sequence[str], Durations]]
) -> HistogramMetricFamily:
    """A Prometheus histogram (cumulative buckets): one series per (label values, ``Durations``) of ``series``."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, durations in sorted(series, key=lambda item: tuple(item[0])):
        bounds = [*map(floatToGoString, durations.bounds), "+Inf"]
        cumulative, buckets = 0, []
        for bound, count in zip(bounds, durations.counts, strict=True):
            cumulative += count
            buckets.append((bound, float(cumulative)))
        family.add_metric(list(values), buckets, durations.total)
    return family


class MetricsHandler(JSONHandler):
    """``GET /metrics``: this process's metrics for Prometheus."""

    def initialize(self, metrics: ProcessMetrics) -> None:
        self.metrics = metrics

    def get(self) -> None:
        body, content_type = self.metrics.exposition(self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)
