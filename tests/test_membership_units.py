"""Membership rules and docraft's fixes to PySyncObj's dynamic membership, on single in-process members."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pysyncobj import FAIL_REASON
from pysyncobj.node import Node, TCPNode

from consensus import raft_member
from consensus.members import Membership, read_membership, retired_message
from consensus.raft_member import RaftTimings
from consensus.replica import Replica
from consensus.state_machine import StateMachine
from examples import people
from node.membership import bootstrap_refusal, joined_membership, refusal
from query.app import load_app
from tests.harness import free_ports, wait_for

LEADER = "10.0.0.1:7000"
A, B, C = "10.0.0.2:7000", "10.0.0.3:7000", "10.0.0.4:7000"


def leader_status(voters: list[str], ages: dict[str, float], matched: dict[str, int], **more: Any) -> dict[str, Any]:
    return {"raft": LEADER, "voters": [LEADER, *voters], "last_response_age": ages, "match_index": matched, **more}


HEALTHY = leader_status([A, B], {A: 0.05, B: 0.05}, {A: 100, B: 100})


def reason(why: Any) -> str | None:
    return None if why is None else str(why.details["reason"])


def test_a_healthy_three_voter_group_may_add_or_remove_a_follower() -> None:
    assert refusal("add", C, HEALTHY, 100, 0.7) is None
    assert refusal("remove", A, HEALTHY, 100, 0.7) is None


def test_a_change_that_would_leave_no_healthy_majority_is_refused() -> None:
    silent = leader_status([A, B], {A: 0.05, B: 5.0}, {A: 100, B: 100})
    assert reason(refusal("remove", A, silent, 100, 0.7)) == "no_majority"  # only the leader would be left
    behind = leader_status([A, B], {A: 0.05, B: 0.05}, {A: 100, B: 90})
    assert reason(refusal("remove", A, behind, 100, 0.7)) == "no_majority"
    assert refusal("remove", B, behind, 100, 0.7) is None  # removing the lagging one leaves leader + A
    both_down = leader_status([A, B], {A: 5.0, B: 5.0}, {A: 100, B: 100})
    assert reason(refusal("add", C, both_down, 100, 0.7)) == "no_majority"  # 2 of 4 is no majority
    assert refusal("add", C, silent, 100, 0.7) is None  # leader + A + C: 3 of 4


def test_one_change_at_a_time_and_sense_checks() -> None:
    pending = leader_status([A, B], {A: 0.05, B: 0.05}, {A: 100, B: 100}, membership_change_pending=True)
    assert reason(refusal("add", C, pending, 100, 0.7)) == "change_pending"
    assert reason(refusal("add", A, HEALTHY, 100, 0.7)) == "already_voter"
    assert reason(refusal("remove", C, HEALTHY, 100, 0.7)) == "not_a_voter"
    assert reason(refusal("remove", LEADER, HEALTHY, 100, 0.7)) == "leads"


def test_bootstrap_is_refused_only_by_a_running_group_that_does_not_count_the_replica() -> None:
    assert bootstrap_refusal(C, []) is None  # nobody answers: a new group's peers are starting too
    starting = {"raft": A, "role": "candidate", "commit_index": 0, "voters": [LEADER, A, C]}
    assert bootstrap_refusal(C, [starting]) is None
    fresh_peer_of_another_list = {"raft": A, "role": "follower", "commit_index": 0, "voters": [LEADER, A, B]}
    assert bootstrap_refusal(C, [fresh_peer_of_another_list]) is None  # no group yet
    running = {"raft": LEADER, "role": "leader", "commit_index": 9, "voters": [LEADER, A, B]}
    why = bootstrap_refusal(C, [starting, running])
    assert why is not None and "without --bootstrap" in why and "docraft replica add" in why


def test_an_empty_replica_joins_as_a_learner_of_the_voters_its_leader_reports() -> None:
    """Not the highest term's: a removed replica campaigning alone inflates its term."""
    leader = {"role": "leader", "term": 3, "commit_index": 20, "voters": [LEADER, A, B]}
    removed = {"role": "candidate", "term": 40, "commit_index": 18, "voters": [LEADER, A, B, C]}
    assert joined_membership([removed, leader], waited=0.0) == Membership("learner", (LEADER, A, B))
    # Only followers: keep asking for a while, then the highest commit index's report.
    behind = {"role": "follower", "term": 9, "commit_index": 12, "voters": [LEADER, A]}
    ahead = {"role": "follower", "term": 3, "commit_index": 20, "voters": [LEADER, A, B]}
    assert joined_membership([behind, ahead], waited=1.0) is None
    assert joined_membership([behind, ahead], waited=6.0) == Membership("learner", (LEADER, A, B))
    assert joined_membership([], waited=60.0) is None
    # Counted as a voter (a lost disk): still a learner, never a voter with an empty log.
    counting = {"role": "leader", "term": 3, "commit_index": 20, "voters": [LEADER, A, C]}
    assert joined_membership([counting], waited=0.0) == Membership("learner", (LEADER, A, C))


