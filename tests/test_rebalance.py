"""The move executor (``node.rebalance``) against real state machines behind a router-shaped fake.

Two in-process ``StateMachine``s stand for the groups; ``Groups`` answers the
router calls ``node.rebalance`` makes (``write``, ``read``) as a replica would,
and can "crash the rebalancer" right after a chosen command landed, so every
crash point of a move is checked: ``resume`` then finishes it or rolls it back,
and every document ends on exactly one group.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from pathlib import Path
from typing import Any, cast

import pytest

from consensus.slots import slot_of
from consensus.state_machine import StateMachine
from models.errors import BadRequest, MoveRefused, error_from_json
from node.config import ConfigError, ReplicaConfig, ShardConfig
from node.consistency import Consistency
from node.move_commands import checked_move, export_request
from node.rebalance import EXPORT_PAGE, move_range, pending_moves, reports, resume, run_plan
from node.rebalance_cli import Request
from node.rebalance_cli import run as run_cli
from node.rebalance_plan import Chunk
from node.router import Router
from query.app import load_app

APP = load_app("examples.people")
HALF = 8192
USERS = 2400  # the moving range holds more than an export page of documents


class Crash(Exception):
    """The rebalancer died just after its last command was committed."""


class Config:
    def __init__(self, shards: list[ShardConfig]) -> None:
        self.shards = tuple(shards)

    def shard(self, shard_id: str) -> ShardConfig:
        for s in self.shards:
            if s.id == shard_id:
                return s
        raise ConfigError(f"no shard {shard_id!r} in the cluster file")  # as ClusterConfig.shard


def shard(shard_id: str, ranges: list[tuple[int, int]]) -> ShardConfig:
    address = f"127.0.0.1:{7000 + len(shard_id)}"
    replica = ReplicaConfig(f"{shard_id}r0", shard_id, address, address, Path("/nowhere"), address, address)
    return ShardConfig(shard_id, tuple(ranges), (replica,))


class Groups:
    """State machines by shard id, called as ``GroupCalls.write`` / ``.read`` are (what ``node.rebalance`` uses).

    ``crash_after = (type, n)`` raises ``Crash`` right after the n-th command of that type was applied;
    ``tamper`` drops the first document of every ``import_docs`` page (a copy that must not verify).
    """

    def __init__(self) -> None:
        self.config = Config([shard("s0", [(0, HALF - 1)]), shard("s1", [(HALF, 16383)]), shard("s2", [])])
        self.machines = {s.id: StateMachine(APP) for s in self.config.shards}
        for s in self.config.shards:
            assert "ok" in self.machines[s.id].apply({"type": "init_slots", "ranges": [list(r) for r in s.slots]})
        self.clock = itertools.count(1)
        self.applied: Counter[str] = Counter()
        self.crash_after: tuple[str, int] | None = None
        self.tamper = False

    @property
    def router(self) -> Router:
        """These groups, as the router ``node.rebalance`` takes."""
        return cast(Router, self)

    @property
    def groups(self) -> Groups:
        """What ``node.rebalance`` calls through ``router.groups``: these groups themselves."""
        return self

    async def write(self, target: ShardConfig, command: dict[str, Any]) -> dict[str, Any]:
        if self.tamper and command["type"] == "import_docs":
            command = {**command, "docs": {m: docs[1:] for m, docs in command["docs"].items()}}
        result = self.machines[target.id].apply({**command, "time": float(next(self.clock))})
        self.applied[command["type"]] += 1
        if self.crash_after == (command["type"], self.applied[command["type"]]):
            self.crash_after = None
            raise Crash(command["type"])
        return result

    async def read(self, target: ShardConfig, request: dict[str, Any], consistency: Consistency) -> dict[str, Any]:
        assert consistency is Consistency.LINEARIZABLE
        machine = self.machines[target.id]
        if "slots" in request:
            return machine.slots_report(counts=request["slots"]["counts"])
        return machine.export_page(*export_request(request["export"]))

    def insert_users(self, ids: range) -> None:
        for uid in ids:
            owner = "s0" if slot_of(uid) < HALF else "s1"
            args = {"id": uid, "first_name": "F", "last_name": str(uid), "country": "C"}
            command = {"type": "mutation", "endpoint": "insert_user", "args": args, "request_id": f"key:u{uid}"}
            result = self.machines[owner].apply({**command, "time": 0.5})
            assert "ok" in result, result

    def holders(self) -> dict[int, list[str]]:
        """Each user id with the groups whose collections hold it."""
        found: dict[int, list[str]] = {}
        for shard_id, machine in self.machines.items():
            for doc in machine.collections["User"].all():
                found.setdefault(doc["id"], []).append(shard_id)
        return found


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# The upper half of s0's slots: about half of s0's users, several export pages.
MOVING = [(HALF // 2, HALF - 1)]


def state_of(report: dict[str, Any], slot: int) -> str | None:
    return next((r["state"] for r in report["ranges"] if r["first"] <= slot <= r["last"]), None)


def users_in(ranges: list[tuple[int, int]]) -> set[int]:
    return {uid for uid in range(USERS) if any(f <= slot_of(uid) <= last for f, last in ranges)}


@pytest.fixture
def groups() -> Groups:
    made = Groups()
    made.insert_users(range(USERS))
    return made


def assert_each_user_once(groups: Groups, moved: set[int], target: str) -> None:
    holders = groups.holders()
    assert sorted(holders) == list(range(USERS)), "documents lost"
    assert all(len(where) == 1 for where in holders.values()), "a document on two groups"
    assert {uid for uid, where in holders.items() if where == [target]} >= moved


def test_a_move_hands_the_range_and_its_documents_to_the_target(groups: Groups) -> None:
    slots = MOVING
    moved = users_in(slots)
    assert len(moved) > EXPORT_PAGE, "the range must span several pages to test paging"
    pages: list[tuple[int, int]] = []
    summary = run(
        move_range(
            groups.router,
            groups.config.shard("s0"),
            groups.config.shard("s1"),
            slots,
            lambda m, c, t: pages.append((c, t)),
        )
    )
    assert (summary.outcome, summary.docs, summary.epoch) == ("committed", len(moved), 1)
    assert pages[-1] == (len(moved), len(moved))
    assert_each_user_once(groups, moved, "s1")
    report = run(reports(groups.router))
    assert not pending_moves(report)
    assert [state_of(report[s], slot) for s in ("s0", "s1") for slot in (HALF // 2, HALF - 1)] == [
        "moved",
        "moved",
        "owned",
        "owned",
    ]


def test_a_retried_request_gets_its_first_result_from_the_new_owner(groups: Groups) -> None:
    slots = MOVING
    uid = min(users_in(slots))
    run(move_range(groups.router, groups.config.shard("s0"), groups.config.shard("s1"), slots))
    args = {"id": uid, "first_name": "F", "last_name": str(uid), "country": "C"}
    again = {"type": "mutation", "endpoint": "insert_user", "args": args, "request_id": f"key:u{uid}", "time": 9.0}
    assert "ok" in groups.machines["s1"].apply(again), "a retry must return the first (successful) result"
    assert error_from_json(groups.machines["s0"].apply(again)).code == "wrong_shard"


def test_a_copy_that_does_not_verify_aborts_both_groups(groups: Groups) -> None:
    groups.tamper = True
    with pytest.raises(MoveRefused) as refused:
        run(move_range(groups.router, groups.config.shard("s0"), groups.config.shard("s1"), MOVING))
    assert refused.value.details["reason"] == "copy_mismatch"
    assert_each_user_once(groups, set(), "s1")
    assert {uid for uid, where in groups.holders().items() if where == ["s0"]} >= users_in(MOVING)
    assert not pending_moves(run(reports(groups.router)))


CRASH_POINTS = [
    ("import_begin", 1),
    ("move_begin", 1),
    ("import_docs", 1),
    ("import_docs", 2),
    ("move_commit", 1),
]


@pytest.mark.parametrize(("command", "nth"), CRASH_POINTS)
@pytest.mark.parametrize("abort", [False, True])
def test_resume_finishes_or_rolls_back_a_move_the_rebalancer_left(
    groups: Groups, command: str, nth: int, abort: bool
) -> None:
    slots = MOVING
    moved = users_in(slots)
    groups.crash_after = (command, nth)
    with pytest.raises(Crash):
        run(move_range(groups.router, groups.config.shard("s0"), groups.config.shard("s1"), slots))
    assert len(pending_moves(run(reports(groups.router)))) == 1
    summaries = run(resume(groups.router, abort=abort))
    assert len(summaries) == 1
    decided = command == "move_commit"  # past the decision only rolling forward is possible
    rolled_forward = decided or (not abort and command != "import_begin")
    assert summaries[0].outcome == ("committed" if rolled_forward else "aborted")
    assert_each_user_once(groups, moved if rolled_forward else set(), "s1" if rolled_forward else "s0")
    if not rolled_forward:
        assert {uid for uid, where in groups.holders().items() if where == ["s0"]} >= moved
    assert not pending_moves(run(reports(groups.router)))
    assert run(resume(groups.router)) == []
    # The slots are usable again: moving them on (or, rolled back, again) goes through.
    holder = "s1" if rolled_forward else "s0"
    again = run(move_range(groups.router, groups.config.shard(holder), groups.config.shard("s2"), slots))
    assert again.outcome == "committed"
    assert_each_user_once(groups, moved, "s2")


def test_move_steps_are_idempotent_when_resent(groups: Groups) -> None:
    """A command resent after an unknown outcome (the router retries it) changes nothing the second time."""
    original = groups.write

    async def twice(target: ShardConfig, command: dict[str, Any]) -> dict[str, Any]:
        first = await original(target, command)
        second = await original(target, command)
        assert ("error" in first) == ("error" in second), (command["type"], first, second)
        return second

    groups.write = twice  # type: ignore[method-assign]
    slots = MOVING
    summary = run(move_range(groups.router, groups.config.shard("s0"), groups.config.shard("s1"), slots))
    assert summary.docs == len(users_in(slots))
    assert_each_user_once(groups, users_in(slots), "s1")


def test_a_refused_freeze_rolls_the_import_back(groups: Groups) -> None:
    """Moving slots the source does not own: the target takes the import, the source refuses to freeze,
    and the target's import is rolled back."""
    with pytest.raises(MoveRefused):
        run(move_range(groups.router, groups.config.shard("s0"), groups.config.shard("s2"), [(HALF, HALF + 10)]))
    assert groups.applied["import_abort"] == 1
    report = run(reports(groups.router))
    assert not pending_moves(report)
    assert state_of(report["s2"], HALF) is None
    assert state_of(report["s1"], HALF) == "owned"


