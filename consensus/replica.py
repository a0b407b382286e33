"""One member of a shard's replica group, on PySyncObj Raft.

``Replica`` owns the ``StateMachine`` and drives it from PySyncObj's single
``@replicated`` entry point, ``apply_command(bytes)``. The command set is
defined inside the state machine, so the Raft wire format never changes when
docraft gains a command.

Threads: PySyncObj applies entries and runs callbacks on its own thread.
``submit`` and ``read`` are called on the Tornado loop and hand results back
to it with ``call_soon_threadsafe``; a lock keeps reads from seeing a
half-applied command. Nothing here blocks the loop.

Files in the data directory: ``raft.journal`` (PySyncObj's log, an mmap,
never fsynced) and ``snapshot.json`` (our JSON snapshot, written by
PySyncObj's log compaction through the ``serializer`` hook).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ujson
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, replicated
from pysyncobj.node import TCPNode

from consensus.state_machine import Result, StateMachine
from models.errors import NoLeader, NotLeader, OutcomeUnknown

log = logging.getLogger("docraft.replica")

JOURNAL_FILE = "raft.journal"
SNAPSHOT_FILE = "snapshot.json"


@dataclass(frozen=True)
class RaftTimings:
    """Raft timing knobs, in seconds.

    Elections start after a random timeout in [election_min, election_max].
    A leader that hears from no majority for ``leader_fallback`` steps down, so
    a deposed leader stops serving ``leader`` reads that long after a partition.
    """

    election_min: float = 0.3
    election_max: float = 0.7
    leader_fallback: float = 1.0
    heartbeat: float = 0.05
    connection_retry: float = 0.1
    compaction_min_entries: int = 20_000
    compaction_min_seconds: float = 300.0

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
        super().__init__(raft_address, peers, conf)

    # -- the one replicated entry point --------------------------------------

    @replicated  # type: ignore[untyped-decorator]
    def apply_command(self, command: bytes) -> Result:
        # PySyncObj counts an entry as applied after this returns: its index is one more.
        index = self.raftLastApplied + 1
        with self._lock:
            return self.state_machine.apply(ujson.loads(command), index, command)

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
        if message.get("type") != "next_node_idx" or not message.get("success") or message.get("reset"):
            handle(self, node, message)
            return
        next_index: dict[Any, int] = self._SyncObj__raftNextIndex
        before = next_index.get(node)
        handle(self, node, message)
        if before is not None and next_index.get(node, 0) < before:
            next_index[node] = before

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
            "raft_truncations": _truncations.count,
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
        self._snapshot_index = last[1]
        self._snapshot_written.set()

    def _read_snapshot(self, path: str) -> tuple[Any, Any, Any]:
        """Load ``snapshot.json`` into the state machine; return PySyncObj's anchors."""
        with open(path, encoding="utf-8") as source:
            document = ujson.load(source)
        with self._lock:
            self.state_machine.restore(document["state"])
        raft = document["raft"]
        self._snapshot_index = int(raft["last"][1])
        cluster = {TCPNode(address) for address in raft["cluster"]}

        return _entry_from_json(raft["last"]), _entry_from_json(raft["previous"]), cluster


def _settle(futures: list[asyncio.Future[Result]], result: Result | None, error: int) -> None:
    """Hand a committed entry's result (one per command of a batch) or its failure to the waiters."""
    if error == FAIL_REASON.SUCCESS and result is not None:
        results = result["ok"] if len(futures) > 1 else [result]
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