# -- RaftMember's fixes, on one real member in this process ------------------------------------


def member(tmp_path: Path, peers: list[str], mode: str = "voter") -> Replica:
    (port,) = free_ports(1)
    state = StateMachine(load_app(people.__name__))
    return Replica(f"127.0.0.1:{port}", peers, state, tmp_path, "x" * 32, RaftTimings(), mode=mode)


@pytest.fixture
def lone_leader(tmp_path: Path) -> Any:
    """A one-voter group that has committed its first entry: it may change membership."""
    replica = member(tmp_path, [])
    wait_for(lambda: replica._isLeader() and replica.raftLastApplied >= 2, 10, "the lone replica leading")
    yield replica
    replica.destroy_synchronous()


@pytest.fixture
def follower(tmp_path: Path) -> Any:
    """A member whose only peer never answers: a follower that never campaigns (it reaches nobody)."""
    replica = member(tmp_path, ["127.0.0.1:1"])
    yield replica
    replica.destroy_synchronous()


def outcome(start: Any) -> int:
    """Run ``start(callback)`` and wait for PySyncObj's answer code."""
    answers: list[int] = []
    start(lambda result, error: answers.append(error))
    return wait_for(lambda: answers, 10, "PySyncObj's answer")[0]


def test_a_second_membership_change_is_denied_while_the_first_is_uncommitted(lone_leader: Replica) -> None:
    """Raft §4.1 (thesis): one single-server change at a time. PySyncObj never enforced it."""
    answers: list[int] = []
    lone_leader.propose_membership("add", "127.0.0.1:2", lambda result, error: answers.append(error))
    # The unreachable new voter makes the entry uncommitted for good: 2 of 2 must hold it.
    wait_for(lone_leader.membership_change_pending, 10, "the first change appended and pending")
    assert lone_leader.voters() == sorted([lone_leader.raft_address, "127.0.0.1:2"])
    assert outcome(lambda cb: lone_leader.propose_membership("add", "127.0.0.1:3", cb)) == FAIL_REASON.REQUEST_DENIED
    assert answers == [] and "127.0.0.1:3" not in lone_leader.voters()


def test_the_lease_counts_voters_only_and_restarts_on_every_change(lone_leader: Replica) -> None:
    voter = TCPNode("127.0.0.1:2")
    lone_leader.propose_membership("add", voter.address, lambda result, error: None)
    wait_for(lambda: voter in lone_leader.otherNodes, 10, "the new voter appended")
    term = lone_leader._getTerm()
    learner = Node("0")  # PySyncObj names read-only members by a counter
    lone_leader._record_lease_ack(learner, (term, time.monotonic()))
    assert not lone_leader.lease_valid(), "a learner's ack granted a lease"
    lone_leader._record_lease_ack(voter, (term, time.monotonic()))
    assert lone_leader.lease_valid()
    lone_leader._SyncObj__doChangeCluster(["rem", voter.address, voter])
    assert lone_leader._lease_expiry == 0.0 and not lone_leader._lease_acks


def test_pysyncobj_utility_messages_cannot_change_the_group(lone_leader: Replica) -> None:
    callbacks = lone_leader._SyncObj__transport._onUtilityMessageCallbacks
    for name, args in (("add", ["127.0.0.1:9"]), ("remove", ["127.0.0.1:9"]), ("transfer", [None])):
        assert outcome(lambda cb, name=name, args=args: callbacks[name](args, cb)) == FAIL_REASON.REQUEST_DENIED
    assert lone_leader.voters() == [lone_leader.raft_address]


