"""Integrity pieces one by one, without processes: digests and checkpoints, code identity,
the monitor's judgement, its watch over applying and leadership (with explicit times), the
monitor with fake replicas, and alert delivery to webhooks.

The fake replicas stand in for the network only: each is a real ``StateMachine``
whose ``integrity()`` report, with the Raft progress a replica adds, is what
``/_admin/digest`` would answer.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import ujson
from hypothesis import given, settings
from hypothesis import strategies as st
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application, RequestHandler

from consensus.slots import slot_of
from consensus.state_machine import CHECKPOINTS_KEPT, StateMachine
from models.errors import NotFound, ShardUnavailable
from node.alerts import KINDS, Alert, AlertBook
from node.cluster_secret import new_secret
from node.config import ClusterConfig, ReplicaConfig, ShardConfig, parse_config, render_config
from node.fault_injection import corrupt
from node.monitor import IntegrityMonitor, Judgement, Lag, ProgressWatch, judge, leader_of
from query.app import load_app
from query.fingerprint import app_fingerprint
from tests.machines import keys_sharing_a_slot, owning_all

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PEOPLE = load_app("examples.people")
ROLLBACK = load_app("tests.apps.rollback_app")


def user(id: int, country: str = "FR") -> dict[str, Any]:
    return {"id": id, "first_name": f"first{id}", "last_name": f"last{id}", "country": country}


def insert_user(id: int, request_id: str | None = None, country: str = "FR") -> dict[str, Any]:
    command: dict[str, Any] = {"type": "mutation", "endpoint": "insert_user", "args": user(id, country)}
    command["time"] = 1.0
    if request_id is not None:
        command["request_id"] = request_id
    return command


def insert_batch(ids: Iterable[int], request_id: str | None = None) -> dict[str, Any]:
    """A batch routed by the slot of its first id (any other id's document gets ``wrong_shard``)."""
    docs = [user(i) for i in ids]
    slot = slot_of(docs[0]["id"]) if docs else 0
    command: dict[str, Any] = {"type": "insert_batch", "model": "User", "docs": docs, "slot": slot}
    if request_id is not None:
        command["request_id"] = request_id
    return command


def set_fingerprint(fingerprint: str, initial: bool) -> dict[str, Any]:
    return {"type": "set_fingerprint", "fingerprint": fingerprint, "initial": initial}


def json_round_trip(value: Any) -> Any:
    return ujson.loads(ujson.dumps(value))


def user_ids(machine: StateMachine) -> list[int]:
    return [d["id"] for d in machine.snapshot()["collections"]["User"]]


# A log with gaps, as PySyncObj leaves them: its own entries (membership, no-ops of
# its own) take indexes that never reach the state machine.
GAPPY_INDEXES = [1, 2, 4, 5, 6, 9, 10, 11, 14, 15, 16, 17, 21, 22, 25, 26, 30, 31, 33, 40, 41, 42, 47, 52]


def feed(machines: Iterable[StateMachine], commands: list[dict[str, Any]], indexes: list[int]) -> None:
    machines = list(machines)
    for command, index in zip(commands, indexes, strict=True):
        results = [m.apply(command, index=index) for m in machines]
        assert all(r == results[0] for r in results), command


# -- 1. digests and checkpoints ---------------------------------------------------------


def test_same_log_with_gaps_gives_equal_digests_and_identical_checkpoints() -> None:
    first, second = owning_all(PEOPLE, checkpoint_interval=5), owning_all(PEOPLE, checkpoint_interval=5)
    for step, index in enumerate(GAPPY_INDEXES):
        command = insert_user(step % 9, request_id=f"r{step}") if step % 4 else {"type": "noop"}
        before = first.digest()
        assert first.apply(command, index=index) == second.apply(command, index=index)
        assert first.digest() == second.digest() != before
        assert first.applied_index == second.applied_index == index
    assert first.integrity() == second.integrity()
    assert list(first.checkpoints) == list(second.checkpoints)
    # a checkpoint for every boundary passed, 5 to 50, even those no command landed on
    assert [i for i, _ in first.checkpoints] == list(range(5, 52, 5))
    assert len({d for _, d in first.checkpoints}) == len(first.checkpoints)


def test_checkpoints_land_on_every_boundary_with_the_digest_as_of_that_boundary() -> None:
    machine = owning_all(PEOPLE, checkpoint_interval=10)
    initial = machine.digest()
    machine.apply(insert_user(1), index=3)
    at_3 = machine.digest()
    assert at_3 != initial and list(machine.checkpoints) == []
    # 3 -> 25 skips the boundaries 10 and 20: both hold the digest as of index 3,
    # taken before the command at 25 is applied
    machine.apply(insert_user(2), index=25)
    at_25 = machine.digest()
    assert list(machine.checkpoints) == [(10, at_3), (20, at_3)]
    # a command exactly on a boundary belongs to it: recorded once a later index arrives
    machine.apply(insert_user(3), index=30)
    at_30 = machine.digest()
    assert list(machine.checkpoints) == [(10, at_3), (20, at_3)]
    machine.apply({"type": "noop"}, index=31)
    assert list(machine.checkpoints) == [(10, at_3), (20, at_3), (30, at_30)]
    assert len({initial, at_3, at_25, at_30}) == 4
    assert machine.integrity()["checkpoints"] == [[10, at_3], [20, at_3], [30, at_30]]


def test_checkpoints_before_the_first_command_hold_the_empty_digest() -> None:
    machine = owning_all(PEOPLE, checkpoint_interval=2)
    empty = machine.digest()
    machine.apply({"type": "noop"}, index=5)
    assert list(machine.checkpoints) == [(2, empty), (4, empty)]


def test_only_the_newest_checkpoints_are_kept() -> None:
    machine = owning_all(PEOPLE, checkpoint_interval=1)
    for index in range(1, CHECKPOINTS_KEPT + 11):
        machine.apply({"type": "noop"}, index=index)
    assert [i for i, _ in machine.checkpoints] == list(range(10, CHECKPOINTS_KEPT + 10))


def test_commands_without_index_change_the_digest_but_not_the_checkpoints() -> None:
    machine = owning_all(PEOPLE, checkpoint_interval=1)
    before = machine.digest()
    machine.apply(insert_user(1))
    machine.apply(insert_user(2))
    assert machine.digest() != before
    assert machine.applied_index == 0 and list(machine.checkpoints) == []


def test_corrupt_changes_the_digest_of_that_machine_only() -> None:
    first, second = owning_all(PEOPLE, checkpoint_interval=5), owning_all(PEOPLE, checkpoint_interval=5)
    feed([first, second], [insert_user(i) for i in range(8)], GAPPY_INDEXES[:8])
    agreed = second.digest()
    assert first.digest() == agreed
    changed = corrupt(first, "User", 3, {"city": "Atlantis"})
    assert changed == {**user(3), "address": "", "city": "Atlantis"}
    assert first.digest() != agreed
    assert second.digest() == agreed
    # nothing went through the log: same log hash, same checkpoints; only the contents differ
    assert first.log_hash == second.log_hash
    assert list(first.checkpoints) == list(second.checkpoints)
    # the content hash follows the contents, however they were reached
    corrupt(first, "User", 3, {"city": ""})
    assert first.digest() == agreed


def test_corrupt_of_a_missing_document_raises_not_found() -> None:
    machine = owning_all(PEOPLE)
    before = machine.digest()
    with pytest.raises(NotFound):
        corrupt(machine, "User", 404, {"city": "x"})
    assert machine.digest() == before


def test_restored_machine_has_the_same_digest_and_carries_on_in_step() -> None:
    source = owning_all(PEOPLE, checkpoint_interval=5)
    feed([source], [insert_user(i, request_id=f"r{i}") for i in range(12)], GAPPY_INDEXES[:12])
    restored = owning_all(PEOPLE, checkpoint_interval=5)
    restored.restore(json_round_trip(source.snapshot()))
    assert restored.digest() == source.digest()
    assert restored.integrity() == source.integrity()
    feed([source, restored], [insert_user(i) for i in range(12, 20)], GAPPY_INDEXES[12:20])
    assert restored.digest() == source.digest()
    assert list(restored.checkpoints) == list(source.checkpoints)


def test_restore_recomputes_the_content_hash_from_the_documents() -> None:
    source = owning_all(PEOPLE)
    feed([source], [insert_user(i) for i in range(5)], [1, 2, 3, 4, 5])
    snapshot = json_round_trip(source.snapshot())  # a copy: snapshot() shares the live documents
    snapshot["collections"]["User"][2]["city"] = "edited in transit"
    restored = owning_all(PEOPLE)
    restored.restore(snapshot)
    assert restored.log_hash == source.log_hash  # the recorded log hash is taken as is...
    assert restored.digest() != source.digest()  # ...but the contents are hashed again
    # restoring the unedited snapshot gives the source's digest, so the edit is what differs
    clean = owning_all(PEOPLE)
    clean.restore(json_round_trip(source.snapshot()))
    assert clean.digest() == source.digest()


def test_without_digests_the_log_hash_stays_zero_but_contents_still_count() -> None:
    machine = owning_all(PEOPLE, digests=False)
    logged = owning_all(PEOPLE)
    empty = machine.digest()
    for m in (machine, logged):
        m.apply({"type": "noop"}, index=1)
        m.apply(insert_user(1), index=2)
        m.apply(insert_user(1), index=3)  # a duplicate: an error, nothing stored
    assert machine.log_hash == bytes(16)
    assert logged.log_hash != bytes(16)
    # only the contents move the digest: one user stored, whatever the log said
    one_user = owning_all(PEOPLE, digests=False)
    one_user.apply(insert_user(1))
    assert machine.digest() == one_user.digest() != empty
    before = machine.digest()
    machine.apply({"type": "noop"}, index=4)
    assert machine.digest() == before
    machine.apply(insert_user(2), index=5)
    assert machine.digest() != before


# random commands: inserts on a few ids (duplicates common), batches, no-ops, garbage,
# fingerprints; each with a log index that skips ahead by 1 to 4
COMMANDS = st.one_of(
    st.builds(
        insert_user,
        st.integers(0, 5),
        st.none() | st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["FR", "JP"]),
    ),
    st.builds(insert_batch, st.lists(st.integers(0, 5), max_size=3), st.none() | st.just("batch")),
    st.just({"type": "noop"}),
    st.sampled_from([{"type": "drop_all"}, {}, {"type": "mutation", "endpoint": "nope"}]),
    st.builds(set_fingerprint, st.sampled_from(["a", "b"]), st.booleans()),
)


