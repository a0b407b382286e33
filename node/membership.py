"""Adding and removing a shard's replicas: the rules, the replica's side, and the operator's flows.

A group changes one voter at a time (Raft's single-server change, on
PySyncObj's dynamic membership: ``consensus.raft_member``). A new replica
starts as a **learner** (it copies the log, never votes: ``consensus.members``),
is **promoted** once caught up (it restarts as a ``joining`` member that does
not stand for election), and is then **added** by the leader, which first
checks it answers as ``joining`` and caught up. A replica is asked to **stand
down** (it stops standing for election; a leader hands leadership over first),
removed by the leader, and then **retired**: it stops and never starts on that
data directory again.

**How a replica with an empty data directory starts** (``starting_membership``):
only the first start of a new group (``docraft node --bootstrap``) makes it a
voter of the cluster file's list, and not when a listed peer shows a group that
exists without it (``bootstrap_refusal``). Otherwise it asks its listed peers
until one answers and joins as a learner of the voters the leader reports
(``joined_membership``): a replica that lost its disk must never vote again with
an empty log, or the group could elect a leader that lacks committed entries.

**The majority rule** (``refusal``), checked by the leader before proposing:
a voter is healthy when it answered within ``election_max`` and holds what
the leader had committed when the check began (the leader itself always is).
Adding needs ``healthy + 1`` (the new voter) to be a majority of the new
group; removing X needs the healthy voters other than X to be a majority of
the group without X. Refusals are ``MembershipRefused`` with a ``reason``.

After each change the flow commits ``set_members`` (voters and learners with
their HTTP addresses, from the operator's cluster file), so routers learn a
group's replicas from the group itself.

Threads: ``change``, ``transfer`` and the replica-side steps run on a
replica's event loop; ``add``, ``remove`` and ``repair`` are blocking CLI
code over ``node.admin.http_json``, every step safe to re-run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from consensus.members import Membership, read_membership, retire
from consensus.replica import JOURNAL_FILE
from models.errors import BadRequest, DocraftError, MembershipRefused, OutcomeUnknown, RepairRefused
from node.admin import agrees, http_json
from node.config import ClusterConfig, ConfigError, ReplicaConfig, load_config
from node.repair import restart
from node.shard_client import ShardClient
from node.shard_service import ShardService
from node.signing import internal_key

log = logging.getLogger("docraft.membership")

CATCH_UP_WAIT = 2.0  # seconds the leader waits for voters to hold what it had committed before refusing
CHANGE_TIMEOUT = 10.0  # seconds a proposed change may take to commit
TRANSFER_TRIES = 20  # a transfer is denied while the target trails by an entry: retry this often...
TRANSFER_RETRY = 0.05  # ...this far apart
OPS = ("add", "remove")
JOIN_ASK_TIMEOUT = 1.0  # seconds a replica with an empty data directory waits for each listed peer's status
JOIN_ASK_EVERY = 0.5  # seconds between its rounds of questions...
JOIN_WAIT_LOG = 5.0  # ...a line in its log this often while nobody answers...
FOLLOWERS_ONLY_AFTER = 5.0  # ...and after this long without a leader's answer, the followers' best one will do
# Entries a joining replica may trail the leader's commit index by to be added: what the group commits
# while it restarts from learner to joining (it copies them once added).
CATCH_UP_SLACK = 1000
STAND_DOWN = 60.0  # seconds a replica about to be removed stands out of elections


# -- the rules (pure) ---------------------------------------------------------------------------


def healthy_voters(status: dict[str, Any], committed: int, election_max: float) -> set[str]:
    """The voters of the leader's ``status`` that answered lately and hold index ``committed`` (the leader too)."""
    ages, matched = status.get("last_response_age", {}), status.get("match_index", {})
    healthy = {status["raft"]}
    for voter in status["voters"]:
        if ages.get(voter, float("inf")) < election_max and matched.get(voter, -1) >= committed:
            healthy.add(voter)
    return healthy


