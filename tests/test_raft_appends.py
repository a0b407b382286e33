"""How a leader sends a write to its followers: one append per follower, at once (three members in this process)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import queue
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import FAIL_REASON
from pysyncobj.pipe_notifier import PipeNotifier

from consensus.raft_member import RaftTimings
from consensus.replica import Replica
from consensus.state_machine import StateMachine
from examples.people import app as people
from query.app import load_app
from tests.harness import free_ports, wait_for

# A heartbeat far longer than a write takes on loopback: a write that waited for one would show.
TIMINGS = RaftTimings(heartbeat=0.5, election_min=1.6, election_max=2.0, leader_fallback=3.0)
WRITES = 5
WINDOW = 0.1  # seconds from each write's start in which the leader's appends are counted; < heartbeat / 2


@pytest.fixture
def group(tmp_path: Path) -> Iterator[list[Replica]]:
    """Three voters on loopback in this process; stopped after the test."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(3)]
    members = []
    try:
        for n, address in enumerate(addresses):
            peers = [a for a in addresses if a != address]
            state = StateMachine(load_app(people.__name__))
            members.append(Replica(address, peers, state, tmp_path / f"r{n}", "x" * 32, TIMINGS))
        yield members
    finally:
        for member in members:
            member.destroy_synchronous()


def leader_of(group: list[Replica]) -> Replica:
    wait_for(lambda: any(m._isLeader() and m._ready_term == m._getTerm() for m in group), 20, "a ready leader")
    return next(m for m in group if m._isLeader())


def test_a_lone_write_commits_in_one_append_per_follower_without_waiting_for_a_heartbeat(group: list[Replica]) -> None:
    # PySyncObj's unbatched mode (d8220fd) sent each follower a second append after every apply, only to
    # carry the new commit index: twice the Raft messages per write. Its batched mode alone waited for
    # the heartbeat. Each write here must take one append per follower and far less than a heartbeat.
    leader = leader_of(group)
    sent: Counter[str] = Counter()
    send = leader._transport_send

    def counting_send(node: Any, message: dict[str, Any]) -> bool:
        if message.get("type") == "append_entries":
            sent[node.address] += 1
        ok: bool = send(node, message)
        return ok

    leader._transport_send = counting_send

    async def write(key: int) -> tuple[float, Counter[str]]:
        sent.clear()
        started = time.monotonic()
        result = await asyncio.wait_for(leader.submit({"type": "noop", "request_id": f"w{key}"}, timeout=5), 5)
        took = time.monotonic() - started
        assert "error" not in result, result
        # A counting window, not a wait for something: every append this write caused leaves well within it.
        await asyncio.sleep(WINDOW - took)
        return took, Counter(sent)

    async def writes() -> list[tuple[float, Counter[str]]]:
        return [await write(key) for key in range(1, WRITES + 1)]

    measured = asyncio.run(writes())
    # A heartbeat may fall inside one write's window; not inside most of them.
    median = sorted(seconds for seconds, _ in measured)[WRITES // 2]
    assert median < WINDOW, measured
    followers = {m.raft_address for m in group if m is not leader}
    one_each = [counts for _, counts in measured if counts == Counter(dict.fromkeys(followers, 1))]
    assert len(one_each) > WRITES // 2, measured


class Unpolled:
    """A poller nobody polls: the wake-up pipe of a Raft thread too busy to read it (a slow disk)."""

    def subscribe(self, descriptor: int, callback: Any, events: int) -> None:
        pass


def test_a_proposal_is_queued_when_the_raft_threads_wake_up_pipe_is_full(tmp_path: Path) -> None:
    # Each proposal writes a byte to the pipe that wakes the Raft thread. Once 64 KiB of them wait unread,
    # PySyncObj's PipeNotifier raises BlockingIOError: the proposer (the event loop, or a membership
    # change) heard an error for a command that was queued and then committed.
    address = f"127.0.0.1:{free_ports(1)[0]}"
    member = Replica(address, [], StateMachine(load_app(people.__name__)), tmp_path, "x" * 32, TIMINGS)
    full = PipeNotifier(Unpolled())
    try:
        leader_of([member])
        member._wake = full
        with contextlib.suppress(BlockingIOError):
            while True:
                full.notify()
        outcome: queue.SimpleQueue[int] = queue.SimpleQueue()
        member.apply_command(b'{"type": "noop"}', callback=lambda result, error: outcome.put(error))
        assert outcome.get(timeout=10) == FAIL_REASON.SUCCESS
    finally:
        member.destroy_synchronous()
        os.close(full._PipeNotifier__pipeR)
        os.close(full._PipeNotifier__pipeW)


def test_a_member_moves_what_survives_into_the_collectors_permanent_generation(group: list[Replica]) -> None:
    # Full collections walk every stored document's references (~0.2 s at 500,000, holding the GIL): a
    # member freezes what survived the young collections once a second, so later ones walk none of it.
    gc.unfreeze()
    try:
        leader_of(group)
        wait_for(lambda: gc.get_freeze_count() > 0, 5, "a member to freeze the collector's survivors")
    finally:
        gc.unfreeze()
