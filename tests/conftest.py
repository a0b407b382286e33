from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import Cluster


@pytest.fixture
def cluster_factory(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[type[Cluster]]:
    """Start clusters with ``cluster_factory(...)``; all are stopped at teardown, pass or fail,
    and their logs are printed when the test failed."""
    started: list[Cluster] = []

    def make(shards: int = 2, replicas: int = 3, **options: Any) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(started)}", shards, replicas, **options)
        started.append(cluster)
        return cluster.start()

    yield make  # type: ignore[misc]
    failed = getattr(request.node, "rep_call", None)
    for cluster in started:
        if failed is not None and failed.failed:
            print(cluster.logs())
        cluster.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