def test_a_transfer_vote_passes_stickiness_and_the_old_leader_drops_its_lease(follower: Replica) -> None:
    candidate = TCPNode("127.0.0.1:1")
    follower._heard_from_leader = time.monotonic()  # a leader was heard just now
    term = follower._getTerm() + 1
    vote = {"type": "request_vote", "term": term, "last_log_index": 10**6, "last_log_term": 10**6}
    follower._SyncObj__onMessageReceived(candidate, dict(vote))
    assert follower._SyncObj__votedForNodeId is None, "stickiness should drop an ordinary vote request"
    follower._SyncObj__onMessageReceived(candidate, {**vote, "transfer": True})
    assert follower._SyncObj__votedForNodeId == candidate.id, "a transfer's vote request was dropped"

    sent: list[dict[str, Any]] = []

    def capture(node: Any, message: dict[str, Any]) -> bool:
        sent.append(message)
        return True

    follower._transport_send = capture
    follower._transfer_term = 7
    follower._send(candidate, {"type": "request_vote", "term": 8})
    follower._send(candidate, {"type": "request_vote", "term": 9})
    assert [m.get("transfer") for m in sent] == [True, None]  # only the election right after timeout_now

    follower._lease_expiry = time.monotonic() + 10
    follower._send(candidate, {"type": "timeout_now", "term": follower._getTerm()})
    assert follower._lease_expiry == 0.0


def test_a_joining_member_does_not_stand_for_election(tmp_path: Path) -> None:
    joining = member(tmp_path, ["127.0.0.1:1"], mode="joining")
    try:
        wait_for(lambda: read_membership(tmp_path) is not None, 10, "raft.members written")
        deadline = joining._SyncObj__raftElectionDeadline
        assert deadline > time.monotonic() + 600, "a joining member's election deadline is not held off"
        assert read_membership(tmp_path) == Membership("joining", ("127.0.0.1:1",))
    finally:
        joining.destroy_synchronous()


def test_a_learner_writes_snapshots_and_records_its_voters(tmp_path: Path) -> None:
    learner = member(tmp_path, ["127.0.0.1:1"], mode="learner")
    try:
        path = tmp_path / "snapshot.test"
        entry = (b"\x00", 5, 1)
        learner._write_snapshot(str(path), (entry, (b"\x00", 4, 1), {None, TCPNode("127.0.0.1:1")}))
        assert '"cluster":["127.0.0.1:1"]' in path.read_text()
        wait_for(lambda: read_membership(tmp_path) == Membership("learner", ("127.0.0.1:1",)), 10, "raft.members")
        assert learner.status()["mode"] == "learner" and learner.status()["voters"] == ["127.0.0.1:1"]
    finally:
        learner.destroy_synchronous()


def test_a_retired_data_directory_names_the_way_back(tmp_path: Path) -> None:
    assert retired_message(tmp_path) is None
    (tmp_path / "RETIRED").write_text("removed\n")
    assert "docraft replica add" in str(retired_message(tmp_path))


def capture_sent(replica: Replica) -> list[dict[str, Any]]:
    """Replace ``replica``'s transport send: every message it sends is kept, none leaves."""
    sent: list[dict[str, Any]] = []

    def capture(node: Any, message: dict[str, Any]) -> bool:
        sent.append(message)
        return True

    replica._transport_send = capture
    return sent