def refusal(
    op: str, address: str, status: dict[str, Any], committed: int, election_max: float
) -> MembershipRefused | None:
    """Why the leader whose ``/_shard/status`` is ``status`` must not ``op`` the voter at ``address``; or None.

    ``committed`` is the leader's commit index when the check began.
    """
    voters = set(status["voters"])
    if status.get("membership_change_pending"):
        return MembershipRefused(
            "another membership change of this group is not committed yet", reason="change_pending"
        )
    healthy = healthy_voters(status, committed, election_max)
    if op == "add":
        if address in voters:
            return MembershipRefused(f"{address} is a voter already", reason="already_voter")
        needed = (len(voters) + 1) // 2 + 1
        if len(healthy) + 1 < needed:
            return _no_majority(healthy, needed - 1, f"adding {address}")
        return None
    if address not in voters:
        return MembershipRefused(f"{address} is not a voter of this group", reason="not_a_voter")
    if address == status["raft"]:
        return MembershipRefused(f"{address} leads the group: transfer leadership first", reason="leads")
    needed = (len(voters) - 1) // 2 + 1
    if len(healthy - {address}) < needed:
        return _no_majority(healthy - {address}, needed, f"removing {address}")
    return None


def _no_majority(healthy: set[str], needed: int, what: str) -> MembershipRefused:
    return MembershipRefused(
        f"{what} needs {needed} healthy voters besides it, and only {len(healthy)} are "
        f"({', '.join(sorted(healthy))}): the group could not commit without a voter that is down or behind",
        reason="no_majority",
        healthy=sorted(healthy),
    )


def bootstrap_refusal(own: str, answers: list[dict[str, Any]]) -> str | None:
    """Why a replica at Raft address ``own`` must not bootstrap a group (``docraft node --bootstrap``), from
    the ``/_shard/status`` its listed peers answered; or None.

    A peer whose voters lack ``own`` and that leads or has committed entries shows a group that exists
    without this replica: bootstrapping would make a second group of the same shard.
    """
    for answer in answers:
        voters = answer.get("voters") or []
        if own not in voters and (answer.get("role") == "leader" or answer.get("commit_index", 0) > 0):
            return (
                f"replica {answer.get('raft')} belongs to a group of voters {', '.join(voters)} without this "
                "replica: start it without --bootstrap and run docraft replica add"
            )
    return None


def joined_membership(answers: list[dict[str, Any]], waited: float) -> Membership | None:
    """How a replica with an empty data directory joins its group: a learner of the voters its leader
    reports, from the ``/_shard/status`` its listed peers answered after ``waited`` seconds of asking;
    None to ask again.

    The leader's answer, not the highest term's (a removed replica campaigning alone inflates its term).
    When only followers answer, the one with the highest commit index will do after
    ``FOLLOWERS_ONLY_AFTER`` seconds.
    """
    leaders = [a for a in answers if a.get("role") == "leader" and a.get("voters")]
    if leaders:
        chosen = max(leaders, key=lambda a: (a.get("term", -1), a.get("commit_index", -1)))
    else:
        followers = [a for a in answers if a.get("voters")]
        if not followers or waited < FOLLOWERS_ONLY_AFTER:
            return None
        chosen = max(followers, key=lambda a: a.get("commit_index", -1))
    return Membership("learner", tuple(sorted(chosen["voters"])))


# -- a replica's side (its event loop) ---------------------------------------------------------


class BootstrapRefused(Exception):
    """A replica started with ``--bootstrap`` found its group running without it (``bootstrap_refusal``)."""


async def starting_membership(config: ClusterConfig, replica: ReplicaConfig, bootstrap: bool) -> Membership:
    """How ``replica`` starts (see the module docstring): as ``raft.members`` records; a voter of the file's
    list for a data directory from before membership changes (a journal, no record); for an empty one with
    ``bootstrap`` (or in a group of one), a voter of the file's list after one round of questions to its
    peers (a peer of a new group, not yet listening, refuses at once); else, once a peer answers,
    ``joined_membership``.

    Raises ``BootstrapRefused``. Event loop; waits as long as no listed peer answers.
    """
    recorded = read_membership(replica.data_dir)
    if recorded is not None:
        return recorded
    group = config.shard(replica.shard).replicas
    listed = [r.raft for r in group]
    if (replica.data_dir / JOURNAL_FILE).exists():
        return Membership("voter", tuple(sorted(listed)))
    client = ShardClient(config)
    others = [r for r in group if r.id != replica.id]

    async def ask(peer: ReplicaConfig) -> dict[str, Any] | None:
        try:
            return await client.status(peer, timeout=JOIN_ASK_TIMEOUT)
        except DocraftError:
            return None

    async def answers() -> list[dict[str, Any]]:
        return [a for a in await asyncio.gather(*(ask(r) for r in others)) if a is not None]

    if not others:  # a group of one: nobody to join, so its first start is the group's
        return Membership("voter", tuple(listed))
    if bootstrap:
        why = bootstrap_refusal(replica.raft, await answers())
        if why is not None:
            raise BootstrapRefused(why)
        return Membership("voter", tuple(sorted(listed)))
    started = last_said = time.monotonic()
    first_answer: float | None = None
    while True:
        heard = await answers()
        now = time.monotonic()
        if heard and first_answer is None:
            first_answer = now
        joined = joined_membership(heard, now - first_answer) if first_answer is not None else None
        if joined is not None:
            break
        if now - last_said >= JOIN_WAIT_LOG or last_said == started:
            log.warning(
                "replica %s: its data directory is empty; waiting for a leader of shard %s to answer "
                "(%.0fs so far; start it with --bootstrap only for a new group)",
                replica.id,
                replica.shard,
                now - started,
            )
            last_said = now
        await asyncio.sleep(JOIN_ASK_EVERY)
    if replica.raft in joined.voters:
        log.error(
            "replica %s: its data directory is empty but its group counts it as a voter (a lost disk?): "
            "run docraft repair --replica %s; it runs as a learner until then",
            replica.id,
            replica.id,
        )
    return joined