@pytest.mark.parametrize(
    ("command", "field"),
    [
        ({"type": "import_begin", "move": "m", "source": "s0", "slots": [[5, 3]], "epoch": 2}, "slots"),
        ({"type": "import_begin", "move": "m", "source": "s0", "slots": [[0, 3]], "epoch": 0}, "epoch"),
        (
            {
                "type": "move_begin",
                "move": "m",
                "target": "s1",
                "target_replicas": [{"id": 1}],
                "slots": [[0, 1]],
                "epoch": 2,
            },
            "target_replicas",
        ),
        ({"type": "import_docs", "move": "m", "batch": -1, "docs": {}, "requests": []}, "batch"),
        ({"type": "import_docs", "move": "m", "batch": 0, "docs": {"User": [1]}, "requests": []}, "docs"),
        ({"type": "import_commit", "move": "m", "epoch": 2, "count": 3}, "hash"),
        ({"type": "move_abort", "move": ""}, "move"),
    ],
)
def test_a_replica_refuses_malformed_move_commands_before_proposing(command: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        checked_move(None, command)  # type: ignore[arg-type]  # the shape needs no service
    assert refused.value.details["param"] == field


@pytest.mark.parametrize(
    "request_",
    [{"move": "m", "after": None, "limit": 0}, {"move": "m", "after": 5, "limit": 10}, {"after": None, "limit": 10}],
)
def test_malformed_export_reads_are_refused(request_: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        export_request(request_)


def move_slots_one_by_one(groups: Groups, source: str, target: str, slots: range) -> None:
    """One move per slot: more than a group keeps records of (16), so the oldest are forgotten."""
    plan = [Chunk(source, target, slot, slot) for slot in slots]
    assert [s.outcome for s in run(run_plan(groups.router, plan))] == ["committed"] * len(plan)


def crash_mid_move(groups: Groups, command: str, source: str, target: str, slots: list[tuple[int, int]]) -> None:
    """Start moving ``slots`` and let the rebalancer die right after the first ``command`` landed."""
    groups.applied.clear()
    groups.crash_after = (command, 1)
    with pytest.raises(Crash):
        run(move_range(groups.router, groups.config.shard(source), groups.config.shard(target), slots))


def test_resume_rolls_forward_a_committed_move_the_source_has_forgotten(groups: Groups) -> None:
    moved = users_in(MOVING)
    crash_mid_move(groups, "move_commit", "s0", "s1", MOVING)
    move_slots_one_by_one(groups, "s0", "s2", range(16))  # s0 forgets its record of the committed move
    [pending] = pending_moves(run(reports(groups.router)))
    assert pending.states == (None, "importing")
    [summary] = run(resume(groups.router))
    assert (summary.outcome, summary.docs) == ("committed", len(moved))
    assert_each_user_once(groups, moved, "s1")
    assert not pending_moves(run(reports(groups.router)))


def test_resume_leaves_an_import_whose_source_never_owned_the_slots_to_an_operator(groups: Groups) -> None:
    """T imports from a source that neither remembers the move nor owns the slots: no outcome is provably safe."""
    theirs = [(HALF, HALF + 10)]  # s1's slots, named as s0's
    crash_mid_move(groups, "import_begin", "s0", "s2", theirs)
    [summary] = run(resume(groups.router))
    assert summary.outcome == "failed"
    assert summary.detail is not None and "needs_operator" in summary.detail and summary.move in summary.detail
    report = run(reports(groups.router))
    assert state_of(report["s2"], HALF) == "importing", "the import must be left as it was"
    assert [p.id for p in pending_moves(report)] == [summary.move]


def test_moves_the_target_has_forgotten_are_finished_also_once_it_passed_the_slots_on(groups: Groups) -> None:
    """s2 takes 17 one-slot moves, then passes 8 on: it forgets the early imports s0 still lists as committed."""
    move_slots_one_by_one(groups, "s0", "s2", range(17))
    move_slots_one_by_one(groups, "s2", "s1", range(8))
    report = run(reports(groups.router))
    forgotten = {m["id"] for m in report["s0"]["moves"]} - {m["id"] for m in report["s2"]["moves"]}
    assert len(forgotten) == 8, "the test needs source records whose target record is gone"
    assert pending_moves(report) == []
    assert run(resume(groups.router)) == []


def break_one_move_and_interrupt_another(groups: Groups) -> str:
    """A move ended by hand on T after S committed (its documents are nowhere: ``lost``), then a second move
    interrupted after the freeze; the first's id."""
    crash_mid_move(groups, "move_commit", "s0", "s1", MOVING)
    [lost] = pending_moves(run(reports(groups.router)))
    assert "ok" in groups.machines["s1"].apply({"type": "import_abort", "move": lost.id, "time": 0.5})
    crash_mid_move(groups, "move_begin", "s1", "s2", [(HALF, HALF + 100)])
    assert next(p.id for p in pending_moves(run(reports(groups.router)))) == lost.id, "the lost move comes first"
    return lost.id


def test_resume_reports_a_move_it_cannot_end_and_finishes_the_others(groups: Groups) -> None:
    lost = break_one_move_and_interrupt_another(groups)
    summaries = run(resume(groups.router))
    assert [(s.move, s.outcome) for s in summaries] == [(lost, "failed"), (summaries[1].move, "committed")]
    assert summaries[0].detail is not None and "lost" in summaries[0].detail
    assert {uid for uid, where in groups.holders().items() if where == ["s2"]} == users_in([(HALF, HALF + 100)])
    assert [p.id for p in pending_moves(run(reports(groups.router)))] == [lost]


def test_the_rebalance_command_reports_a_move_it_cannot_end_and_exits_non_zero(
    groups: Groups, capsys: pytest.CaptureFixture[str]
) -> None:
    lost = break_one_move_and_interrupt_another(groups)
    assert run(run_cli(groups.router, Request())) == 1
    output = capsys.readouterr().out
    assert f"not finished: move {lost}" in output and "lost" in output
    assert "plan:" not in output, "nothing is planned after a resume failed"
    assert [p.id for p in pending_moves(run(reports(groups.router)))] == [lost], "the other move was finished"


def test_resume_names_the_move_and_the_shard_that_left_the_cluster_file(groups: Groups) -> None:
    crash_mid_move(groups, "move_begin", "s0", "s1", MOVING)
    groups.config = Config([s for s in groups.config.shards if s.id != "s1"])
    [summary] = run(resume(groups.router))
    assert summary.outcome == "failed" and summary.detail is not None
    assert summary.move in summary.detail and "shard 's1'" in summary.detail
    assert state_of(run(reports(groups.router))["s0"], HALF - 1) == "frozen", "the move is left as it was"


def insert_order(groups: Groups, shard_id: str, order_id: int, user_id: int) -> None:
    args = {"id": order_id, "user_id": user_id, "item": "book", "amount": 1.0}
    command = {"type": "mutation", "endpoint": "insert_order", "args": args, "request_id": f"o{shard_id}{order_id}"}
    assert "ok" in groups.machines[shard_id].apply({**command, "time": 0.5})


def test_a_primary_key_taken_on_the_target_aborts_both_groups_before_the_decision(groups: Groups) -> None:
    """Orders live with their user, so ids are unique per group only: one arriving whose id T holds is refused
    while copying (``import_docs``), and both groups roll back; S never gives the slots away."""
    mover = min(users_in(MOVING))
    stayer = next(uid for uid in range(USERS) if slot_of(uid) >= HALF)
    insert_order(groups, "s0", 7, mover)
    insert_order(groups, "s1", 7, stayer)
    with pytest.raises(MoveRefused) as refused:
        run(move_range(groups.router, groups.config.shard("s0"), groups.config.shard("s1"), MOVING))
    assert refused.value.details["reason"] == "collision"
    assert groups.applied["move_commit"] == 0 and groups.applied["import_commit"] == 0
    report = run(reports(groups.router))
    assert not pending_moves(report)
    assert (state_of(report["s0"], slot_of(mover)), state_of(report["s1"], slot_of(mover))) == ("owned", None)
    assert [o["user_id"] for o in groups.machines["s0"].collections["Order"].all()] == [mover]
    assert [o["user_id"] for o in groups.machines["s1"].collections["Order"].all()] == [stayer]
    assert_each_user_once(groups, set(), "s1")
