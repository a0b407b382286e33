"""A short ``bench.fuzz``: schemathesis against a real cluster's OpenAPI document, anonymously and as admin.

The benchmark run (``python -m bench.fuzz``) generates 5,000 cases or more;
this one a few hundred per credential, in well under a minute: no ``5xx``,
no answer the document does not promise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fuzz import fuzz
from node.admin import http_json
from node.users import add_user
from tests.harness import Cluster, wait_for


@pytest.mark.cluster
def test_schemathesis_finds_no_server_error_and_no_answer_off_the_document(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "cluster", shards=2, replicas=1).start()
    try:
        token = add_user(tmp_path / "cluster" / "cluster.toml", "admin", "admin")
        admin = {"Authorization": f"Bearer {token}"}
        dry_run = {"model": "User", "to": 1, "dry_run": True}
        wait_for(  # the processes re-read the users within a second or so
            lambda: http_json("POST", f"{cluster.url}/_admin/migrate", dry_run, headers=admin)[0] == 200,
            10,
            "the admin's token to be known",
        )
        runs = [
            fuzz(cluster.url, "anonymous", {}, cases=2, seed=7, folder=tmp_path),
            fuzz(cluster.url, "admin", admin, cases=2, seed=7, folder=tmp_path),
        ]
    finally:
        cluster.close()
    for run in runs:
        log = (tmp_path / f"schemathesis-{run.credentials}.log").read_text(errors="replace")
        assert run.ok, f"{run.line()}\n{log[-6000:]}"
        assert run.cases >= 300, run.line()