async def change(service: ShardService, op: str, address: str) -> None:
    """On the leader: check the rule (waiting up to ``CATCH_UP_WAIT`` for voters to catch up), then propose.

    Raises ``BadRequest``, ``NotLeader``, ``MembershipRefused`` or ``OutcomeUnknown``.
    """
    if op not in OPS:
        raise BadRequest(f"op must be one of {', '.join(OPS)}", param="op")
    replica = service.replica
    if not replica._isLeader():
        raise replica.not_leader()
    committed = replica.raftCommitIndex
    deadline = time.monotonic() + CATCH_UP_WAIT
    election_max = replica.timings.election_max
    while (why := refusal(op, address, service.status(), committed, election_max)) is not None:
        if why.details["reason"] != "no_majority" or time.monotonic() >= deadline:
            raise why
        await asyncio.sleep(0.05)
    if op == "add":
        await _check_joining(service, address)
    try:
        await asyncio.wait_for(replica.change_membership(op, address), CHANGE_TIMEOUT)
    except TimeoutError:
        raise OutcomeUnknown(f"the change ({op} {address}) did not commit within {CHANGE_TIMEOUT:.0f}s") from None


async def _check_joining(service: ShardService, address: str) -> None:
    """On the leader, before adding the voter at ``address``: it must answer its status as ``joining`` and
    have applied what the leader committed (but ``CATCH_UP_SLACK`` entries) within ``CATCH_UP_WAIT`` (a
    restarted member replays its log); else ``MembershipRefused`` (``not_caught_up``). Its HTTP address
    comes from the cluster file as it is on disk now (an operator adds the replica's entry before adding
    it), or the one this replica started with."""
    config = service.shard_map.config
    with contextlib.suppress(ConfigError, OSError):
        config = load_config(config.path)
    target = next((r for s in config.shards for r in s.replicas if r.raft == address), None)
    if target is None:
        raise MembershipRefused(f"{address} is in no shard of {config.path}: add its entry", reason="not_caught_up")
    goal = service.replica.raftCommitIndex - CATCH_UP_SLACK
    client = ShardClient(config)
    deadline = time.monotonic() + CATCH_UP_WAIT
    while True:
        try:
            status = await client.status(target, timeout=JOIN_ASK_TIMEOUT)
        except DocraftError as exc:
            why = f"{target.id} ({address}) does not answer: {exc}"
            raise MembershipRefused(why, reason="not_caught_up") from None
        if status.get("mode") == "joining" and status.get("applied_index", -1) >= goal:
            return
        if status.get("mode") != "joining" or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    raise MembershipRefused(
        f"{target.id} ({address}) runs as {status.get('mode')} with index {status.get('applied_index')} "
        f"applied: only a promoted learner holding index {goal} may be added (docraft replica add)",
        reason="not_caught_up",
    )


async def transfer(service: ShardService, target: str | None) -> None:
    """Give up leadership for good: a leader sends ``timeout_now`` to ``target`` (or the most caught-up
    voter); then (a follower at once: ``target`` must be None) the replica stands out of elections and
    ignores ``timeout_now`` for ``STAND_DOWN`` seconds, as one its group is about to remove. See ``Replica``.

    Raises ``MembershipRefused`` (``not_caught_up``: nothing changed) or ``NotLeader`` (a follower asked
    to hand leadership to ``target``).
    """
    replica = service.replica
    if replica._isLeader():
        await replica.transfer_leadership(target)
    elif target is not None:
        raise replica.not_leader()
    replica.stand_down(STAND_DOWN)


