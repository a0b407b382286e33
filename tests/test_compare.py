"""The pure parts of ``bench.compare``: /proc parsing, wrk report parsing, ratios and the table."""

from __future__ import annotations

import socket
import tomllib
from pathlib import Path

import pytest

from bench import direct
from bench.compare import Measured, format_table, format_value, ratio, table
from bench.ports import all_free, free_block
from bench.proc_cpu import TICKS_PER_SECOND, CpuTimes, cpu_times, machine_busy_s, parse_stat, spent
from bench.wrk_load import LoadResult, WrkFailed, parse_report
from consensus.slots import slot_of
from node.cluster_secret import new_secret
from node.config import parse_config, render_config

# Two groups of three replicas: replica n of shard s has Raft on 7800 + 10 * s + n and HTTP on 7900 + 10 * s + n.
LAYOUT = [
    (
        f"s{s}",
        [(f"s{s}r{n}", f"127.0.0.1:{7800 + 10 * s + n}", f"127.0.0.1:{7900 + 10 * s + n}", ".") for n in range(3)],
    )
    for s in range(2)
]


def stat_line(pid: int, name: str, ppid: int, utime: int, stime: int) -> str:
    # pid (comm) state ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt utime stime cutime ...
    return f"{pid} ({name}) S {ppid} 1 1 0 -1 4194560 100 0 0 0 {utime} {stime} 7 8 20 0 4 0 1234"


def fake_proc(root: Path, processes: list[tuple[int, int, int, int]]) -> Path:
    """A /proc with (pid, ppid, utime, stime) entries, a non-process entry and /proc/stat."""
    for pid, ppid, utime, stime in processes:
        (root / str(pid)).mkdir()
        (root / str(pid) / "stat").write_text(stat_line(pid, "python3", ppid, utime, stime))
    (root / "self").mkdir()
    (root / "stat").write_text("cpu  100 20 30 1000 50 5 5 10 0 0\ncpu0 50 10 15 500 25 2 3 5 0 0\n")
    return root


def test_parse_stat_counts_fields_after_a_name_with_spaces_and_parentheses() -> None:
    stat = parse_stat(stat_line(42, "a) b (c", 7, 3 * TICKS_PER_SECOND, TICKS_PER_SECOND))
    assert stat.ppid == 7
    assert stat.times == CpuTimes(3.0, 1.0)


def test_parse_stat_rejects_a_line_that_is_not_one() -> None:
    with pytest.raises(ValueError):
        parse_stat("42 (python3) S 1 2 3")


def test_cpu_times_follows_children_and_leaves_other_processes_out(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, [(10, 1, 100, 10), (11, 10, 50, 5), (12, 11, 1, 1), (20, 1, 999, 999)])
    found = cpu_times([10, 99], proc)  # 99 has exited
    assert sorted(found) == [10, 11, 12]
    assert found[11] == CpuTimes(50 / TICKS_PER_SECOND, 5 / TICKS_PER_SECOND)


def test_spent_subtracts_per_process_and_counts_new_ones_from_zero() -> None:
    before = {1: CpuTimes(1.0, 0.5), 2: CpuTimes(2.0, 1.0)}
    after = {1: CpuTimes(1.5, 1.0), 3: CpuTimes(0.25, 0.25)}  # 2 exited, 3 is new
    assert spent(before, after) == CpuTimes(0.75, 0.75)
    assert spent(before, after).system_share == 0.5
    assert CpuTimes().system_share == 0.0


def test_machine_busy_counts_every_state_but_idle_and_iowait(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path, [])
    assert machine_busy_s(proc) == pytest.approx((100 + 20 + 30 + 5 + 5 + 10) / TICKS_PER_SECOND)


REPORT = (
    'WRK_REPORT {"requests":1000,"duration_us":2000000,"connect_errors":0,"read_errors":1,"write_errors":0,'
    '"status_errors":100,"timeouts":2,"p50_us":1500,"p99_us":9000,"mean_us":2000.5}'
)


def test_parse_report_reads_the_report_line_among_wrk_output() -> None:
    result = parse_report(f"Running 2s test @ http://x\n{REPORT}\n", connections=32)
    assert (result.requests, result.seconds, result.p50_ms, result.p99_ms) == (1000, 2.0, 1.5, 9.0)
    assert result.error_count == 103
    assert result.ops_per_s == 450.0  # non-2xx answers are not operations


@pytest.mark.parametrize("output", ["Running 2s test\n", 'WRK_REPORT {"requests": 5}', "WRK_REPORT {not json"])
def test_parse_report_fails_without_a_whole_report(output: str) -> None:
    with pytest.raises(WrkFailed):
        parse_report(output, connections=1)