def test_a_leader_that_handed_over_holds_no_lease_for_the_rest_of_its_term(
    lone_leader: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Raft thesis §3.10 / §6.4: once timeout_now is sent, the target may win at any moment of the term."""
    voter = TCPNode("127.0.0.1:2")
    lone_leader.propose_membership("add", voter.address, lambda result, error: None)
    wait_for(lambda: voter in lone_leader.otherNodes, 10, "the new voter appended")
    term = lone_leader._getTerm()
    capture_sent(lone_leader)
    lone_leader._send(voter, {"type": "timeout_now", "term": term})
    # Long after leader_fallback, still in the same term: an ack must not grant a lease.
    later = time.monotonic() + lone_leader.timings.leader_fallback + 5
    monkeypatch.setattr(raft_member, "time", SimpleNamespace(monotonic=lambda: later))
    lone_leader._record_lease_ack(voter, (term, later))
    assert not lone_leader.lease_valid(), "a leader that handed over took a lease again in the same term"


def test_a_learner_follows_a_leader_of_a_lower_term_and_keeps_its_own(tmp_path: Path) -> None:
    """A removed voter that campaigned alone, repaired into a learner, must still copy the group's log."""
    learner = member(tmp_path, ["127.0.0.1:1"], mode="learner")
    try:
        learner._SyncObj__raftCurrentTerm = 40  # inflated while it campaigned alone
        capture_sent(learner)
        leader = TCPNode("127.0.0.1:1")
        append = {"type": "append_entries", "term": 3, "commit_index": 0, "prevLogIdx": 1, "prevLogTerm": 0}
        learner._SyncObj__onMessageReceived(leader, {**append, "entries": [(b"\x00", 2, 3)]})
        assert learner.journal.last_index == 2, "the learner ignored its leader's lower-term append"
        assert learner._getTerm() == 40, "the learner lowered its term: it could vote twice in one later"
        assert learner._getLeader() == leader
        # Never a leader older than one it already followed (a deposed one still sending).
        learner._SyncObj__onMessageReceived(
            leader, {**append, "term": 2, "prevLogIdx": 2, "prevLogTerm": 3, "entries": [(b"\x00", 3, 2)]}
        )
        assert learner.journal.last_index == 2
    finally:
        learner.destroy_synchronous()


def test_a_joining_member_that_hears_a_lower_term_leader_stands_for_election_once(tmp_path: Path) -> None:
    joining = member(tmp_path, ["127.0.0.1:1"], mode="joining")
    try:
        wait_for(lambda: joining._SyncObj__raftElectionDeadline > time.monotonic() + 600, 10, "held off")
        joining._SyncObj__raftCurrentTerm = 40
        capture_sent(joining)
        append = {"type": "append_entries", "term": 3, "commit_index": 5, "prevLogIdx": 1, "prevLogTerm": 0}
        joining._SyncObj__onMessageReceived(TCPNode("127.0.0.1:1"), append)
        # It stands as soon as it reaches a voter (this one reaches none): its election deadline is near again.
        ticks: list[float] = []
        joining.addOnTickCallback(lambda: ticks.append(time.monotonic()))
        wait_for(lambda: len(ticks) >= 3, 10, "three ticks, which would pin the deadline if it still held off")
        assert joining._SyncObj__raftElectionDeadline < time.monotonic() + 600, "it still holds off elections"
    finally:
        joining.destroy_synchronous()


def test_a_member_standing_down_neither_campaigns_nor_takes_over(follower: Replica) -> None:
    follower.stand_down(60)
    wait_for(lambda: follower._SyncObj__raftElectionDeadline > time.monotonic() + 600, 10, "elections held off")
    leader = TCPNode("127.0.0.1:1")
    follower._SyncObj__raftLeader = leader
    follower._SyncObj__onMessageReceived(leader, {"type": "timeout_now", "term": follower._getTerm()})
    assert follower._SyncObj__raftElectionDeadline > time.monotonic() + 600, "timeout_now was obeyed"


def test_a_membership_change_is_recorded_when_appended_and_not_rolled_back_at_commit(lone_leader: Replica) -> None:
    """Raft §4.1: a server uses the latest configuration in its log, committed or not; after a restart
    PySyncObj re-applies membership entries at commit, which would put back an older one."""
    data_dir = lone_leader.data_dir
    lone_leader.propose_membership("add", "127.0.0.1:2", lambda result, error: None)
    wait_for(lambda: "127.0.0.1:2" in lone_leader.voters(), 10, "the change appended")
    recorded = read_membership(data_dir)
    assert recorded is not None and "127.0.0.1:2" in recorded.voters
    lone_leader._SyncObj__doChangeCluster(["rem", "127.0.0.1:2", TCPNode("127.0.0.1:2")])
    assert read_membership(data_dir) == Membership("voter", (lone_leader.raft_address,)), "it waited for a tick"
    add_entry = next(e[0] for e in lone_leader.journal[:] if e[0][:1] == b"\x02")
    lone_leader._SyncObj__doApplyCommand(add_entry)  # the older ``add`` applied at commit, as after a restart
    assert "127.0.0.1:2" not in lone_leader.voters(), "applying an older change at commit rolled the voters back"