def promote(service: ShardService) -> str:
    """On a learner: restart as ``joining`` (a member its leader may now add); returns the mode it goes to.

    A ``joining`` replica has nothing to do (``joining``); a voter is refused (``already_voter``).
    """
    membership = service.replica.membership()
    if membership.mode == "joining":
        return "joining"
    if membership.mode != "learner":
        raise MembershipRefused(f"replica {service.config.id} is a voter already", reason="already_voter")
    asyncio.get_running_loop().call_later(0.2, restart, service, Membership("joining", membership.voters), False)
    return "joining"


def leave(service: ShardService, voters: Any, then: str) -> None:
    """On a replica its group has removed (``voters`` are the leader's): ``retire`` (stop for good) or
    ``repair`` (discard its state, restart as a learner of ``voters``).

    Raises ``BadRequest`` for a malformed voter list, and for a replica still among ``voters`` (or
    when they are not given) ``MembershipRefused`` (``is_voter``) or, for a repair, ``RepairRefused``.
    """
    if voters is None:
        why = "no voter list given: the replica's group must have removed it first, and say so with the leader's"
        if then == "repair":
            raise RepairRefused(f"{why} (docraft repair does)")
        raise MembershipRefused(f"{why} (docraft replica remove does)", reason="is_voter")
    if not isinstance(voters, list) or not voters or not all(isinstance(v, str) for v in voters):
        raise BadRequest('the body must be {"voters": [RAFT_ADDRESS, ...]}, the leader\'s voters', param="voters")
    me = service.config
    if me.raft in voters:
        what = f"replica {me.id} is a voter of shard {me.shard}"
        if then == "repair":
            raise RepairRefused(f"{what}: docraft repair removes it from its group first", replica=me.id)
        raise MembershipRefused(f"{what}: remove it first (docraft replica remove)", reason="is_voter")
    loop = asyncio.get_running_loop()
    if then == "retire":
        retire(me.data_dir, f"removed from shard {me.shard} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        loop.call_later(0.2, os.kill, os.getpid(), signal.SIGTERM)  # a graceful stop: snapshot, exit 0
    else:
        loop.call_later(0.2, restart, service, Membership("learner", tuple(sorted(voters))), True)


# -- the operator's flows (blocking CLI code) -------------------------------------------------


class FlowFailed(Exception):
    """A flow stopped; ``code`` is the CLI's exit code (2: refused or unreachable, 1: not done in time)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Group:
    """One shard's replicas as the cluster file lists them, called as a cluster member."""

    config: ClusterConfig
    shard: str
    say: Callable[[str], None] = print

    @property
    def replicas(self) -> tuple[ReplicaConfig, ...]:
        return self.config.shard(self.shard).replicas

    def call(self, replica: ReplicaConfig, method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
        """``(status, body)`` of a signed call; ``(0, None)`` when ``replica`` does not answer."""
        try:
            return http_json(
                method, replica.http_url + path, body, timeout, key=internal_key(self.config.secret), ca=self.config.ca
            )
        except (OSError, ValueError):
            return 0, None

    def status(self, replica: ReplicaConfig) -> dict[str, Any] | None:
        code, body = self.call(replica, "GET", "/_shard/status", timeout=2.0)
        return body if code == 200 else None

    def leader(self, deadline: float, other_than: str | None = None) -> tuple[ReplicaConfig, dict[str, Any]]:
        """The replica leading the group in the newest term any answers with (not ``other_than``)."""
        while True:
            found = []
            for replica in self.replicas:
                status = self.status(replica)
                if status is not None and status["role"] == "leader" and replica.id != other_than:
                    found.append((status["term"], replica.id, replica, status))
            if found:
                _, _, replica, status = max(found)
                return replica, status
            _wait(deadline, f"no leader of shard {self.shard} answers")

    def wait_status(
        self, replica: ReplicaConfig, deadline: float, what: str, test: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        while True:
            status = self.status(replica)
            if status is not None and test(status):
                return status
            _wait(deadline, f"{replica.id} {what}", code=1)

    def post(self, replica: ReplicaConfig, path: str, body: Any) -> tuple[int, Any]:
        result: tuple[int, Any] = self.call(replica, "POST", path, body, timeout=CHANGE_TIMEOUT + 5)
        return result

    def set_members(self, deadline: float) -> None:
        """Commit ``set_members``: the leader's voters and the answering learners, with the file's addresses."""
        leader, status = self.leader(deadline)
        by_raft = {r.raft: r for r in self.replicas}

        def entry(raft: str) -> dict[str, Any]:
            known = by_raft.get(raft)
            if known is None:
                raise FlowFailed(f"voter {raft} of shard {self.shard} is not in {self.config.path}: add its entry")
            return {"id": known.id, "raft": raft, "http": known.http}

        learners = []
        for replica in self.replicas:
            answer = self.status(replica)
            if answer is not None and answer.get("mode") == "learner" and replica.raft not in status["voters"]:
                learners.append(entry(replica.raft))
        command = {
            "type": "set_members",
            "request_id": f"members:{uuid.uuid4().hex}",
            "voters": [entry(v) for v in status["voters"]],
            "learners": learners,
        }
        code, body = self.post(leader, "/_shard/write", command)
        if code != 200 or "error" in (body or {}):
            raise FlowFailed(f"the group changed, but set_members failed ({_message(body)}); run this again", 1)


def _wait(deadline: float, what: str, code: int = 1) -> None:
    if time.monotonic() >= deadline:
        raise FlowFailed(f"timed out: {what}", code)
    time.sleep(0.1)


def _message(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message"))
    return str(body)


def _change(group: Group, op: str, target: ReplicaConfig, deadline: float) -> None:
    """Propose ``op`` of ``target`` at the leader, following leadership, until it is committed."""
    while True:
        leader, _ = group.leader(deadline)
        code, body = group.post(leader, "/_admin/membership", {"op": op, "raft": target.raft})
        error = (body or {}).get("error") or {}
        if code == 200:
            return
        reason = (error.get("details") or {}).get("reason")
        if code == 409 and reason in ("already_voter", "not_a_voter"):
            return  # done by an earlier run
        if code == 409 and reason != "change_pending":
            raise FlowFailed(f"{op} {target.id} refused ({reason}): {error.get('message')}")
        if code not in (0, 409, 421, 503, 504):
            raise FlowFailed(f"{op} {target.id} failed: {_message(body)}")
        _wait(deadline, f"{op} {target.id}: {error.get('message', 'no answer')}")


def _check_new_code(group: Group, voters: list[str]) -> None:
    """Every answering voter must run dynamic membership (older code applies changes at commit, not append)."""
    for replica in group.replicas:
        status = group.status(replica) if replica.raft in voters else None
        if status is not None and not status.get("dynamic_membership"):
            raise FlowFailed(f"{replica.id} runs docraft without dynamic membership: upgrade every voter first")


def add(config: ClusterConfig, replica_id: str, timeout: float = 120.0, say: Callable[[str], None] = print) -> int:
    """``docraft replica add``: make the running replica ``replica_id`` a voter of its group. Exit code."""
    target = config.replica(replica_id)
    group = Group(config, target.shard, say)
    deadline = time.monotonic() + timeout
    try:
        _add(group, target, deadline)
    except FlowFailed as exc:
        say(f"docraft replica add: {exc}")
        return exc.code
    say(f"{replica_id} is a voter of shard {target.shard}")
    return 0


def _add(group: Group, target: ReplicaConfig, deadline: float) -> None:
    own = group.wait_status(target, deadline, "answers (start it first: docraft node)", lambda s: True)
    _, status = group.leader(deadline)
    if target.raft not in status["voters"]:
        _check_new_code(group, status["voters"])
        if own["mode"] == "voter":
            raise FlowFailed(
                f"{target.id} runs as a voter of its own, not a learner of the group: stop it, empty its data "
                "directory, start it again (it then joins as a learner) and run this again"
            )
        if own["mode"] == "learner":
            _catch_up(group, target, deadline)
            code, body = group.post(target, "/_admin/promote", {})
            if code not in (200, 202):
                raise FlowFailed(f"{target.id} was not promoted: {_message(body)}")
            group.wait_status(target, deadline, "restarts as joining", lambda s: s["mode"] in ("joining", "voter"))
        _change(group, "add", target, deadline)
    group.set_members(deadline)

    def voting(status: dict[str, Any]) -> bool:
        return status["mode"] == "voter" and status["fault"] is None

    group.wait_status(target, deadline, "becomes a caught-up voter", voting)


def _catch_up(group: Group, target: ReplicaConfig, deadline: float) -> None:
    """Wait until the learner ``target`` has applied what the leader had committed, printing progress."""
    _, status = group.leader(deadline)
    goal = status["commit_index"]
    shown = -1
    while True:
        own = group.status(target)
        applied = own["applied_index"] if own is not None else 0
        if own is not None and applied >= goal and own["fault"] is None:
            return
        if applied != shown:
            group.say(f"{target.id} catching up: applied {applied} of {goal}")
            shown = applied
        _wait(deadline, f"{target.id} catches up to index {goal}")


def remove(
    config: ClusterConfig,
    replica_id: str,
    timeout: float = 120.0,
    say: Callable[[str], None] = print,
    retire: bool = True,
) -> int:
    """``docraft replica remove``: take ``replica_id`` out of its group and (``retire``) stop it for good.

    Exit code: 0 done, 2 refused or unreachable, 1 not done in time.
    """
    target = config.replica(replica_id)
    group = Group(config, target.shard, say)
    try:
        voters = _remove(group, target, time.monotonic() + timeout)
        code, _ = group.post(target, "/_admin/retire", {"voters": voters}) if retire else (0, None)
    except FlowFailed as exc:
        say(f"docraft replica remove: {exc}")
        return exc.code
    outcome = "retired" if code == 200 else "still running" if not retire else "unreachable: not asked to stop"
    say(f"{replica_id} is out of shard {target.shard} ({outcome})")
    return 0


def _remove(group: Group, target: ReplicaConfig, deadline: float) -> list[str]:
    """Have ``target`` stand down (handing leadership over if it leads), remove it, commit ``set_members``;
    the voters after it.

    Standing down keeps it from campaigning alone once the leader stops reaching it (PySyncObj drops it
    before it has sent it its removal), which would inflate its term beyond the group's.
    """
    leader, status = group.leader(deadline)
    if target.raft in status["voters"]:
        _check_new_code(group, status["voters"])
        if leader.id == target.id:
            _hand_over(group, target, status["term"], deadline)
        elif group.post(target, "/_admin/transfer", {"to": None})[0] == 0:
            group.say(f"{target.id} does not answer: it is removed without standing down first")
        _change(group, "remove", target, deadline)
    group.set_members(deadline)
    _, status = group.leader(deadline)
    voters: list[str] = status["voters"]
    return voters


def _hand_over(group: Group, leader: ReplicaConfig, term: int, deadline: float) -> None:
    """Ask ``leader`` to hand leadership to a caught-up voter; wait for a new leader in a later term."""
    for _ in range(TRANSFER_TRIES):
        code, body = group.post(leader, "/_admin/transfer", {"to": None})
        if code == 200:
            break
        if code != 409:
            raise FlowFailed(f"{leader.id} did not hand leadership over: {_message(body)}")
        time.sleep(TRANSFER_RETRY)
    else:
        raise FlowFailed(f"{leader.id} leads and no voter caught up with it to take over; retry")
    new_leader, status = group.leader(deadline, other_than=leader.id)
    if status["term"] <= term:
        raise FlowFailed(f"{new_leader.id} claims leadership in term {status['term']}, not after {term}; retry", 1)
    group.say(f"{leader.id} handed leadership to {new_leader.id} (term {status['term']})")


def repair(config: ClusterConfig, replica_id: str, timeout: float = 120.0, say: Callable[[str], None] = print) -> int:
    """``docraft repair``: remove ``replica_id``, discard its state (keeping term, vote and acked index),
    and add it back once it has copied the group's; then wait until its digest agrees. Exit code."""
    target = config.replica(replica_id)
    group = Group(config, target.shard, say)
    deadline = time.monotonic() + timeout
    try:
        before = group.wait_status(target, deadline, "answers", lambda s: True)
        voters = _remove(group, target, deadline)
        code, body = group.post(target, "/_admin/repair", {"voters": voters})
        if code != 202:
            raise FlowFailed(f"{replica_id} did not discard its state: {_message(body)}")
        say(f"{replica_id} left shard {target.shard}, discarded its state and restarts as a learner...")
        group.wait_status(target, deadline, "restarts", lambda s: s["started_at"] != before["started_at"])
        _add(group, target, deadline)
        while not agrees(config, replica_id):
            _wait(deadline, f"{replica_id}'s digest agrees with its group")
    except FlowFailed as exc:
        say(f"docraft repair: {exc}")
        return exc.code
    say(f"{replica_id} is back in shard {target.shard} and agrees with its group")
    return 0