def measured(ops: int, p50_ms: float, cpu: CpuTimes) -> Measured:
    load = LoadResult(32, ops, 1.0, {"status_errors": 0}, p50_ms, p50_ms * 2, p50_ms)
    return Measured(load, cpu, cpu.total_s)


def test_table_divides_docraft_by_etcd_per_figure() -> None:
    docraft = {"write": measured(1000, 4.0, CpuTimes(1.5, 0.5)), "write_1c": measured(200, 4.0, CpuTimes(0.2, 0.2))}
    etcd = {"write": measured(4000, 1.0, CpuTimes(1.0, 1.0)), "write_1c": measured(900, 1.0, CpuTimes(0.1, 0.1))}
    lines = {line["figure"]: line for line in table({"docraft": docraft, "etcd": etcd}, 32)}
    assert lines["writes/s, 32 connections"]["ratio"] == 0.25
    assert lines["write p50 ms, 1 connection"]["ratio"] == 4.0
    assert lines["CPU ms per write, all processes, 32 conn."]["docraft"] == 2.0
    assert lines["CPU ms per write, all processes, 32 conn."]["ratio"] == 4.0


def test_table_without_etcd_shows_docraft_alone() -> None:
    docraft = {"write": measured(1000, 4.0, CpuTimes(1.0, 0.0))}
    lines = table({"docraft": docraft}, 8)
    write = next(line for line in lines if line["figure"] == "writes/s, 8 connections")
    assert (write["docraft"], write["etcd"], write["ratio"]) == (1000.0, None, None)
    shown = next(line for line in format_table(lines).splitlines() if line.startswith("writes/s"))
    assert shown.split()[-3:] == ["1,000", "—", "—"]


def test_values_and_ratios_format_per_metric() -> None:
    assert format_value(12345.6, "ops_per_s") == "12,346"
    assert format_value(0.4567, "system_share") == "46%"
    assert format_value(1.234, "p50_ms") == "1.23"
    assert format_value(None, "p50_ms") == "—"
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 2.0) is None


def test_free_block_gives_ports_that_can_be_bound_and_all_free_sees_a_taken_one() -> None:
    base = free_block([0, 1, 5])
    assert all_free([base, base + 1, base + 5])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        assert not all_free([taken.getsockname()[1]])


# -- a client that routes by itself (bench.direct) ----------------------------------------------------------


def test_direct_routes_send_each_key_to_the_leader_of_the_group_owning_its_slot() -> None:
    config = parse_config(
        tomllib.loads(render_config(new_secret(), "examples.people", LAYOUT, [("d0", "127.0.0.1:7899")])),
        Path("/tmp/cluster.toml"),
    )
    shards = [
        {"id": "s0", "leader": "s0r1", "slots": [[0, 8191]]},
        {"id": "s1", "leader": "s1r0", "slots": [[8192, 16383]]},
    ]
    found = direct.routes(config, shards)
    assert [(r.shard, r.url) for r in found] == [("s0", "http://127.0.0.1:7901"), ("s1", "http://127.0.0.1:7910")]
    keys = range(1, 200)
    first, second = direct.owned(found[0], keys), direct.owned(found[1], keys)
    assert sorted(first + second) == list(keys)
    assert all(slot_of(key) <= 8191 for key in first) and all(slot_of(key) > 8191 for key in second)
    assert direct.owned(found[0], keys, limit=3) == first[:3]
    with pytest.raises(RuntimeError):
        direct.routes(config, [{"id": "s0", "leader": None, "slots": [[0, 8191]]}])


def test_direct_runs_share_the_connections_and_combine_into_one_load() -> None:
    assert direct.split(32, 2) == [16, 16]
    assert direct.split(5, 2) == [3, 2]
    assert direct.split(1, 2) == [1, 1]
    a = LoadResult(16, 1000, 2.0, {"status_errors": 10, "timeouts": 1}, 3.0, 9.0, 4.0)
    b = LoadResult(16, 3000, 1.9, {"status_errors": 0, "timeouts": 2}, 2.0, 12.0, 2.0)
    both = direct.combine([a, b])
    assert (both.connections, both.requests, both.seconds) == (32, 4000, 2.0)
    assert both.errors == {"status_errors": 10, "timeouts": 3}
    assert (both.p50_ms, both.p99_ms, both.mean_ms) == (3.0, 12.0, 2.5)
    assert both.ops_per_s == 1995.0


def test_direct_key_files_refuse_to_be_empty(tmp_path: Path) -> None:
    written = direct.write_keys(tmp_path / "keys.txt", [5, 7])
    assert written.read_text(encoding="ascii") == "5\n7\n"
    with pytest.raises(ValueError):
        direct.write_keys(tmp_path / "none.txt", [])
