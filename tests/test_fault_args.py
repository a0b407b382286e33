"""``python -m bench.fault``'s arguments: which nemeses run by default."""

from __future__ import annotations

from bench.fault import parse_args
from bench.nemesis import NEMESES


def test_the_default_nemesis_runs_every_kind_but_reshard_on_one_shard() -> None:
    assert parse_args([]).nemesis == [kind for kind in NEMESES if kind != "reshard"]


def test_the_default_nemesis_runs_every_kind_on_two_shards() -> None:
    assert parse_args(["--shards", "2"]).nemesis == list(NEMESES)
