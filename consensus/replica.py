"""One member of a shard's replica group, on PySyncObj Raft.

``Replica`` owns the ``StateMachine`` and drives it from PySyncObj's single
``@replicated`` entry point, ``apply_command(bytes)``. The command set is
defined inside the state machine, so the Raft wire format never changes when
docraft gains a command.

Threads: PySyncObj applies entries and runs callbacks on its own thread.
``submit`` and ``read`` are called on the Tornado loop and hand results back
to it with ``call_soon_threadsafe``; a lock keeps reads from seeing a
half-applied command. Nothing here blocks the loop.

Files in the data directory: ``raft.journal`` (the log, an mmap, see
``consensus.journal``), ``raft.journal.meta`` (term and vote),
``raft.journal.acked`` (the last index this replica acknowledged),
``snapshot.json`` (our JSON snapshot, written at PySyncObj's log compaction
by a forked child through the ``serializer`` hook: ``consensus.snapshots``) and ``raft.members`` (its mode and the
group's voters as its log last said: ``consensus.members``, rewritten on
every change, before the member acknowledges it). With ``fsync`` on, each is flushed to disk
before the replica acknowledges what it holds.

Raft itself, with docraft's fixes to PySyncObj (journal, faults, lease,
dead links), is ``consensus.raft_member.RaftMember``; a replica is that plus
the state machine.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ujson
from pysyncobj import FAIL_REASON, replicated
from pysyncobj.node import TCPNode

from consensus.members import Membership, write_membership
from consensus.raft_member import RaftMember, RaftTimings, ReplicaFault, truncations
from consensus.raft_stats import RaftStats
from consensus.state_machine import Result, StateMachine
from models.errors import DocraftError, MembershipRefused, NoLeader, NotLeader, OutcomeUnknown, ReplicaFaulted

log = logging.getLogger("docraft.replica")

JOURNAL_FILE = "raft.journal"
SNAPSHOT_FILE = "snapshot.json"
_SNAPSHOT_POLL = 0.1  # seconds snapshot_now waits for a snapshot before asking again


class Replica(RaftMember):
    """A Raft member holding one shard's state machine.

    ``peers`` are the Raft addresses (``host:port``) of the other voters; it listens on
    ``bind_address`` (default: ``raft_address``). ``mode`` is ``voter``, ``learner`` or ``joining``
    (``consensus.members``); the replica keeps ``raft.members`` up to date from then on.
    """

    def __init__(
        self,
        raft_address: str,
        peers: list[str],
        state_machine: StateMachine,
        data_dir: Path,
        password: str,
        timings: RaftTimings,
        bind_address: str | None = None,
        mode: str = "voter",
        initial_slots: list[list[int]] | None = None,
    ) -> None:
        Membership(mode, ())  # ValueError for an unknown mode, before anything starts
        self.state_machine = state_machine
        # The slot ranges the cluster file gives this group (None: propose none); see _on_state_changed.
        self.initial_slots = initial_slots
        self.data_dir = data_dir
        self._lock = threading.Lock()
        # Reads are served as leader only once an entry of the leader's own
        # term is applied (Raft section 8): before that its state may lag.
        self._ready_term = -1
        # The log index the newest snapshot.json covers, and a signal when one is written.
        self._snapshot_index = 0
        self._snapshot_written = threading.Event()
        # Leader changes seen and snapshot durations, for the process's metrics (node.collectors).
        self.stats = RaftStats()
        # Writes proposed in the same event-loop turn, sent as one Raft entry (group commit).
        self._pending: list[tuple[dict[str, Any], asyncio.Future[Result]]] = []
        # Every future handed out by submit and not settled yet (loop thread only).
        self._waiting: set[asyncio.Future[Result]] = set()
        self.started_at = time.time()
        # PySyncObj replaces its voters with a snapshot's when it loads one. On start the voters given
        # (raft.members: the latest appended configuration) are newer than the snapshot's: keep them.
        voters = set(peers) if mode == "learner" else {*peers, raft_address}
        self._startup_cluster: set[str] | None = voters
        self._recorded: Membership | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            raft_address,
            peers,
            password,
            timings,
            bind_address,
            mode,
            journalFile=str(data_dir / JOURNAL_FILE),
            fullDumpFile=str(data_dir / SNAPSHOT_FILE),
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
        )
        self.addOnTickCallback(self._record_membership)
        self.addOnTickCallback(self._watch_leader)

    # -- the one replicated entry point --------------------------------------

    @replicated  # type: ignore[untyped-decorator]
    def apply_command(self, command: bytes) -> Result:
        # PySyncObj counts an entry as applied after this returns: its index is one more.
        index = self.raftLastApplied + 1
        if self.fault is not None and self.fault.kind == "snapshot_unloadable":
            # The state is partial; applying onto it would only make garbage. Repair replaces it.
            return ReplicaFaulted(self.fault.message).to_json()
        with self._lock:
            return self.state_machine.apply_entry(command, index)

    # -- writes and reads from the event loop ---------------------------------

    def submit(self, command: dict[str, Any], timeout: float) -> asyncio.Future[Result]:
        """Propose ``command``; the future gets the state machine's result once committed.

        Must be called on the event loop. Commands submitted in the same loop
        turn travel as one ``batch`` entry, so concurrent writes share a Raft
        round while a lone write still leaves at once. The future fails with
        ``NotLeader`` when this replica does not lead (nothing was proposed),
        or with ``OutcomeUnknown`` when leadership changed after proposing, or
        when no answer came within ``timeout`` seconds (PySyncObj drops the
        callback of an entry a snapshot install skipped, or whose reply was
        lost), or when the replica stops first.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if not self._isLeader():
            future.set_exception(self.not_leader())
            return future
        self._pending.append((command, future))
        self._waiting.add(future)
        future.add_done_callback(self._waiting.discard)
        loop.call_later(timeout, _expire, future, f"no answer from Raft within {timeout:.1f}s")
        if len(self._pending) == 1:
            loop.call_soon(self._propose_pending, loop)
        return future

    async def drain(self, grace: float) -> None:
        """Event loop, when the replica stops: let waiting writes finish for ``grace`` seconds, then
        end the rest as ``OutcomeUnknown`` (a router retries them with their request id)."""
        if self._waiting:
            await asyncio.wait(list(self._waiting), timeout=grace)
        for future in list(self._waiting):
            _expire(future, "the replica stopped before the write's outcome was known")

    def _propose_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        pending, self._pending = self._pending, []
        if len(pending) == 1:
            entry = pending[0][0]
        else:
            entry = {"type": "batch", "commands": [command for command, _ in pending]}
        futures = [future for _, future in pending]

        def done(result: Result | None, error: int) -> None:
            loop.call_soon_threadsafe(_settle, futures, result, error)

        self.apply_command(ujson.dumps(entry).encode(), callback=done)

    def read_locally(self, reader: Callable[[StateMachine], Result]) -> Result:
        """Run ``reader`` against the local state, between applies."""
        with self._lock:
            return reader(self.state_machine)

    def check_leader_read(self) -> None:
        """Raise unless this replica may answer a ``leader`` read now.

        ``NotLeader`` when it does not lead; ``NoLeader`` while a new leader
        has not applied an entry of its own term, or when its lease has lapsed
        (it has not heard from a majority recently enough to be sure no other
        leader was elected: see ``RaftMember``).
        """
        if not self._isLeader():
            raise self.not_leader()
        if self._ready_term != self._getTerm():
            raise NoLeader("the new leader is still catching up; retry shortly", retry_after=0.2)
        if not self.lease_valid():
            raise NoLeader("the leader's lease has lapsed: it has not heard from a majority lately", retry_after=0.1)

    def not_leader(self) -> NotLeader:
        leader = self._getLeader()
        hint = leader.address if leader is not None and leader.address != self.raft_address else None
        return NotLeader("this replica does not lead its group", leader_raft=hint)

    def _on_state_changed(self, old: int, new: int) -> None:
        """Raft thread: on becoming leader, commit an entry of the new term before serving reads.

        The entry also records this process's code fingerprint as the
        cluster's, if none is recorded yet (the cluster's first leader), and
        the group's ``initial_slots`` (``init_slots``: ignored once the group's
        slot table is set, so the file's slots only bootstrap a group).
        """
        super()._on_state_changed(old, new)
        if new != 2:  # pysyncobj _RAFT_STATE.LEADER
            return
        term = self._getTerm()

        def committed(result: Result | None, error: int) -> None:
            if error == FAIL_REASON.SUCCESS and self._getTerm() == term:
                self._ready_term = term

        fingerprint = self.state_machine.local_fingerprint
        firsts: list[dict[str, Any]] = []
        if fingerprint is not None:
            firsts.append({"type": "set_fingerprint", "fingerprint": fingerprint, "initial": True})
        if self.initial_slots is not None:
            firsts.append({"type": "init_slots", "ranges": self.initial_slots})
        entry = {"type": "batch", "commands": firsts} if len(firsts) > 1 else (firsts or [{"type": "noop"}])[0]
        self.apply_command(ujson.dumps(entry).encode(), callback=committed)

    def snapshot_now(self, timeout: float = 5.0) -> bool:
        """Write ``snapshot.json`` covering everything applied so far; False if it did not happen in time.

        Called before a graceful stop, so a restart loads this state instead of
        replaying the log, possibly under newer app code. Waits up to ``timeout``
        seconds, and past it for as long as a child is still writing a snapshot
        (its time grows with the state: a large one is not cut off for taking
        long). Blocks the caller, never the Raft thread.
        """
        target = self.raftLastApplied
        deadline = time.monotonic() + timeout
        while self._snapshot_index < target:
            if time.monotonic() >= deadline and not self.snapshot_writing():
                return False
            self._snapshot_written.clear()
            self.forceLogCompaction()  # PySyncObj starts it once the snapshot being written, if any, is done
            self._snapshot_written.wait(_SNAPSHOT_POLL)
        return True

    # -- membership -----------------------------------------------------------

    def membership(self) -> Membership:
        """This replica's mode and its group's voters as its log says. Any thread."""
        return Membership(self.mode, tuple(self.voters()))

    def change_membership(self, op: str, address: str) -> asyncio.Future[None]:
        """Event loop: add or remove the voter at ``address``; the future settles once it is committed.

        It fails with ``MembershipRefused`` (``change_pending``) when PySyncObj denies it: another change
        is uncommitted, or this leader has not applied an entry of its term yet; ``NotLeader``; or
        ``OutcomeUnknown`` when leadership changed before it committed. Checks that the group can
        afford the change are the caller's (``node.membership``).
        """
        denied = MembershipRefused(
            "another membership change of this group is not committed yet (or the leader is new); retry shortly",
            reason="change_pending",
        )
        future, callback = self._raft_callback(denied)
        self.propose_membership(op, address, callback)
        return future

    def transfer_leadership(self, target: str | None) -> asyncio.Future[None]:
        """Event loop: ask ``target`` (a voter's Raft address, or the most caught-up one) to take over.

        The future settles when ``timeout_now`` was sent; the caller watches for the new leader. It fails
        with ``MembershipRefused`` (``not_caught_up``) when the target is not a connected voter holding
        this leader's whole log (retry: under writes it trails by an entry or two), or ``NotLeader``.
        """
        denied = MembershipRefused(
            "no voter holds this leader's whole log and is connected to it right now; retry shortly",
            reason="not_caught_up",
        )
        future, callback = self._raft_callback(denied)
        self.transfer(target, callback)
        return future

    def _raft_callback(self, denied: DocraftError) -> tuple[asyncio.Future[None], Callable[[Any, int], None]]:
        """A future on the running loop, and a PySyncObj callback (Raft thread) that settles it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def settle(error: int) -> None:
            if future.done():
                return
            if error == FAIL_REASON.SUCCESS:
                future.set_result(None)
            elif error == FAIL_REASON.REQUEST_DENIED:
                future.set_exception(denied)
            elif error in (FAIL_REASON.NOT_LEADER, FAIL_REASON.MISSING_LEADER):
                future.set_exception(self.not_leader())
            else:
                future.set_exception(OutcomeUnknown(f"leadership changed before the change committed ({error})"))

        def callback(result: Any, error: int) -> None:
            loop.call_soon_threadsafe(settle, error)

        return future, callback

    def on_membership_changed(self) -> None:
        """Raft thread: a membership entry was appended or truncated; record the voters before the
        entry is acknowledged (the journal first, so the record never names a change the log lacks)."""
        self.journal.sync()
        self._record_membership()

    def _watch_leader(self) -> None:
        """Raft thread, each tick: count a change of the leader this member knows (``stats``)."""
        leader = self._getLeader()
        self.stats.saw_leader(None if leader is None else leader.address)

    def _record_membership(self) -> None:
        """Raft thread, each tick and on every change: rewrite ``raft.members`` when the mode or the
        voters changed."""
        self._startup_cluster = None  # the snapshot, if any, was loaded in the first tick
        current = self.membership()
        if current != self._recorded:
            write_membership(self.data_dir, current, self.journal.fsync)
            self._recorded = current

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Role, term, indexes and leader of this member, for admin routes and routing."""
        leader = self._getLeader()
        role = "leader" if self._isLeader() else ("follower" if leader is not None else "candidate")
        return {
            "role": role,
            "term": self._getTerm(),
            "leader_raft": None if leader is None else leader.address,
            "applied_index": self.raftLastApplied,
            "commit_index": self.raftCommitIndex,
            "ready": self._ready_term == self._getTerm() if role == "leader" else None,
            "pid": os.getpid(),
            "started_at": self.started_at,
            "raft_truncations": truncations.count,
            "acked_index": self.journal.acked_index,
            "fault": None if self.fault is None else self.fault.to_json(),
            "raft": self.raft_address,
            "mode": self.mode,
            "voters": self.voters(),
            "last_index": self.journal.last_index,
            "leader_commit_index": self._SyncObj__leaderCommitIndex,
            "dynamic_membership": True,
            "membership_change_pending": self.membership_change_pending(),
            **(self.progress() if role == "leader" else {}),
        }

    # -- snapshots through PySyncObj's serializer hooks -----------------------

    def _write_snapshot(self, path: str, raft_data: tuple[Any, Any, Any]) -> None:
        """Write the state plus PySyncObj's log anchors to ``path``.

        Runs in the child ``consensus.snapshots`` forks at log compaction, alone in
        its copy of the process: it takes no lock (the one it would take may be held
        by a thread that does not exist there) and records nothing (the parent does,
        in ``on_snapshot_written``).
        """
        last, previous, cluster = raft_data
        document = {
            "state": self.state_machine.snapshot(),
            "raft": {
                "last": _entry_to_json(last),
                "previous": _entry_to_json(previous),
                # A learner's PySyncObj lists itself as None among the voters.
                "cluster": sorted(node.address for node in cluster if node is not None),
            },
        }
        with open(path, "w", encoding="utf-8") as out:
            ujson.dump(document, out, escape_forward_slashes=False)
            if self.journal.fsync:
                out.flush()
                os.fsync(out.fileno())  # the parent renames it into place; the journal syncs the directory

    def on_snapshot_written(self, index: int, seconds: float) -> None:
        self._snapshot_index = index
        self.stats.snapshot_took(seconds)
        self._snapshot_written.set()

    def _read_snapshot(self, path: str) -> tuple[Any, Any, Any]:
        """Load ``snapshot.json`` into the state machine; return PySyncObj's anchors.

        Runs on start and when a leader installs a snapshot. On start, a
        journal that holds the snapshot's anchors further in is compacted to
        them first, so PySyncObj keeps the entries after the snapshot (see
        ``DocraftJournal.trim_to_snapshot``). A snapshot that cannot be loaded
        sets the ``snapshot_unloadable`` fault before PySyncObj logs the error.
        """
        started = time.monotonic()
        try:
            with open(path, encoding="utf-8") as source:
                document = ujson.load(source)
            raft = document["raft"]
            last, previous = _entry_from_json(raft["last"]), _entry_from_json(raft["previous"])
            addresses = raft["cluster"] if self._startup_cluster is None else self._startup_cluster
            cluster = {TCPNode(address) for address in addresses}
            with self._lock:
                self.state_machine.restore(document["state"])
        except Exception as exc:
            self.fault = ReplicaFault(
                "snapshot_unloadable",
                f"its snapshot {path} could not be loaded ({type(exc).__name__}: {exc}); "
                "it takes no part in its group until repaired with docraft repair",
            )
            log.error("replica %s: %s", self.raft_address, self.fault.message)
            raise
        self.journal.trim_to_snapshot(previous, last)
        self._snapshot_index = last[1]
        log.info(
            "replica %s: snapshot at index %d loaded in %.2fs", self.raft_address, last[1], time.monotonic() - started
        )
        return last, previous, cluster


