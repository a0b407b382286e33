"""docraft's journal and its PySyncObj hooks, without a cluster."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.journal import FileJournal
from pysyncobj.node import TCPNode

from consensus.journal import DocraftJournal
from consensus.raft_member import HOOKS, PySyncObjMismatch, RaftMember, RaftTimings, check_pysyncobj
from consensus.replica import Replica
from consensus.state_machine import StateMachine
from examples.people import app as people
from models.errors import OutcomeUnknown
from query.app import load_app
from tests.harness import free_ports, wait_for


def entries(first: int, last: int, term: int = 1) -> list[tuple[bytes, int, int]]:
    return [(f"command {i}".encode(), i, term) for i in range(first, last + 1)]


def journal_with(path: Path, items: list[tuple[bytes, int, int]], fsync: bool = False) -> DocraftJournal:
    journal = DocraftJournal(str(path), fsync=fsync)
    for item in items:
        journal.add(*item)
    return journal


@pytest.mark.parametrize("fsync", [False, True])
def test_compaction_keeps_the_entries_after_the_cut_and_survives_reopening(tmp_path: Path, fsync: bool) -> None:
    path = tmp_path / "raft.journal"
    journal = journal_with(path, entries(1, 100), fsync)
    journal.setCurrentTerm(3, "someone")
    journal.deleteEntriesTo(40)
    assert [e[1] for e in journal] == list(range(41, 101))
    journal.add(b"after", 101, 1)
    journal._destroy()
    reopened = DocraftJournal(str(path))
    assert [e[1] for e in reopened] == list(range(41, 102))
    assert reopened.getCurrentTerm() == 3 and reopened.getVotedForNodeId() == "someone"
    assert reopened.acked_at_open == 101
    assert not list(tmp_path.glob("*.compacting*"))


def test_the_acknowledged_index_follows_appends_and_a_leaders_truncation_but_not_clearing(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "raft.journal", entries(1, 10))
    assert journal.acked_index == 10
    journal.deleteEntriesFrom(7)  # a leader replaces a conflicting tail: those were never committed
    assert journal.acked_index == 7
    journal.clear()  # clearing (snapshot install) is not the replica forgetting what it acknowledged
    assert journal.acked_index == 7


def test_a_journal_that_lost_entries_remembers_what_was_acknowledged_until_caught_up(tmp_path: Path) -> None:
    path = tmp_path / "raft.journal"
    journal_with(path, entries(1, 50))._destroy()
    lost = FileJournal(str(path))  # the disk loses the tail, behind docraft's back
    lost.deleteEntriesFrom(20)
    lost._destroy()
    journal = DocraftJournal(str(path))
    assert journal.last_index == 20 and journal.acked_at_open == 50
    journal.add(b"new", 21, 2)
    assert journal.acked_index == 50  # a second restart must still see the loss
    journal.caught_up()
    journal.add(b"new", 22, 2)
    assert journal.acked_index == 22


def test_trimming_to_a_snapshot_keeps_every_entry_after_it(tmp_path: Path) -> None:
    # PySyncObj keeps a journal on start only if it begins with the snapshot's two anchor entries;
    # a replica that snapshotted and stopped before compacting holds them further in.
    items = entries(1, 30)
    journal = journal_with(tmp_path / "raft.journal", items)
    assert journal.trim_to_snapshot(items[19], items[20])
    assert journal[0] == items[19] and journal[1] == items[20] and journal.last_index == 30


def test_trimming_refuses_a_journal_that_does_not_hold_the_anchors(tmp_path: Path) -> None:
    journal = journal_with(tmp_path / "raft.journal", entries(1, 30))
    other_term = (b"command 21", 21, 9)
    assert not journal.trim_to_snapshot(entries(20, 20)[0], other_term)
    assert not journal.trim_to_snapshot(*entries(40, 41))
    assert journal.last_index == 30 and journal[0][1] == 1


def test_start_refuses_another_pysyncobj_release() -> None:
    with pytest.raises(PySyncObjMismatch, match=r"0\.3\.17"):
        check_pysyncobj("0.3.18")
    check_pysyncobj()


def test_every_hooked_name_exists_in_the_installed_pysyncobj() -> None:
    from pysyncobj import SyncObj

    for name in HOOKS["SyncObj"]:
        assert callable(getattr(SyncObj, name, None)), name


@pytest.fixture
def lone_replica(tmp_path: Path) -> Any:
    """A one-member group in this process: it elects itself at once."""
    (port,) = free_ports(1)
    state = StateMachine(load_app(people.__name__))
    replica = Replica(f"127.0.0.1:{port}", [], state, tmp_path, "x" * 32, RaftTimings())
    yield replica
    replica.destroy_synchronous()


def test_a_successful_ack_never_moves_a_followers_next_index_backwards(lone_replica: Replica) -> None:
    wait_for(lone_replica._isLeader, 10, "the lone replica leading")
    follower = TCPNode("127.0.0.1:1")
    lone_replica._SyncObj__raftNextIndex[follower] = 10
    lone_replica._SyncObj__raftMatchIndex[follower] = 0
    lone_replica._SyncObj__lastResponseTime[follower] = time.monotonic()
    ack = {"type": "next_node_idx", "next_node_idx": 5, "success": True, "reset": False}
    lone_replica._SyncObj__onMessageReceived(follower, ack)
    assert lone_replica._SyncObj__raftMatchIndex[follower] == 4  # PySyncObj took the ack...
    assert lone_replica._SyncObj__raftNextIndex[follower] == 10  # ...and the pipeline stayed where it was
    reset = {"type": "next_node_idx", "next_node_idx": 3, "success": False, "reset": True}
    lone_replica._SyncObj__onMessageReceived(follower, reset)
    assert lone_replica._SyncObj__raftNextIndex[follower] == 3  # a follower's reset still rewinds it


def test_a_write_whose_raft_callback_never_comes_ends_as_outcome_unknown(lone_replica: Replica) -> None:
    # PySyncObj drops the callback of an entry a snapshot install skips; 46377ff then waited forever.
    wait_for(lone_replica._isLeader, 10, "the lone replica leading")
    lone_replica.apply_command = lambda raw, callback: None  # type: ignore[method-assign]

    async def write() -> BaseException | None:
        future = lone_replica.submit({"type": "noop"}, timeout=0.2)
        try:
            await asyncio.wait_for(future, 5)
        except BaseException as exc:
            return exc
        return None

    assert isinstance(asyncio.run(write()), OutcomeUnknown)


def conflicting(terms: list[int], commit: int, tmp_path: Path) -> RaftMember:
    """A member (not started) whose journal holds one entry per term in ``terms``, from index 1."""
    member = RaftMember.__new__(RaftMember)
    member.journal = journal_with(tmp_path / "raft.journal", [(b"x", i, t) for i, t in enumerate(terms, 1)])
    member._SyncObj__raftCommitIndex = commit
    return member


def test_a_follower_names_the_start_of_its_conflicting_term(tmp_path: Path) -> None:
    # Raft 5.3's optimisation: the leader skips a whole divergent term per round trip, not one entry.
    member = conflicting([1, 1, 2, 2, 2, 2, 3, 3], commit=2, tmp_path=tmp_path)
    assert member._first_index_of_conflict({"prevLogIdx": 8, "prevLogTerm": 4}) == 7
    assert member._first_index_of_conflict({"prevLogIdx": 6, "prevLogTerm": 5}) == 3
    assert member._first_index_of_conflict({"prevLogIdx": 6, "prevLogTerm": 2}) is None  # no conflict
    assert member._first_index_of_conflict({"prevLogIdx": 9, "prevLogTerm": 3}) is None  # beyond the log
    assert member._first_index_of_conflict({"prevLogIdx": 2, "prevLogTerm": 9}) == 3  # never below the commit
