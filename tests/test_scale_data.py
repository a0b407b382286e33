"""The pure parts of ``bench.scale_data``: generated users, rates per block, /proc parsing, leader changes,
snapshot sightings and the targets table."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from bench.scale_data import (
    HEADER,
    ClusterSample,
    LeaderChange,
    SnapshotLog,
    SnapshotWrite,
    block_rates,
    caused_by_snapshot,
    format_verdicts,
    leader_changes,
    log_lines,
    longest_silence,
    parse_vm_rss,
    user_rows,
    verdicts,
    write_chunks,
)
from examples.people.app import User


def test_user_rows_are_deterministic_with_unique_consecutive_ids() -> None:
    rows = list(user_rows(500, 1000))
    assert rows == list(user_rows(500, 1000))
    assert [row[0] for row in rows] == list(range(500, 1500))
    assert rows != list(user_rows(500, 1000, seed=1))


def test_user_rows_are_valid_users_of_the_example_app() -> None:
    for row in user_rows(1, 50):
        user = User.from_text({name: str(value) for name, value in zip(HEADER, row, strict=True)})
        assert user["id"] == row[0]


def test_write_chunks_splits_the_rows_into_files_with_a_header(tmp_path: Path) -> None:
    chunks = write_chunks(tmp_path, 100, 25, 10)
    assert [rows for _, rows in chunks] == [10, 10, 5]
    read: list[list[str]] = []
    for path, _ in chunks:
        with open(path, newline="", encoding="utf-8") as source:
            lines = list(csv.reader(source))
        assert lines[0] == HEADER
        read += lines[1:]
    assert read == [[str(v) for v in row] for row in user_rows(100, 25)]


def test_block_rates_split_at_the_chunk_that_completes_each_block() -> None:
    # chunks of 10 documents finishing 1 s apart, started at t=0; blocks of 20: 20 docs/2 s, 20 docs/2 s, 10 docs/1 s
    done = [(float(t), 10) for t in (3, 1, 2, 4, 5)]  # in any order
    assert block_rates(done, 0.0, 20) == [(20, 10.0), (20, 10.0), (10, 10.0)]
    assert block_rates([(4.0, 10)], 0.0, 100) == [(10, 2.5)]
    assert block_rates([], 0.0, 100) == []


def test_parse_vm_rss_reads_kib_and_rejects_a_text_without_it() -> None:
    assert parse_vm_rss("Name:\tpython3\nVmPeak:\t  9 kB\nVmRSS:\t   61234 kB\n") == 61234
    with pytest.raises(ValueError):
        parse_vm_rss("Name:\tpython3\n")


def sample(at: float, phase: str = "load", **leaders: tuple[str | None, int | None]) -> ClusterSample:
    return ClusterSample(at, phase, dict(leaders), {})


def test_leader_changes_count_a_new_leader_or_term_but_not_a_leaderless_gap() -> None:
    samples = [
        sample(1, s0=("s0r0", 2), s1=("s1r0", 2)),
        sample(2, s0=(None, None), s1=("s1r0", 2)),
        sample(3, s0=("s0r0", 2), s1=("s1r0", 2)),  # a gap with no leader is no change by itself
        sample(4, s0=("s0r1", 3), s1=("s1r0", 2)),
        sample(5, "restart all", s0=("s0r1", 3), s1=("s1r0", 4)),  # same leader, new term: an election
    ]
    assert leader_changes(samples) == [
        LeaderChange(4, "load", "s0", "s0r0", "s0r1", 3),
        LeaderChange(5, "restart all", "s1", "s1r0", "s1r0", 4),
    ]


def test_snapshot_log_times_a_write_from_the_first_sight_of_its_temporary_file() -> None:
    log = SnapshotLog()
    log.see("s0r0", "load", 10.0, writing=False, mtime=None, size=0)  # first look: no snapshot yet
    log.see("s0r0", "load", 11.0, writing=True, mtime=None, size=0)
    log.see("s0r0", "load", 11.5, writing=True, mtime=None, size=0)
    log.see("s0r0", "load", 12.0, writing=False, mtime=11.8, size=500)
    log.see("s0r0", "load", 13.0, writing=False, mtime=11.8, size=500)  # unchanged: no new write
    assert log.writes == [SnapshotWrite("s0r0", "load", 11.0, 11.8, 500)]
    assert log.writes[0].seconds == pytest.approx(0.8)
    assert log.written_since("s0r0", 11.0) and not log.written_since("s0r0", 12.0)


def test_snapshot_log_ignores_the_snapshot_it_finds_and_counts_a_write_too_quick_to_see() -> None:
    log = SnapshotLog()
    log.see("s0r0", "start", 1.0, writing=False, mtime=0.5, size=10)
    log.see("s0r0", "load", 2.0, writing=False, mtime=1.7, size=20)
    assert log.writes == [SnapshotWrite("s0r0", "load", 1.7, 1.7, 20)]


def test_a_leader_change_is_blamed_on_a_snapshot_of_its_own_shard_near_it() -> None:
    writes = [SnapshotWrite("s0r0", "load", 100.0, 102.0, 1)]
    shard_of = {"s0r0": "s0", "s1r0": "s1"}
    assert caused_by_snapshot(LeaderChange(103.0, "load", "s0", "s0r0", "s0r1", 3), writes, shard_of, 1.5)
    assert not caused_by_snapshot(LeaderChange(104.0, "load", "s0", "s0r0", "s0r1", 3), writes, shard_of, 1.5)
    assert not caused_by_snapshot(LeaderChange(101.0, "load", "s1", "s1r0", "s1r1", 3), writes, shard_of, 1.5)


def report(rate: float, p50_1k: float, p50_n: float, changes: int, restart_s: float | None) -> dict[str, Any]:
    restart = {"to_serving_s": restart_s}
    return {
        "load": {"docs_per_s": rate},
        "leader_changes": [{}] * changes,
        "leader_changes_from_snapshots": changes,
        "snapshots": [{}],
        "restart_one": restart,
        "restart_all": restart,
        "reads": {"1k": {"p50_ms": p50_1k}, "n": {"p50_ms": p50_n}},
    }


def test_verdicts_pass_at_the_targets_and_miss_beyond_them() -> None:
    assert [v.met for v in verdicts(report(10_000, 10.0, 12.0, 0, 30.0))] == [True] * 5
    assert [v.met for v in verdicts(report(9_999, 10.0, 12.1, 1, 30.1))] == [False] * 5
    assert [v.met for v in verdicts(report(9_999, 10.0, 12.1, 1, None))][2:4] == [False, False]


def test_format_verdicts_prints_pass_miss_and_not_measured() -> None:
    rows = verdicts({**report(12_000, 10.0, 20.0, 0, 5.0), "snapshots": []})
    text = format_verdicts(rows)
    assert "PASS" in text.splitlines()[1] and "n/a" in text.splitlines()[2] and "MISS" in text.splitlines()[-1]


def test_longest_silence_is_the_largest_follower_age_in_each_phase() -> None:
    samples = [
        ClusterSample(1, "load", {}, {"s0r1": 0.05, "s1r2": 0.9}),
        ClusterSample(2, "load", {}, {"s0r1": 0.4}),
        ClusterSample(3, "restart one", {}, {}),
    ]
    assert longest_silence(samples) == {"load": 0.9, "restart one": 0.0}


def test_log_lines_counts_matching_lines_per_process_log(tmp_path: Path) -> None:
    (tmp_path / "s0r0.log").write_text("start\nno snapshot before stopping: x\nno snapshot before stopping: y\n")
    (tmp_path / "s0r1.log").write_text("nothing here\n")
    assert log_lines(tmp_path, "no snapshot before stopping") == {"s0r0": 2}