def _expire(future: asyncio.Future[Result], why: str) -> None:
    if not future.done():
        future.set_exception(OutcomeUnknown(f"the write may or may not have been applied: {why}"))


def _settle(futures: list[asyncio.Future[Result]], result: Result | None, error: int) -> None:
    """Hand a committed entry's result (one per command of a batch) or its failure to the waiters."""
    if error == FAIL_REASON.SUCCESS and result is not None:
        # A batch's result holds one result per command, unless the batch failed as a whole.
        results = result["ok"] if len(futures) > 1 and "ok" in result else [result] * len(futures)
        for future, one in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(one)
        return
    failure: Exception
    if error == FAIL_REASON.MISSING_LEADER:
        failure = NotLeader("no leader was known when the write was proposed; nothing was written")
    elif error == FAIL_REASON.QUEUE_FULL:
        failure = NoLeader("the replica's proposal queue is full; retry shortly", retry_after=0.5)
    else:
        failure = OutcomeUnknown(f"leadership changed while the write was in flight (raft error {error})")
    for future in futures:
        if not future.done():
            future.set_exception(failure)


def _entry_to_json(entry: tuple[bytes, int, int]) -> list[Any]:
    command, index, term = entry
    return [base64.b64encode(command).decode(), index, term]


def _entry_from_json(entry: list[Any]) -> tuple[bytes, int, int]:
    command, index, term = entry
    return base64.b64decode(command), int(index), int(term)
