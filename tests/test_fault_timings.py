"""Failover and catch-up timings per fault kind, and the targets they are held to."""

from __future__ import annotations

from typing import Any

import pytest

from bench.fault import record_fault_timings
from bench.nemesis import Fault, GroupStatus, has_applied
from bench.timings import Spread, Target, by_kind, new_leader, next_write, record_failovers, targets


def test_the_next_write_is_the_first_completed_among_those_invoked_after_the_fault() -> None:
    writes = [(0.5, 2.5), (1.2, 3.0), (1.1, 1.9), (4.0, 4.1)]
    assert next_write(writes, 1.0) == pytest.approx(0.9)  # the write invoked at 0.5 was already in flight
    assert next_write(writes, 3.0) == pytest.approx(1.1)
    assert next_write(writes, 5.0) is None


def fault(kind: str, start: float, leader: bool, catch_up: dict[str, float | None] | None = None) -> Fault:
    return Fault(kind, start, target="s0r0", leader=leader, catch_up=catch_up or {})


def test_failover_counts_leader_faults_and_next_write_the_others() -> None:
    faults = [
        fault("kill", 1.0, True, {"s0r0": 1.5}),
        fault("kill", 10.0, True, {"s0r0": None}),
        fault("kill", 20.0, False),
        fault("pause", 30.0, True),
    ]
    writes = [(1.1, 1.6), (10.0, 12.5), (20.0, 20.1), (30.5, 31.0)]
    elections = [(0.0, "s0r0", 1), (1.4, "s0r1", 2), (10.9, "s0r2", 3)]
    record_failovers(faults, writes, elections)
    timings = by_kind(faults)
    assert list(timings) == ["kill", "pause"]
    kill = timings["kill"]
    assert kill.failover.times == pytest.approx([0.6, 2.5])
    assert kill.next_write.times == pytest.approx([0.1])
    assert kill.election.times == pytest.approx([0.4, 0.9]) and kill.election.missing == 0
    assert kill.catch_up == Spread([1.5], missing=1)
    assert faults[2].elected is None  # not a leader fault
    assert timings["pause"].failover.times == [1.0] and timings["pause"].election == Spread([], missing=1)


def test_a_new_leader_is_one_seen_in_a_term_newer_than_any_seen_before_the_fault() -> None:
    elections = [(0.0, "s0r0", 1), (5.0, "s0r1", 2), (5.2, "s0r0", 3), (6.0, "s0r2", 2)]
    assert new_leader(elections, 4.0) == pytest.approx(1.0)
    # a replica first seen leading an older term after the fault does not count; term 3 does
    assert new_leader(elections, 5.1) == pytest.approx(0.1)
    assert new_leader(elections, 5.5) is None


def test_targets_fail_on_a_slow_or_missing_measurement_and_skip_what_did_not_run() -> None:
    faults = [fault("kill", 0.0, True, {"s0r1": 0.4}), fault("pause", 0.0, True), fault("lag", 0.0, False)]
    faults[0].failover, faults[1].failover, faults[2].failover = 1.0, 3.2, 0.1
    found = {t.name: t.passed for t in targets(by_kind(faults))}
    assert found == {
        "kill failover median": True,
        "kill failover max": True,
        "pause failover median": False,
        "pause failover max": False,
        "catch-up max (every healed replica)": True,
    }
    faults[0].failover = None  # no write came after this kill
    assert {t.name: t.passed for t in targets(by_kind(faults))}["kill failover median"] is False
    assert Target("nothing ran", 2.0, None).passed is None
    faults[2].catch_up = {"s0r2": 2.5}  # every kind's healed replicas count
    assert targets(by_kind(faults))[-1].passed is False


def test_the_leader_is_the_replica_leading_in_the_newest_term() -> None:
    replicas: dict[str, dict[str, Any]] = {
        "s0r0": {"role": "leader", "term": 3, "commit_index": 40, "applied_index": 40, "fault": None},
        "s0r1": {"role": "leader", "term": 4, "commit_index": 52, "applied_index": 50, "fault": None},
        "s0r2": {"role": "unreachable"},
    }
    status = GroupStatus.of(replicas)
    assert status.leader == "s0r1" and status.committed() == 52
    assert not status.caught_up("s0r0", 52) and status.caught_up("s0r0", 40)
    assert not status.caught_up("s0r2", 0)
    assert not has_applied({"applied_index": 60, "fault": {"kind": "entries_lost"}}, 52)


def test_a_fault_on_one_shard_is_timed_by_its_own_keys_writes_and_its_own_groups_leaders() -> None:
    on_s1 = Fault("kill", 10.0, target="s1r0", shard="s1", keys=[1, 2], leader=True)
    writes = [(0, 10.1, 10.2), (1, 10.0, 11.5), (2, 10.2, 12.0)]  # key 0, on s0, answers at once
    elections = [(0.0, "s0r0", 7), (0.0, "s1r0", 1), (10.5, "s0r1", 8), (10.8, "s1r1", 2)]
    record_fault_timings({"s0": ["s0r0", "s0r1"], "s1": ["s1r0", "s1r1"]}, [on_s1], writes, elections)
    assert on_s1.failover == pytest.approx(1.5)  # key 1's write; the one in flight at 10.0 counts from 10.0 on
    assert on_s1.elected == pytest.approx(0.8)  # s1's new term, not s0's election (whose terms are higher)
