"""``docraft status``: ``/_admin/cluster`` printed for a person (``node.admin.render_status``)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from node.admin import render_status, status
from node.cluster_secret import new_secret
from node.config import parse_config, render_config

CLUSTER = {
    "epoch": 3,
    "shards": [
        {
            "id": "s0",
            "epoch": 3,
            "slots": [[0, 99], [200, 8191]],
            "slot_count": 8092,
            "documents": 41,
            "leader": "s0r0",
            "replicas": [
                {"id": "s0r0", "role": "leader", "mode": "voter", "applied_index": 90, "commit_index": 90,
                 "lag_entries": 0, "fault": None},
                {"id": "s0r3", "role": "follower", "mode": "learner", "applied_index": 12, "commit_index": 12,
                 "lag_entries": 78, "fault": None},
            ],
        },
        {"id": "s2", "epoch": None, "slots": [], "slot_count": 0, "documents": None, "leader": None,
         "replicas": [{"id": "s2r0", "role": "unreachable"}]},
    ],
    "moves": [{"id": "m7", "slots": [[100, 199]], "from": "s0", "to": "s2", "epoch": 4, "state": "frozen",
               "docs_total": 10, "docs_copied": 4}],
}  # fmt: skip


def test_status_shows_ranges_replicas_lag_and_moves() -> None:
    text = render_status(CLUSTER)
    lines = text.splitlines()
    assert lines[0] == "slot map epoch 3"
    assert "shard s0: 8092 slots (0-99, 200-8191), 41 documents, epoch 3, leader s0r0" in lines
    assert "shard s2: 0 slots (none), - documents, epoch -, leader -" in lines
    learner = next(line for line in lines if line.strip().startswith("s0r3"))
    assert learner.split() == ["s0r3", "follower", "learner", "12", "12", "78", "-"]
    move = next(line for line in lines if line.strip().startswith("m7"))
    assert move.split() == ["m7", "100-199", "s0", "s2", "frozen", "4/10", "4"]


def test_status_says_so_when_nothing_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shards = [("s0", [("s0r0", "127.0.0.1:1", "127.0.0.1:2", "d")])]
    text = render_config(new_secret(), "examples.people", shards, [("d0", "127.0.0.1:3")])
    config = parse_config(tomllib.loads(text), tmp_path / "cluster.toml")
    assert status(config, as_json=False) == 2
    assert "no dispatcher or replica" in capsys.readouterr().out
