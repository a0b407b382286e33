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
``raft.journal.acked`` (the last index this replica acknowledged) and
``snapshot.json`` (our JSON snapshot, written by PySyncObj's log compaction
through the ``serializer`` hook). With ``fsync`` on, each is flushed to disk
before the replica acknowledges what it holds.

A replica that cannot trust its own state says so in ``fault`` and steps out
of the group until it can: ``entries_lost`` when it restarted with a log
ending below the last index it had acknowledged (it neither votes nor stands
for election until its leader has sent it that far again, since Raft's
safety rests on acknowledged entries surviving a restart), and
``snapshot_unloadable`` when its snapshot could not be loaded (it ignores
Raft traffic, applies nothing and serves nothing until repaired).

PySyncObj is driven through a few of its private names; ``check_pysyncobj``
verifies at start that they are where this code expects (see ``HOOKS``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysyncobj.syncobj
import ujson
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode
from pysyncobj.version import VERSION as PYSYNCOBJ_VERSION

from consensus.journal import DocraftJournal
from consensus.state_machine import Result, StateMachine
from models.errors import NoLeader, NotLeader, OutcomeUnknown, ReplicaFaulted

log = logging.getLogger("docraft.replica")

JOURNAL_FILE = "raft.journal"
SNAPSHOT_FILE = "snapshot.json"

# The PySyncObj release whose private names this module and consensus.journal
# were checked against, and those names. A replica refuses to start on another.
PYSYNCOBJ_CHECKED = "0.3.17"
HOOKS = {
    "SyncObj": (
        "_SyncObj__onMessageReceived",
        "_SyncObj__sendNextNodeIdx",
        "_SyncObj__loadDumpFile",
        "_SyncObj__getCurrentLogIndex",
    ),
    "SyncObj instance": ("_SyncObj__raftLog", "_SyncObj__raftNextIndex", "_SyncObj__raftElectionDeadline"),
    "pysyncobj.syncobj": ("createJournal",),
    "FileJournal instance": ("_FileJournal__meta", "_FileJournal__metaSaved", "_FileJournal__journalFile"),
}
# PySyncObj creates its journal through this module-level name; it is swapped for
# DocraftJournal while a Replica is constructed, under this lock.
_JOURNAL_FACTORY = threading.Lock()
# A replica that steps out of elections keeps its election deadline this far ahead.
_NO_ELECTION = 3600.0


class PySyncObjMismatch(RuntimeError):
    """The installed PySyncObj is not the one docraft's Raft hooks were checked against."""


def check_pysyncobj(version: str = PYSYNCOBJ_VERSION) -> None:
    """Raise ``PySyncObjMismatch`` unless PySyncObj is the checked release with every hooked name."""
    if version != PYSYNCOBJ_CHECKED:
        raise PySyncObjMismatch(
            f"docraft's Raft hooks were checked against PySyncObj {PYSYNCOBJ_CHECKED}, not {version}; "
            f"install pysyncobj=={PYSYNCOBJ_CHECKED}"
        )
    missing = [name for name in HOOKS["SyncObj"] if not callable(getattr(SyncObj, name, None))]
    missing += [name for name in HOOKS["pysyncobj.syncobj"] if not hasattr(pysyncobj.syncobj, name)]
    if missing:
        raise PySyncObjMismatch(f"PySyncObj {version} lacks {', '.join(missing)}; docraft cannot run on it")


def _check_instance(obj: object, kind: str) -> None:
    missing = [name for name in HOOKS[kind] if not hasattr(obj, name)]
    if missing:
        raise PySyncObjMismatch(f"a PySyncObj {kind} lacks {', '.join(missing)}; docraft cannot run on it")


@dataclass(frozen=True)
class ReplicaFault:
    """Why a replica does not trust its own state: ``entries_lost`` or ``snapshot_unloadable``."""

    kind: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


@dataclass(frozen=True)
class RaftTimings:
    """Raft timing knobs, in seconds.

    Elections start after a random timeout in [election_min, election_max].
    A leader that hears from no majority for ``leader_fallback`` steps down, so
    a deposed leader stops serving ``leader`` reads that long after a partition.
    ``fsync`` flushes the journal (and snapshots, term and vote) to disk before
    the replica acknowledges an append, so acknowledged writes survive power loss.
    """

    election_min: float = 0.3
    election_max: float = 0.7
    leader_fallback: float = 1.0
    heartbeat: float = 0.05
    connection_retry: float = 0.1
    compaction_min_entries: int = 20_000
    compaction_min_seconds: float = 300.0
    fsync: bool = False

    def __post_init__(self) -> None:
        if not 0 < 3 * self.heartbeat < self.election_min < self.election_max:
            raise ValueError("need 0 < 3 * heartbeat < election_min < election_max")
        if self.leader_fallback <= self.election_min:
            raise ValueError("leader_fallback must be longer than election_min")


class _TruncationCounter(logging.Handler):
    """Counts PySyncObj's 'truncating already-applied log entries' warnings."""

    def __init__(self) -> None:
        super().__init__(level=logging.CRITICAL)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "truncating already-applied" in record.getMessage():
            self.count += 1


_truncations = _TruncationCounter()
logging.getLogger("pysyncobj.syncobj").addHandler(_truncations)


class Replica(SyncObj):  # type: ignore[misc]
    """A Raft member holding one shard's state machine.

    ``peers`` are the Raft addresses (``host:port``) of the other members.
    ``on_role_change`` is called on the Raft thread after every state change.
    """

    def __init__(
        self,
        raft_address: str,
        peers: list[str],
        state_machine: StateMachine,
        data_dir: Path,
        password: str,
        timings: RaftTimings,
    ) -> None:
        self.state_machine = state_machine
        self.raft_address = raft_address
        self.data_dir = data_dir
        self._lock = threading.Lock()
        # Reads are served as leader only once an entry of the leader's own
        # term is applied (Raft section 8): before that its state may lag.
        self._ready_term = -1
        # The log index the newest snapshot.json covers, and a signal when one is written.
        self._snapshot_index = 0
        self._snapshot_written = threading.Event()
        # Writes proposed in the same event-loop turn, sent as one Raft entry (group commit).

        self._pending: list[tuple[dict[str, Any], asyncio.Future[Result]]] = []
        data_dir.mkdir(parents=True, exist_ok=True)
        conf = SyncObjConf(
            password=password,
            journalFile=str(data_dir / JOURNAL_FILE),
            fullDumpFile=str(data_dir / SNAPSHOT_FILE),
            serializer=self._write_snapshot,
            deserializer=self._read_snapshot,
            appendEntriesUseBatch=False,
            raftMinTimeout=timings.election_min,
            raftMaxTimeout=timings.election_max,
            appendEntriesPeriod=timings.heartbeat,
            leaderFallbackTimeout=timings.leader_fallback,
            connectionRetryTime=timings.connection_retry,
            connectionTimeout=timings.election_max,
            logCompactionMinEntries=timings.compaction_min_entries,
            logCompactionMinTime=timings.compaction_min_seconds,
            commandsWaitLeader=False,
            dynamicMembershipChange=False,
            onStateChanged=self._on_state_changed,
        )
        check_pysyncobj()
        self.fault: ReplicaFault | None = None
        self.started_at = time.time()
        self._startup_checked = False
        with _JOURNAL_FACTORY:
            create_journal = pysyncobj.syncobj.createJournal
            pysyncobj.syncobj.createJournal = functools.partial(DocraftJournal, fsync=timings.fsync)
            try:
                super().__init__(raft_address, peers, conf)
            finally:
                pysyncobj.syncobj.createJournal = create_journal
        self.journal: DocraftJournal = self._SyncObj__raftLog
        try:
            _check_instance(self, "SyncObj instance")
            _check_instance(self.journal, "FileJournal instance")
        except PySyncObjMismatch:
            self.destroy()
            raise
        self.addOnTickCallback(self._on_tick)

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

    # -- PySyncObj fix: keep the leader's pipeline from moving backwards -----

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:  # noqa: N802
        """Wraps PySyncObj's handler so a successful reply never lowers nextIndex.

        PySyncObj 0.3.17 sets a follower's next index to just after the entry
        an ack names, even when later entries are already in flight; the next
        append then starts behind the follower's log, and the follower deletes
        entries it has already applied and acknowledged (it logs "truncating
        already-applied log entries"). Keeping nextIndex monotonic on success
        removes that path; gaps still reset it through the follower's
        ``reset`` reply, which this does not touch.
        """
        handle = SyncObj._SyncObj__onMessageReceived
        if self.fault is not None and (
            self.fault.kind == "snapshot_unloadable" or message.get("type") in ("request_vote", "timeout_now")
        ):
            return  # out of the group: no votes, no leadership, and no acks while the state is unusable
        if message.get("type") != "next_node_idx" or not message.get("success") or message.get("reset"):
            handle(self, node, message)
            return
        next_index: dict[Any, int] = self._SyncObj__raftNextIndex
        before = next_index.get(node)
        handle(self, node, message)
        if before is not None and next_index.get(node, 0) < before:
            next_index[node] = before

    def _SyncObj__sendNextNodeIdx(self, node: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N802
        """Flush the journal before telling the leader what this follower holds (``fsync`` mode)."""
        self.journal.sync()
        SyncObj._SyncObj__sendNextNodeIdx(self, node, *args, **kwargs)

    def _on_tick(self) -> None:
        """Raft thread, after each tick: flush a leader's new entries; keep a faulty replica out of elections.

        The first tick runs after PySyncObj loaded the snapshot and journal, so
        that is where a log shorter than what was acknowledged is noticed.
        """
        self.journal.sync()
        if not self._startup_checked:
            self._startup_checked = True
            acked, last = self.journal.acked_at_open, self.journal.last_index
            if last >= acked:
                self.journal.caught_up()
            elif self.fault is None:
                self.fault = ReplicaFault(
                    "entries_lost",
                    f"restarted with its log ending at index {last}, below index {acked} it had acknowledged; "
                    "it does not vote until its leader has sent it that far again",
                )
                log.error("replica %s: %s", self.raft_address, self.fault.message)
        if self.fault is None:
            return
        # The log grows only by a leader's appends while the replica stands out of elections, and a
        # leader's log holds every committed entry: once it reaches the acknowledged index again, so does
        # this one. (The commit index is no guide: PySyncObj restores it from .meta, beyond the log.)
        if self.fault.kind == "entries_lost" and self.journal.last_index >= self.journal.acked_at_open:
            log.warning("replica %s holds index %d again: voting again", self.raft_address, self.journal.last_index)
            self.journal.caught_up()
            self.fault = None
            return
        self._SyncObj__raftElectionDeadline = time.monotonic() + _NO_ELECTION

    # -- writes and reads from the event loop ---------------------------------

    def submit(self, command: dict[str, Any]) -> asyncio.Future[Result]:
        """Propose ``command``; the future gets the state machine's result once committed.

        Must be called on the event loop. Commands submitted in the same loop
        turn travel as one ``batch`` entry, so concurrent writes share a Raft
        round while a lone write still leaves at once. The future fails with
        ``NotLeader`` when this replica does not lead (nothing was proposed),
        or with ``OutcomeUnknown`` when leadership changed after proposing.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        if not self._isLeader():
            future.set_exception(self.not_leader())
            return future
        self._pending.append((command, future))
        if len(self._pending) == 1:
            loop.call_soon(self._propose_pending, loop)
        return future

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
        """Raise ``NotLeader`` unless this replica leads and has applied its own term's entry."""
        if not self._isLeader():
            raise self.not_leader()
        if self._ready_term != self._getTerm():
            raise NoLeader("the new leader is still catching up; retry shortly", retry_after=0.2)

    def not_leader(self) -> NotLeader:
        leader = self._getLeader()
        hint = leader.address if leader is not None and leader.address != self.raft_address else None
        return NotLeader("this replica does not lead its group", leader_raft=hint)

    def _on_state_changed(self, old: int, new: int) -> None:
        """Raft thread: on becoming leader, commit an entry of the new term before serving reads.

        The entry also records this process's code fingerprint as the
        cluster's, if none is recorded yet (the cluster's first leader).
        """
        if new != 2:  # pysyncobj _RAFT_STATE.LEADER
            return
        term = self._getTerm()

        def committed(result: Result | None, error: int) -> None:
            if error == FAIL_REASON.SUCCESS and self._getTerm() == term:
                self._ready_term = term

        fingerprint = self.state_machine.local_fingerprint
        entry: dict[str, Any] = {"type": "noop"}
        if fingerprint is not None:
            entry = {"type": "set_fingerprint", "fingerprint": fingerprint, "initial": True}
        self.apply_command(ujson.dumps(entry).encode(), callback=committed)

    def snapshot_now(self, timeout: float = 5.0) -> bool:
        """Write ``snapshot.json`` covering everything applied so far; False if it did not happen in time.

        Called before a graceful stop, so a restart loads this state instead of
        replaying the log, possibly under newer app code. Blocks the caller,
        never the Raft thread.
        """
        target = self.raftLastApplied
        deadline = time.monotonic() + timeout
        while self._snapshot_index < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self._snapshot_written.clear()
            self.forceLogCompaction()
            self._snapshot_written.wait(min(remaining, 0.5))
        return True

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
            "raft_truncations": _truncations.count,
            "acked_index": self.journal.acked_index,
            "fault": None if self.fault is None else self.fault.to_json(),
        }

    # -- snapshots through PySyncObj's serializer hooks -----------------------

    def _write_snapshot(self, path: str, raft_data: tuple[Any, Any, Any]) -> None:
        """Raft thread, during log compaction: the state plus PySyncObj's log anchors."""
        last, previous, cluster = raft_data
        with self._lock:
            state = self.state_machine.snapshot()
        document = {
            "state": state,
            "raft": {
                "last": _entry_to_json(last),
                "previous": _entry_to_json(previous),
                "cluster": sorted(node.address for node in cluster),
            },
        }
        with open(path, "w", encoding="utf-8") as out:
            ujson.dump(document, out, escape_forward_slashes=False)
            if self.journal.fsync:
                out.flush()
                os.fsync(out.fileno())  # PySyncObj renames it into place; the journal syncs the directory
        self._snapshot_index = last[1]
        self._snapshot_written.set()

    def _read_snapshot(self, path: str) -> tuple[Any, Any, Any]:
        """Load ``snapshot.json`` into the state machine; return PySyncObj's anchors.

        Runs on start and when a leader installs a snapshot. On start, a
        journal that holds the snapshot's anchors further in is compacted to
        them first, so PySyncObj keeps the entries after the snapshot (see
        ``DocraftJournal.trim_to_snapshot``). A snapshot that cannot be loaded
        sets the ``snapshot_unloadable`` fault before PySyncObj logs the error.
        """
        try:
            with open(path, encoding="utf-8") as source:
                document = ujson.load(source)
            raft = document["raft"]
            last, previous = _entry_from_json(raft["last"]), _entry_from_json(raft["previous"])
            cluster = {TCPNode(address) for address in raft["cluster"]}
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
        return last, previous, cluster


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