@settings(max_examples=100, deadline=None)
@given(
    script=st.lists(st.tuples(COMMANDS, st.integers(1, 4)), max_size=30),
    interval=st.integers(1, 6),
    cut=st.integers(0, 30),
)
def test_random_logs_give_equal_digests_at_every_index(
    script: list[tuple[dict[str, Any], int]], interval: int, cut: int
) -> None:
    first = owning_all(PEOPLE, checkpoint_interval=interval, local_fingerprint="a")
    second = owning_all(PEOPLE, checkpoint_interval=interval, local_fingerprint="a")
    joined: StateMachine | None = None
    digest_after: list[tuple[int, str]] = [(0, first.digest())]
    index = 0
    for step, (command, gap) in enumerate(script):
        if step == cut:  # a replica that joins from a snapshot keeps in step from here on
            joined = owning_all(PEOPLE, checkpoint_interval=interval, local_fingerprint="a")
            joined.restore(json_round_trip(first.snapshot()))
        index += gap
        before = first.digest()
        result = first.apply(command, index=index)
        assert second.apply(command, index=index) == result
        assert first.digest() == second.digest() != before
        assert first.integrity() == second.integrity()
        if joined is not None:
            assert joined.apply(command, index=index) == result
            assert joined.integrity() == first.integrity()
        digest_after.append((index, first.digest()))
    # the checkpoints are exactly the boundaries passed, each with the digest as of it
    expected = [
        (boundary, next(d for i, d in reversed(digest_after) if i <= boundary))
        for boundary in range(interval, index, interval)
    ][-CHECKPOINTS_KEPT:]
    assert list(first.checkpoints) == expected


# -- 2. code identity -------------------------------------------------------------------


def test_matching_code_applies_mutations_normally() -> None:
    machine = owning_all(PEOPLE, local_fingerprint="a")
    assert machine.apply(set_fingerprint("a", initial=True)) == {"ok": "a"}
    assert machine.code_ok
    assert machine.apply(insert_user(1))["ok"]["id"] == 1
    two, other = keys_sharing_a_slot(2, first=2)
    assert machine.apply(insert_batch([two, other]))["ok"] == [{"ok": two}, {"ok": other}]
    assert user_ids(machine) == [1, two, other]
    assert machine.integrity()["fingerprint"] == {"cluster": "a", "local": "a", "ok": True}


def test_mismatched_code_applies_nothing_but_set_fingerprint() -> None:
    machine = owning_all(PEOPLE, local_fingerprint="b")
    two, other = keys_sharing_a_slot(2, first=2)
    assert machine.integrity()["fingerprint"] == {"cluster": None, "local": "b", "ok": True}
    assert machine.apply(set_fingerprint("a", initial=True)) == {"ok": "a"}
    assert not machine.code_ok
    assert machine.integrity()["fingerprint"] == {"cluster": "a", "local": "b", "ok": False}
    refused = [
        machine.apply(insert_user(1, request_id="m1")),
        machine.apply(insert_batch([two, other], request_id="m2")),
    ]
    batch = machine.apply(
        {"type": "batch", "commands": [insert_user(4, request_id="m3"), insert_batch([5]), {"type": "noop"}]}
    )
    refused += batch["ok"][:2]
    assert batch["ok"][2] == {"ok": None}
    for result in refused:
        assert result["error"]["code"] == "code_mismatch", result
        assert result["error"]["details"] == {"cluster": "a", "local": "b"}
    assert user_ids(machine) == []
    assert machine.snapshot()["recent_requests"] == []  # refusals are not remembered
    # set_fingerprint still applies, in a batch too; "b" recorded makes the machine whole
    assert machine.apply({"type": "batch", "commands": [set_fingerprint("b", initial=False)]}) == {"ok": [{"ok": "b"}]}
    assert machine.code_ok
    assert machine.integrity()["fingerprint"] == {"cluster": "b", "local": "b", "ok": True}
    # the refused request ids were not remembered, so their retries now apply
    assert machine.apply(insert_user(1, request_id="m1"))["ok"]["id"] == 1
    assert machine.apply(insert_batch([two, other], request_id="m2"))["ok"] == [{"ok": two}, {"ok": other}]
    assert user_ids(machine) == [1, two, other]


def test_initial_set_fingerprint_never_replaces_a_recorded_one() -> None:
    machine = owning_all(PEOPLE)
    assert machine.apply(set_fingerprint("a", initial=True)) == {"ok": "a"}
    # a later leader's initial entry finds "a" recorded and leaves it
    assert machine.apply(set_fingerprint("b", initial=True)) == {"ok": "a"}
    assert machine.fingerprint == "a"
    assert machine.apply(set_fingerprint("b", initial=False)) == {"ok": "b"}
    assert machine.fingerprint == "b"
    # no local fingerprint: nothing to compare, always ok
    assert machine.code_ok
    assert machine.integrity()["fingerprint"] == {"cluster": "b", "local": None, "ok": True}


@pytest.mark.parametrize("fingerprint", ["", None, 7, ["a"]])
def test_set_fingerprint_needs_a_non_empty_string(fingerprint: Any) -> None:
    machine = owning_all(PEOPLE)
    result = machine.apply({"type": "set_fingerprint", "fingerprint": fingerprint, "initial": True})
    assert result["error"]["code"] == "bad_request"
    assert machine.fingerprint is None


def test_recorded_fingerprint_travels_in_snapshots() -> None:
    source = owning_all(PEOPLE, local_fingerprint="a")
    source.apply(set_fingerprint("a", initial=True), index=1)
    wrong_code = owning_all(PEOPLE, local_fingerprint="b")
    wrong_code.restore(json_round_trip(source.snapshot()))
    assert wrong_code.fingerprint == "a" and not wrong_code.code_ok
    assert wrong_code.apply(insert_user(1))["error"]["code"] == "code_mismatch"


FINGERPRINT_SCRIPT = (
    "from query.app import load_app\n"
    "from query.fingerprint import app_fingerprint\n"
    "print(app_fingerprint(load_app('examples.people')))\n"
)


def test_app_fingerprint_is_stable_across_calls_and_processes() -> None:
    here = app_fingerprint(PEOPLE)
    assert here == app_fingerprint(PEOPLE) == app_fingerprint(load_app("examples.people"))
    assert len(here) == 64 and int(here, 16) >= 0
    elsewhere = {
        subprocess.run(
            [sys.executable, "-c", FINGERPRINT_SCRIPT],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert elsewhere == {here}


def test_app_fingerprint_differs_between_apps() -> None:
    assert app_fingerprint(ROLLBACK) != app_fingerprint(PEOPLE)


APP_SOURCE = '''"""An app written for this test only."""

from models import Model, field
from query import WriteView, mutation


class Note(Model):
    id: int = field(primary_key=True)
    text: str = ""


@mutation(shard_key="id")
def add_note(db: WriteView, id: int) -> dict:
    return db.insert(Note, {"id": id})
'''


def test_app_fingerprint_follows_the_source_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = "fingerprint_probe_app"
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    try:
        app = load_app(name)
        before = app_fingerprint(app)
        assert app_fingerprint(app) == before
        (tmp_path / f"{name}.py").write_text(APP_SOURCE + "# one comment more\n")
        assert app_fingerprint(app) != before
    finally:
        sys.modules.pop(name, None)


# -- 3. judge ---------------------------------------------------------------------------


def report(applied: int, digest: str, checkpoints: Iterable[tuple[int, str]] = ()) -> dict[str, Any]:
    """One replica's ``/_admin/digest`` answer, as JSON gives it."""
    return {
        "applied_index": applied,
        "digest": digest,
        "checkpoints": [[i, d] for i, d in checkpoints],
        "fingerprint": {"cluster": "a", "local": "a", "ok": True},
    }


CHECKPOINTS = [(50, "d50"), (100, "d100")]


def test_judge_all_agreeing() -> None:
    reports = {r: report(120, "d120", CHECKPOINTS) for r in ("r0", "r1", "r2")}
    assert judge(reports, 3) == Judgement(agreeing={"r0", "r1", "r2"})


def test_judge_one_replica_differing_at_the_newest_common_index() -> None:
    reports = {
        "r0": report(120, "d120", CHECKPOINTS),
        "r1": report(120, "d120", CHECKPOINTS),
        "r2": report(120, "other", CHECKPOINTS),
    }
    verdict = judge(reports, 3)
    assert verdict.agreeing == {"r0", "r1"}
    assert verdict.divergent == {"r2": (120, {"r0": "d120", "r1": "d120", "r2": "other"})}
    assert verdict.no_majority is None


@pytest.mark.parametrize(("lagging_digest", "divergent"), [("d50", False), ("bad50", True)])
def test_judge_a_lagging_replica_at_its_newest_shared_checkpoint(lagging_digest: str, divergent: bool) -> None:
    reports = {
        "r0": report(120, "d120", CHECKPOINTS),
        "r1": report(121, "d121", [*CHECKPOINTS]),
        "r2": report(80, "d80", [(50, lagging_digest)]),  # behind: its last checkpoint is 50
    }
    verdict = judge(reports, 3)
    # r0 and r1 share nothing newer than 100; r2 meets them only at 50
    assert verdict.no_majority is None
    if divergent:
        assert verdict.agreeing == {"r0", "r1"}
        assert verdict.divergent == {"r2": (50, {"r0": "d50", "r1": "d50", "r2": "bad50"})}
    else:
        assert verdict.agreeing == {"r0", "r1", "r2"}
        assert verdict.divergent == {}


def test_judge_two_reporters_disagreeing_with_the_third_absent_judges_nobody() -> None:
    reports = {"r0": report(120, "p"), "r1": report(120, "q")}
    assert judge(reports, 3) == Judgement()


def test_judge_two_agreeing_reporters_are_a_majority_of_three() -> None:
    reports = {"r0": report(120, "d"), "r2": report(120, "d")}
    assert judge(reports, 3) == Judgement(agreeing={"r0", "r2"})


def test_judge_all_different_is_no_majority() -> None:
    reports = {r: report(120, f"digest-{r}") for r in ("r0", "r1", "r2")}
    verdict = judge(reports, 3)
    assert verdict.no_majority == (120, {"r0": "digest-r0", "r1": "digest-r1", "r2": "digest-r2"})
    assert verdict.agreeing == set() and verdict.divergent == {}


def test_judge_uses_the_current_digest_of_idle_replicas() -> None:
    # all idle at 57: the last checkpoint (50) agrees, only the current digest shows r1's change
    reports = {
        "r0": report(57, "d57", [(50, "d50")]),
        "r1": report(57, "changed", [(50, "d50")]),
        "r2": report(57, "d57", [(50, "d50")]),
    }
    verdict = judge(reports, 3)
    assert verdict.agreeing == {"r0", "r2"}
    assert verdict.divergent == {"r1": (57, {"r0": "d57", "r1": "changed", "r2": "d57"})}


def test_judge_does_not_clear_a_replica_at_a_checkpoint_older_than_its_disagreement() -> None:
    # r2 changed after checkpoint 100; r1 lags and has not reached 100 yet
    reports = {
        "r0": report(120, "d120", CHECKPOINTS),
        "r1": report(90, "d90", [(50, "d50")]),
        "r2": report(120, "corrupt", CHECKPOINTS),
    }
    verdict = judge(reports, 3)
    # at 120 r0 and r2 disagree and no majority exists; agreement at 100 predates that
    assert "r2" not in verdict.agreeing


# -- 4. liveness: applying what is committed, and having a leader ---------------------------


def raft(commit: int, applied: int, role: str = "follower", term: int = 1) -> dict[str, Any]:
    """The Raft part of a replica's ``/_admin/digest`` answer."""
    return {"commit_index": commit, "raft_applied_index": applied, "role": role, "term": term, "fault": None}


STALL_AFTER, NO_LEADER_AFTER = 5.0, 3.0


def watch() -> ProgressWatch:
    return ProgressWatch(apply_stall_after=STALL_AFTER, no_leader_after=NO_LEADER_AFTER)


def lagging_r1(commit: int, applied: int) -> dict[str, dict[str, Any] | None]:
    """A round of shard s0 where r0 leads and is up to date, and r1 is at ``commit``/``applied``."""
    return {"r0": raft(commit, commit, "leader"), "r1": raft(commit, applied)}


def test_stall_is_raised_only_once_the_threshold_has_passed() -> None:
    progress = watch()
    for now in (100.0, 102.0, 104.9):
        assert progress.observe("s0", lagging_r1(10, 7), now).stalled == {}
    assert progress.observe("s0", lagging_r1(10, 7), 105.0).stalled == {"r1": Lag(target=10, applied=7, since=100.0)}
    # the lag is judged from the first round that saw it, whatever happens to commit meanwhile
    assert progress.observe("s0", lagging_r1(12, 7), 106.0).stalled == {"r1": Lag(target=10, applied=7, since=100.0)}


def test_stall_clears_when_the_replica_applies_what_was_committed() -> None:
    progress = watch()
    progress.observe("s0", lagging_r1(10, 7), 100.0)
    assert progress.observe("s0", lagging_r1(10, 9), 106.0).stalled.keys() == {"r1"}  # moving, not there yet
    assert progress.observe("s0", lagging_r1(10, 10), 107.0).stalled == {}
    assert progress.lags == {}


@pytest.mark.parametrize(
    ("applied_rate", "stalls"),
    [
        (10, False),  # applies everything within a second of seeing it committed, under load
        (2, True),  # applies, but ever further behind what its group commits
        (0, True),  # stuck on one entry (a poison entry retried forever)
    ],
)
def test_stall_needs_applied_to_miss_a_committed_index_not_just_trail_a_moving_one(
    applied_rate: int, stalls: bool
) -> None:
    progress = watch()
    stalled_at = None
    for second in range(20):
        commit = 10 * (second + 1)  # commit ahead of applied at every single round
        applied = min(applied_rate * second, commit - 1)
        if progress.observe("s0", lagging_r1(commit, applied), 100.0 + second).stalled and stalled_at is None:
            stalled_at = second
    if stalls:
        assert stalled_at is not None and stalled_at >= STALL_AFTER
    else:
        assert stalled_at is None


def test_a_replica_that_did_not_answer_starts_afresh() -> None:
    progress = watch()
    progress.observe("s0", lagging_r1(10, 7), 100.0)
    # paused through the threshold: silence is replica_unreachable's business
    assert progress.observe("s0", {"r0": raft(10, 10, "leader"), "r1": None}, 106.0).stalled == {}
    assert progress.observe("s0", lagging_r1(10, 7), 107.0).stalled == {}
    assert progress.observe("s0", lagging_r1(10, 7), 111.9).stalled == {}
    assert progress.observe("s0", lagging_r1(10, 7), 112.0).stalled == {"r1": Lag(10, 7, 107.0)}


def test_a_replica_whose_applied_index_went_down_restarted_and_starts_afresh() -> None:
    progress = watch()
    progress.observe("s0", lagging_r1(10, 7), 100.0)
    # replaying its log after a restart quicker than a round: applied went from 7 to 2
    assert progress.observe("s0", lagging_r1(10, 2), 105.0).stalled == {}
    assert progress.observe("s0", lagging_r1(10, 5), 109.0).stalled == {}
    assert progress.observe("s0", lagging_r1(10, 5), 110.0).stalled == {"r1": Lag(10, 5, 105.0)}


def test_no_leader_is_raised_only_after_the_threshold_and_cleared_when_a_leader_appears() -> None:
    progress = watch()
    electing = {"r0": raft(5, 5, "candidate", 3), "r1": raft(5, 5, "follower", 2), "r2": None}
    for now in (100.0, 101.0, 102.9):
        assert progress.observe("s0", electing, now).leaderless_for is None
    assert progress.observe("s0", electing, 103.0).leaderless_for == 3.0
    assert progress.observe("s0", electing, 104.5).leaderless_for == 4.5
    elected = {**electing, "r0": raft(6, 6, "leader", 3)}
    assert progress.observe("s0", elected, 105.0).leaderless_for is None
    # leaderless again: the threshold counts from this new start
    assert progress.observe("s0", electing, 106.0).leaderless_for is None
    assert progress.observe("s0", electing, 108.9).leaderless_for is None
    assert progress.observe("s0", electing, 109.0).leaderless_for == 3.0


def test_a_shard_where_nobody_answers_has_no_leader() -> None:
    progress = watch()
    silent: dict[str, dict[str, Any] | None] = {"r0": None, "r1": None, "r2": None}
    progress.observe("s0", silent, 100.0)
    assert progress.observe("s0", silent, 103.0).leaderless_for == 3.0


def test_shards_are_watched_separately() -> None:
    progress = watch()
    leaderless: dict[str, dict[str, Any] | None] = {"r0": raft(1, 1, "candidate")}
    led: dict[str, dict[str, Any] | None] = {"q0": raft(1, 1, "leader")}
    progress.observe("s0", leaderless, 100.0)
    progress.observe("s1", led, 100.0)
    assert progress.observe("s1", led, 104.0).leaderless_for is None
    assert progress.observe("s0", leaderless, 104.0).leaderless_for == 4.0


@pytest.mark.parametrize(
    ("reports", "leader"),
    [
        ({"r0": raft(1, 1, "leader", 4), "r1": raft(1, 1, "follower", 4)}, "r0"),
        # followers in the leader's term, the leader itself silent (paused, unreachable): no leader
        ({"r1": raft(1, 1, "follower", 4), "r2": raft(1, 1, "follower", 4)}, None),
        # a deposed leader still in its old term while the others elect in a newer one
        ({"r0": raft(1, 1, "leader", 4), "r1": raft(1, 1, "candidate", 5)}, None),
        # a lagging follower still in an older term does not unseat the current leader
        ({"r0": raft(1, 1, "follower", 3), "r1": raft(1, 1, "leader", 4)}, "r1"),
        ({}, None),
    ],
)
def test_leader_of_counts_only_an_answering_leader_of_the_newest_term(
    reports: dict[str, dict[str, Any]], leader: str | None
) -> None:
    assert leader_of(reports) == leader


# -- 5. the monitor with fake replicas ----------------------------------------------------


def cluster_config(**integrity: Any) -> ClusterConfig:
    replicas = [(f"s0r{r}", f"127.0.0.1:{7100 + r}", f"127.0.0.1:{8100 + r}", f"data/s0r{r}") for r in range(3)]
    text = render_config(
        new_secret(),
        "examples.people",
        [("s0", replicas)],
        [("d0", "127.0.0.1:8000")],
        sections={"integrity": {"checkpoint_interval": 5, **integrity}},
    )
    return parse_config(tomllib.loads(text), Path("/tmp/cluster.toml"))


class FakeReplicas:
    """The monitor's client: each replica a real state machine; ``down`` ones do not answer.

    The Raft part of each report says s0r0 leads in term 1 and everyone has
    applied all it committed, unless ``raft[replica]`` says otherwise.
    """

    def __init__(self, config: ClusterConfig, fingerprints: dict[str, str] | None = None) -> None:
        fingerprints = fingerprints or {}
        self.machines = {
            r.id: owning_all(
                PEOPLE,
                local_fingerprint=fingerprints.get(r.id, "a"),
                checkpoint_interval=config.integrity.checkpoint_interval,
            )
            for s in config.shards
            for r in s.replicas
        }
        self.down: set[str] = set()
        self.asked: list[str] = []
        self.raft: dict[str, dict[str, Any]] = {r: {} for r in self.machines}

    def feed(self, commands: list[dict[str, Any]], first_index: int = 1) -> None:
        for offset, command in enumerate(commands):
            for machine in self.machines.values():
                machine.apply(command, index=first_index + offset)

    async def integrity(self, replica: ReplicaConfig, timeout: float = 1.0) -> dict[str, Any]:
        self.asked.append(replica.id)
        if replica.id in self.down:
            raise ShardUnavailable(f"replica {replica.id} unreachable: fake", replica=replica.id)
        machine = self.machines[replica.id]
        role = "leader" if replica.id == "s0r0" else "follower"
        report: dict[str, Any] = json_round_trip(
            {**machine.integrity(), **raft(machine.applied_index, machine.applied_index, role), **self.raft[replica.id]}
        )
        return report


def monitor_for(
    config: ClusterConfig, replicas: FakeReplicas, clock: Clock | None = None
) -> tuple[IntegrityMonitor, AlertBook, set[str], ShardConfig]:
    alerts = AlertBook()
    flagged: set[str] = set()
    monitor = IntegrityMonitor(config, replicas, alerts, flagged, clock or time.monotonic)  # type: ignore[arg-type]
    return monitor, alerts, flagged, config.shard("s0")


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def active(alerts: AlertBook) -> set[tuple[str, str, str | None]]:
    return set(alerts.active)


def alert_log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "docraft.alerts" and r.levelname == "ERROR"]


def test_config_sections_reach_the_integrity_settings() -> None:
    config = cluster_config(unreachable_after=0.25, monitor_interval=0.05, apply_stall_after=7, no_leader_after=1.5)
    assert config.integrity.unreachable_after == 0.25
    assert config.integrity.monitor_interval == 0.05
    assert config.integrity.checkpoint_interval == 5
    assert config.integrity.apply_stall_after == 7
    assert config.integrity.no_leader_after == 1.5
    defaults = cluster_config().integrity
    assert (defaults.apply_stall_after, defaults.no_leader_after) == (5.0, 3.0)


def test_monitor_raises_divergence_once_and_clears_it_when_the_replica_agrees(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = cluster_config()
    replicas = FakeReplicas(config)
    replicas.feed([set_fingerprint("a", initial=True), *(insert_user(i) for i in range(11))])
    monitor, alerts, flagged, shard = monitor_for(config, replicas)

    async def scenario() -> None:
        await monitor.check(shard)
        assert active(alerts) == set() and flagged == set()
        corrupt(replicas.machines["s0r1"], "User", 4, {"country": "XX"})
        for _ in range(3):
            await monitor.check(shard)
            assert active(alerts) == {("divergence", "s0", "s0r1")}
            assert flagged == {"s0r1"}
        alert = alerts.active[("divergence", "s0", "s0r1")]
        assert alert.index == 12  # the newest index all three report
        assert alert.digests == {r: m.digest() for r, m in replicas.machines.items()}
        assert len(alerts.recent) == 1
        assert len(alert_log_lines(caplog)) == 1
        # repaired: the replica agrees again, the alert clears and the flag lifts
        corrupt(replicas.machines["s0r1"], "User", 4, {"country": "FR"})
        await monitor.check(shard)
        assert active(alerts) == set() and flagged == set()
        recent = alerts.to_json()["recent"]
        assert [(a["kind"], a["replica"], a["active"]) for a in recent] == [("divergence", "s0r1", False)]
        assert recent[0]["cleared_at"] is not None

    asyncio.run(scenario())
    assert replicas.asked.count("s0r1") == 5


def test_monitor_keeps_flags_the_router_set_for_other_replicas() -> None:
    config = cluster_config()
    replicas = FakeReplicas(config)
    replicas.feed([insert_user(i) for i in range(3)])
    monitor, alerts, flagged, shard = monitor_for(config, replicas)
    flagged.add("elsewhere")
    corrupt(replicas.machines["s0r0"], "User", 1, {"city": "x"})
    asyncio.run(monitor.check(shard))
    assert flagged == {"elsewhere", "s0r0"}
    assert monitor.flagged is flagged
    assert set(alerts.active) == {("divergence", "s0", "s0r0")}


def test_monitor_raises_no_majority_when_every_replica_differs() -> None:
    config = cluster_config()
    replicas = FakeReplicas(config)
    replicas.feed([insert_user(i) for i in range(3)])
    monitor, alerts, flagged, shard = monitor_for(config, replicas)

    async def scenario() -> None:
        corrupt(replicas.machines["s0r1"], "User", 1, {"city": "one"})
        corrupt(replicas.machines["s0r2"], "User", 1, {"city": "two"})
        await monitor.check(shard)
        assert active(alerts) == {("no_majority", "s0", None)}
        assert alerts.active[("no_majority", "s0", None)].index == 3
        corrupt(replicas.machines["s0r1"], "User", 1, {"city": ""})
        corrupt(replicas.machines["s0r2"], "User", 1, {"city": ""})
        await monitor.check(shard)
        assert active(alerts) == set() and flagged == set()

    asyncio.run(scenario())


def test_monitor_raises_code_mismatch_and_no_divergence_for_the_wrong_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = cluster_config()
    replicas = FakeReplicas(config, fingerprints={"s0r2": "b"})
    replicas.feed([set_fingerprint("a", initial=True), *(insert_user(i) for i in range(7))])
    # s0r2 refused every insert, so its digest differs as well as its code
    assert replicas.machines["s0r2"].digest() != replicas.machines["s0r0"].digest()
    assert judge({r: m.integrity() for r, m in replicas.machines.items()}, 3).divergent.keys() == {"s0r2"}
    monitor, alerts, flagged, shard = monitor_for(config, replicas)

    async def scenario() -> None:
        for _ in range(2):
            await monitor.check(shard)
            assert active(alerts) == {("code_mismatch", "s0", "s0r2")}
            assert flagged == {"s0r2"}
        alert = alerts.active[("code_mismatch", "s0", "s0r2")]
        assert alert.digests == {"cluster": "a", "local": "b"}
        assert alert.index == 8
        assert len(alert_log_lines(caplog)) == 1
        # redeployed with the cluster's code and a snapshot from a healthy replica
        fixed = owning_all(PEOPLE, local_fingerprint="a", checkpoint_interval=5)
        fixed.restore(json_round_trip(replicas.machines["s0r0"].snapshot()))
        replicas.machines["s0r2"] = fixed
        await monitor.check(shard)
        assert active(alerts) == set() and flagged == set()

    asyncio.run(scenario())


def test_replica_unreachable_only_after_the_configured_silence_and_cleared_on_answer() -> None:
    silence = 0.4
    config = cluster_config(unreachable_after=silence)
    replicas = FakeReplicas(config)
    replicas.feed([insert_user(i) for i in range(3)])
    replicas.down.add("s0r1")
    key = ("replica_unreachable", "s0", "s0r1")

    async def scenario() -> None:
        constructed = time.monotonic()
        monitor, alerts, flagged, shard = monitor_for(config, replicas)
        await monitor.check(shard)
        assert time.monotonic() - constructed < silence, "the first round came too late to test"
        assert active(alerts) == set()
        deadline = constructed + 5.0
        while True:
            asked_at = time.monotonic()
            await monitor.check(shard)
            if alerts.is_active(*key):
                break
            assert time.monotonic() < deadline, "replica_unreachable never raised"
            await asyncio.sleep(0.02)  # the monitor's next round, not synchronisation
        assert asked_at - constructed >= silence - 0.05
        assert active(alerts) == {key}
        assert alerts.active[key].message.startswith("no answer for ")
        assert flagged == set()  # silence alone flags nothing: reads fail over by themselves
        await monitor.check(shard)
        assert len(alerts.recent) == 1
        replicas.down.clear()
        await monitor.check(shard)
        assert active(alerts) == set()
        assert alerts.to_json()["recent"][0]["cleared_at"] is not None

    asyncio.run(scenario())


def test_divergent_replica_stays_flagged_when_a_healthy_replica_goes_silent() -> None:
    config = cluster_config()
    replicas = FakeReplicas(config)
    replicas.feed([insert_user(i) for i in range(12)])  # checkpoints at 5 and 10, all agreeing
    monitor, alerts, flagged, shard = monitor_for(config, replicas)

    async def scenario() -> None:
        corrupt(replicas.machines["s0r2"], "User", 11, {"city": "changed at 12"})
        await monitor.check(shard)
        assert flagged == {"s0r2"}
        replicas.down.add("s0r1")
        await monitor.check(shard)
        # s0r0 and s0r2 still disagree at 12: nothing shows s0r2 is whole again
        assert flagged == {"s0r2"}
        assert alerts.is_active("divergence", "s0", "s0r2")

    asyncio.run(scenario())


def test_monitor_raises_apply_stalled_after_the_threshold_and_clears_it(caplog: pytest.LogCaptureFixture) -> None:
    config = cluster_config(apply_stall_after=5.0)
    replicas = FakeReplicas(config)
    replicas.feed([insert_user(i) for i in range(3)])
    clock = Clock()
    monitor, alerts, flagged, shard = monitor_for(config, replicas, clock)
    key = ("apply_stalled", "s0", "s0r1")

    async def scenario() -> None:
        replicas.raft["s0r1"] = {"commit_index": 9, "raft_applied_index": 6}
        for _ in range(5):
            await monitor.check(shard)
            assert active(alerts) == set()
            clock.now += 0.99
        clock.now += 0.05
        replicas.raft["s0r1"]["commit_index"] = 12  # the group goes on committing meanwhile
        await monitor.check(shard)
        assert active(alerts) == {key}
        alert = alerts.active[key]
        assert alert.index == 6
        assert alert.message == (
            "replica s0r1 has not applied log index 9 in the 5.0s since it reported it committed "
            "(applied up to 6, committed up to 12)"
        )
        assert flagged == set()  # it serves what it applied; reads with a staleness bound go elsewhere
        assert alert_log_lines(caplog) == [f"ALERT apply_stalled shard=s0 replica=s0r1 index=6: {alert.message}"]
        replicas.raft["s0r1"] = {"commit_index": 12, "raft_applied_index": 12}
        clock.now += 1.0
        await monitor.check(shard)
        assert active(alerts) == set()
        assert [(a["kind"], a["active"]) for a in alerts.to_json()["recent"]] == [("apply_stalled", False)]

    asyncio.run(scenario())


def test_monitor_raises_no_leader_for_the_shard_and_clears_it_when_one_is_elected() -> None:
    config = cluster_config(no_leader_after=3.0, unreachable_after=60.0)
    replicas = FakeReplicas(config)
    clock = Clock()
    monitor, alerts, flagged, shard = monitor_for(config, replicas, clock)
    key = ("no_leader", "s0", None)

    async def scenario() -> None:
        await monitor.check(shard)
        replicas.raft["s0r0"] = {"role": "candidate", "term": 2}
        replicas.raft["s0r1"] = {"role": "candidate", "term": 2}
        replicas.down.add("s0r2")
        started = clock.now = clock.now + 1.0
        for elapsed in (0.0, 1.0, 2.0, 2.99):
            clock.now = started + elapsed
            await monitor.check(shard)
            assert active(alerts) == set()
        clock.now = started + 3.0
        await monitor.check(shard)
        assert active(alerts) == {key}
        assert alerts.active[key].message == (
            "shard s0 has had no leader for 3.0s "
            "(s0r0: candidate in term 2; s0r1: candidate in term 2; s0r2: no answer)"
        )
        assert flagged == set()
        replicas.raft["s0r1"] = {"role": "leader", "term": 2}
        clock.now += 1.0
        await monitor.check(shard)
        assert active(alerts) == set()

    asyncio.run(scenario())


@pytest.mark.parametrize(("kind", "flags"), [("entries_lost", False), ("snapshot_unloadable", True)])
def test_monitor_raises_a_fault_the_replica_reports_while_it_reports_it(kind: str, flags: bool) -> None:
    config = cluster_config()
    replicas = FakeReplicas(config)
    replicas.feed([insert_user(i) for i in range(3)])
    monitor, alerts, flagged, shard = monitor_for(config, replicas, Clock())
    key = (kind, "s0", "s0r2")

    async def scenario() -> None:
        replicas.raft["s0r2"] = {"fault": {"kind": kind, "message": "it says why"}}
        for _ in range(2):
            await monitor.check(shard)
            assert active(alerts) == {key}
            assert flagged == ({"s0r2"} if flags else set())
        assert alerts.active[key].message == "replica s0r2: it says why"
        assert alerts.active[key].index == 3
        assert len(alerts.recent) == 1
        replicas.raft["s0r2"] = {}
        await monitor.check(shard)
        assert active(alerts) == set() and flagged == set()

    asyncio.run(scenario())


def test_a_flag_lifts_only_when_every_alert_that_flags_the_replica_has_cleared() -> None:
    config = cluster_config()
    replicas = FakeReplicas(config)
    replicas.feed([insert_user(i) for i in range(3)])
    monitor, alerts, flagged, shard = monitor_for(config, replicas, Clock())

    async def scenario() -> None:
        corrupt(replicas.machines["s0r1"], "User", 1, {"city": "x"})
        replicas.raft["s0r1"] = {"fault": {"kind": "snapshot_unloadable", "message": "bad JSON"}}
        await monitor.check(shard)
        assert active(alerts) == {("divergence", "s0", "s0r1"), ("snapshot_unloadable", "s0", "s0r1")}
        replicas.raft["s0r1"] = {}
        await monitor.check(shard)
        assert active(alerts) == {("divergence", "s0", "s0r1")}
        assert flagged == {"s0r1"}
        corrupt(replicas.machines["s0r1"], "User", 1, {"city": ""})
        await monitor.check(shard)
        assert active(alerts) == set() and flagged == set()

    asyncio.run(scenario())


# -- 6. alerts and webhooks ---------------------------------------------------------------


def test_every_alert_kind_is_known_and_documented_in_the_readme() -> None:
    assert {"apply_stalled", "no_leader", "entries_lost", "snapshot_unloadable"} <= set(KINDS)
    for kind in KINDS:
        assert f"| `{kind}` |" in README, f"alert kind {kind} is not in README.md's alerts table"
    with pytest.raises(ValueError, match="unknown alert kind 'divergance'"):
        Alert("divergance", "s0", "s0r1", None, {}, "a typo")


def divergence(replica: str = "s0r1") -> Alert:
    return Alert("divergence", "s0", replica, 12, {"s0r0": "x", replica: "y"}, f"{replica} disagrees")


def test_alert_book_json_shows_active_and_recent_alerts() -> None:
    book = AlertBook()
    first, second = divergence("s0r1"), Alert("replica_unreachable", "s0", "s0r2", None, {}, "silent")
    book.raise_alert(first)
    book.raise_alert(second)
    book.raise_alert(divergence("s0r1"))  # already active: ignored
    assert book.is_active("divergence", "s0", "s0r1")
    assert [a["replica"] for a in book.to_json()["active"]] == ["s0r1", "s0r2"]
    book.clear("divergence", "s0", "s0r1")
    book.clear("divergence", "s0", "s0r1")  # clearing twice changes nothing
    body = json_round_trip(book.to_json())
    assert [a["kind"] for a in body["active"]] == ["replica_unreachable"]
    assert body["active"][0]["active"] is True and body["active"][0]["cleared_at"] is None
    # newest first; the cleared alert stays in recent, with when it cleared
    assert [(a["kind"], a["active"]) for a in body["recent"]] == [
        ("replica_unreachable", True),
        ("divergence", False),
    ]
    cleared = body["recent"][1]
    assert cleared["cleared_at"] >= cleared["raised_at"]
    assert cleared["digests"] == {"s0r0": "x", "s0r1": "y"} and cleared["index"] == 12
    # raised again after clearing: a new alert
    book.raise_alert(divergence("s0r1"))
    assert len(book.to_json()["recent"]) == 3


def test_alert_book_keeps_a_bounded_recent_list() -> None:
    book = AlertBook(recent=2)
    for r in ("a", "b", "c"):
        book.raise_alert(divergence(r))
    assert [a["replica"] for a in book.to_json()["recent"]] == ["c", "b"]
    assert len(book.active) == 3


class Hook:
    """A webhook receiver: answers 500 to the first ``failures`` posts, then 200."""

    def __init__(self) -> None:
        self.failures = 0
        self.bodies: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.arrived: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.hold: asyncio.Event | None = None


class HookHandler(RequestHandler):
    def initialize(self, hook: Hook) -> None:
        self.hook = hook

    async def post(self) -> None:
        body = ujson.loads(self.request.body)
        self.hook.bodies.append(body)
        self.hook.content_types.append(self.request.headers.get("Content-Type", ""))
        self.hook.arrived.put_nowait(body)
        if self.hook.hold is not None:
            await self.hook.hold.wait()
        if len(self.hook.bodies) <= self.hook.failures:
            self.set_status(500)
        self.finish({"attempt": len(self.hook.bodies)})


async def deliveries_done(book: AlertBook, timeout: float = 8.0) -> list[Any]:
    """Wait for the book's background deliveries; their results (exceptions included)."""
    return await asyncio.wait_for(asyncio.gather(*book._deliveries, return_exceptions=True), timeout)


class WebhookTest(AsyncHTTPTestCase):
    def get_app(self) -> Application:
        self.hook = Hook()
        return Application([("/hook", HookHandler, {"hook": self.hook})], log_function=lambda _: None)

    async def next_post(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.hook.arrived.get(), 5.0)

    @gen_test(timeout=10)
    async def test_raised_and_cleared_alerts_are_posted_as_json(self) -> None:
        book = AlertBook(webhooks=(self.get_url("/hook"),))
        alert = divergence()
        book.raise_alert(alert)
        assert await self.next_post() == json_round_trip(alert.to_json())
        assert await deliveries_done(book) == [None]
        book.clear("divergence", "s0", "s0r1")
        cleared = await self.next_post()
        assert (cleared["kind"], cleared["replica"], cleared["active"]) == ("divergence", "s0r1", False)
        assert cleared["cleared_at"] is not None
        assert await deliveries_done(book) == [None]
        assert self.hook.content_types == ["application/json"] * 2
        assert len(self.hook.bodies) == 2

    @gen_test(timeout=10)
    async def test_webhook_failing_twice_gets_the_alert_on_the_third_attempt(self) -> None:
        self.hook.failures = 2
        book = AlertBook(webhooks=(self.get_url("/hook"),))
        alert = divergence()
        started = time.monotonic()
        with self.assertLogs("docraft.alerts", level="WARNING") as logs:
            book.raise_alert(alert)
            assert await deliveries_done(book) == [None]
        assert [r.getMessage() for r in logs.records] == [
            "ALERT divergence shard=s0 replica=s0r1 index=12: s0r1 disagrees"
        ]
        assert self.hook.bodies == [json_round_trip(alert.to_json())] * 3
        # backoff: 0.5 s after the first failure, 1 s after the second
        assert time.monotonic() - started >= 1.4

    @gen_test(timeout=10)
    async def test_webhook_that_keeps_failing_is_given_up_after_the_attempts(self) -> None:
        self.hook.failures = 99
        book = AlertBook(webhooks=(self.get_url("/hook"),), attempts=2)
        with self.assertLogs("docraft.alerts", level="ERROR") as logs:
            book.raise_alert(divergence())
            assert await deliveries_done(book) == [None]
        assert len(self.hook.bodies) == 2
        assert any("did not take alert divergence after 2 attempts" in line for line in logs.output)

    @gen_test(timeout=10)
    async def test_raise_alert_returns_before_delivery_completes(self) -> None:
        self.hook.hold = asyncio.Event()
        book = AlertBook(webhooks=(self.get_url("/hook"),))
        book.raise_alert(divergence("s0r1"))
        assert self.hook.bodies == []  # nothing was sent while raise_alert ran
        assert (await self.next_post())["replica"] == "s0r1"
        # the webhook holds its answer; the book goes on raising alerts meanwhile
        pending = list(book._deliveries)
        assert len(pending) == 1 and not pending[0].done()
        book.raise_alert(divergence("s0r2"))
        assert (await self.next_post())["replica"] == "s0r2"
        assert book.is_active("divergence", "s0", "s0r2")
        assert not pending[0].done()
        self.hook.hold.set()
        assert await deliveries_done(book) == [None, None]
        assert book._deliveries == set()

    @gen_test(timeout=10)
    async def test_unreachable_webhook_is_retried_then_given_up(self) -> None:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        try:
            url = f"http://127.0.0.1:{closed.getsockname()[1]}/hook"
            book = AlertBook(webhooks=(url,), attempts=2)
            with self.assertLogs("docraft.alerts", level="ERROR") as logs:
                book.raise_alert(divergence())
                results = await deliveries_done(book)
            assert results == [None], results
            assert any("did not take alert divergence after 2 attempts" in line for line in logs.output)
        finally:
            closed.close()
