"""PySyncObj made safe for docraft: one Raft member, with the fixes Raft's rules need.

``RaftMember`` is a ``SyncObj`` with these changes, each at the narrowest
PySyncObj hook that carries it (the private names are listed in ``HOOKS`` and
checked at start; see ``check_pysyncobj``):

- **Journal** (``consensus.journal``): atomic compaction, a record of the last
  acknowledged index, fsync on request.
- **Snapshots** of a custom ``serializer`` (``Replica``'s JSON) are written by a
  forked child (``consensus.snapshots``): PySyncObj wrote them on its own
  thread, which then sent and answered no heartbeat until it was done.
- **Faults.** A member that restarted with a log ending below what it had
  acknowledged (``entries_lost``) neither votes nor stands for election until
  its leader has sent it that far again; one whose snapshot failed to load
  (``snapshot_unloadable``, set by the subclass's deserializer) ignores all Raft
  traffic.
- **Next index never moves back on success** (FACTS.md: PySyncObj's pipeline
  otherwise made followers truncate entries they had applied).
- **Leader lease.** Every append the leader sends carries its term and send
  time; followers echo the stamp in their reply. A member that heard from its
  leader less than ``election_min`` ago drops vote requests (Raft thesis §6's
  "leader stickiness"), so no other leader can be elected within
  ``election_min`` of a heartbeat a majority accepted. The leader therefore
  holds a lease until the send time of the newest heartbeat a majority has
  acknowledged plus ``lease`` (a fraction of ``election_min``, the margin for
  clock-rate drift between hosts).
- **Conflicts resolve a term at a time** (Raft §5.3's optimisation): a follower
  whose log disagrees with the leader's at ``prevLogIdx`` answers with the first
  index of its conflicting term, not ``prevLogIdx``, so a long divergent tail
  costs one round trip per term, not per entry.
- **Membership changes** (PySyncObj's dynamic membership, one server at a
  time): a change is refused while another sits uncommitted in the log
  (PySyncObj never enforced it); the lease counts voters only and restarts
  after every change; PySyncObj's utility ``add``/``remove``/``transfer``
  messages are refused (changes go through docraft's checks). A ``learner``
  member (``mode``) is PySyncObj's read-only node; a ``joining`` one does not
  stand for election until its leader has reached it, so a promoted learner
  that the group has not added yet cannot inflate its term. Membership entries
  take effect when appended (``on_membership_changed`` runs then, before the
  member acknowledges them) and are not applied again at commit: after a
  restart the member already starts from its latest appended configuration.
- **Higher terms than the group's** (a removed member that campaigned alone):
  a learner never votes, so it follows a leader of a lower term, keeping its
  own term (it can never vote twice in one later); a ``joining`` member that
  hears a leader of a lower term stands for election once, and its vote request
  moves the group to its term. A member about to be removed ``stand_down``s:
  it stops standing for election and ignores ``timeout_now``.
- **Leadership transfer** (``transfer``): the target's vote requests carry
  ``transfer`` and pass leader stickiness; the old leader gives up its lease
  when it sends ``timeout_now`` and holds none for the rest of that term, since
  the voters may now elect another at any moment.
- **Dead links are dropped.** PySyncObj checks a connection's read timeout
  only when the socket has an event; a connection attempt whose SYN a
  partition dropped, or a link that went silent, then waits for TCP's own
  exponential retries (seconds to minutes) after the partition heals. Each tick
  now drops a pending connection attempt, and a link to the leader or (on the
  leader) to a follower, that has been silent for ``connection_timeout``; the
  transport reconnects at once.
- **One append per tick, sent at once.** PySyncObj's unbatched mode sends an
  append to every follower for each new entry and again after each apply (only
  to carry the commit index); its batched mode sends only on the heartbeat, so a
  lone write waited for it (FACTS.md: 77 ms). docraft runs the batched mode,
  wakes the Raft thread once per proposal and, at the end of the tick that
  appended entries, sends them in one append per follower; followers learn the
  commit index from the next append or heartbeat.

Threads: everything here runs on PySyncObj's thread, except ``lease_valid``,
``membership_change_pending``, ``progress`` (any thread: they read values the
Raft thread replaces whole), ``propose_membership``, ``transfer`` and
``stand_down`` (any thread: they queue work for the Raft thread or replace a
value whole).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pysyncobj.syncobj
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.pipe_notifier import PipeNotifier
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.version import VERSION as PYSYNCOBJ_VERSION

from consensus.journal import DocraftJournal
from consensus.snapshots import ForkingSerializer

log = logging.getLogger("docraft.raft")

# The PySyncObj release whose private names this module and consensus.journal
# were checked against, and those names. A member refuses to start on another.
PYSYNCOBJ_CHECKED = "0.3.17"
HOOKS = {
    "SyncObj": (
        "_SyncObj__onMessageReceived",
        "_SyncObj__sendNextNodeIdx",
        "_SyncObj__loadDumpFile",
        "_SyncObj__changeCluster",
        "_SyncObj__doChangeCluster",
        "_SyncObj__doApplyCommand",
        "_SyncObj__sendAppendEntries",
        "_applyCommand",
    ),
    "SyncObj instance": (
        "_SyncObj__raftLog",
        "_SyncObj__raftNextIndex",
        "_SyncObj__raftMatchIndex",
        "_SyncObj__lastResponseTime",
        "_SyncObj__leaderCommitIndex",
        "_SyncObj__raftElectionDeadline",
        "_SyncObj__raftCurrentTerm",
        "_SyncObj__transport",
        "_SyncObj__serializer",
        "_poller",
    ),
    "pysyncobj.syncobj": ("createJournal", "Serializer"),
    "FileJournal instance": ("_FileJournal__meta", "_FileJournal__metaSaved", "_FileJournal__journalFile"),
    "TCPTransport instance": ("_connections", "send"),
}
_LEADER = 2  # pysyncobj _RAFT_STATE.LEADER
_MEMBERSHIP_ENTRY = b"\x02"  # the first byte of a PySyncObj membership entry (_COMMAND_TYPE.MEMBERSHIP)
# PySyncObj's utility messages that would change the group without docraft's checks.
_UTILITY_CHANGES = ("add", "remove", "transfer")
# PySyncObj creates its journal and its snapshot serializer through module-level names; they are
# swapped for DocraftJournal and ForkingSerializer while a member is constructed, under this lock.
_JOURNAL_FACTORY = threading.Lock()
# A member that stands out of elections keeps its election deadline this far ahead.
_NO_ELECTION = 3600.0
# Seconds between moves of what survived the young collections into the collector's permanent generation
# (``_freeze_survivors``).
GC_FREEZE_INTERVAL = 1.0
# Written by node.repair before a replica discards its log on purpose; removed once it has caught up.
REPAIR_MARKER = "repairing"
# PySyncObj's own read timeout for a link (see RaftMember.__init__); TCP keepalive still applies.
_IDLE_LINK_TIMEOUT = 60.0


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
class RaftTimings:
    """Raft settings (the cluster file's ``[raft]`` table); times in seconds.

    Elections start after a random timeout in [election_min, election_max].
    A leader that hears from no majority for ``leader_fallback`` steps down.
    ``leader`` reads are served under a lease of ``lease_fraction`` of
    ``election_min`` from the newest heartbeat a majority acknowledged.
    ``fsync`` flushes the journal (and snapshots, term and vote) to disk before
    the member acknowledges an append, so acknowledged writes survive power loss.
    """

    election_min: float = 0.3
    election_max: float = 0.7
    leader_fallback: float = 1.0
    heartbeat: float = 0.05
    connection_retry: float = 0.1
    compaction_min_entries: int = 20_000
    compaction_min_seconds: float = 300.0
    lease_fraction: float = 0.8
    fsync: bool = False

    def __post_init__(self) -> None:
        if not 0 < 3 * self.heartbeat < self.election_min < self.election_max:
            raise ValueError("need 0 < 3 * heartbeat < election_min < election_max")
        if self.leader_fallback <= self.election_min:
            raise ValueError("leader_fallback must be longer than election_min")
        if not 0 < self.lease_fraction < 1:
            raise ValueError("lease_fraction must be between 0 and 1: a lease is shorter than election_min")

    @property
    def lease(self) -> float:
        return self.election_min * self.lease_fraction


@dataclass(frozen=True)
class ReplicaFault:
    """Why a member does not trust its own state: ``entries_lost``, ``resyncing`` (after a repair)
    or ``snapshot_unloadable``."""

    kind: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


class _TruncationCounter(logging.Handler):
    """Counts PySyncObj's 'truncating already-applied log entries' warnings."""

    def __init__(self) -> None:
        super().__init__(level=logging.CRITICAL)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "truncating already-applied" in record.getMessage():
            self.count += 1


truncations = _TruncationCounter()
logging.getLogger("pysyncobj.syncobj").addHandler(truncations)


class RaftMember(SyncObj):  # type: ignore[misc]
    """A ``SyncObj`` with docraft's journal and Raft fixes; subclasses add the state machine.

    ``raft_address`` is where the other members reach this one, ``bind_address`` where it listens
    (default: the same host and port; never every interface unless asked for with ``0.0.0.0``).
    ``conf_options`` are further ``SyncObjConf`` options (serializer hooks, journal files...).
    ``mode`` is ``voter``, ``learner`` (``peers`` are then the group's voters, and the member binds
    nothing) or ``joining`` (see ``consensus.members``).
    Subclasses that take ``onStateChanged`` call ``RaftMember._on_state_changed`` from theirs.
    """

    def __init__(
        self,
        raft_address: str,
        peers: list[str],
        password: str,
        timings: RaftTimings,
        bind_address: str | None = None,
        mode: str = "voter",
        **conf_options: Any,
    ) -> None:
        check_pysyncobj()
        self.raft_address = raft_address
        self.mode = mode
        self.removed = False  # this member appended its own removal (PySyncObj ignores it: a leader drops it)
        self._change_pending = False  # a membership entry above the commit index (leader; Raft thread writes)
        self._transfer_term: int | None = None  # the term in which our leader asked us to take over
        self._lease_blocked = -1  # the term in which we handed leadership over: no lease for the rest of it
        self._stand_down_until = 0.0  # monotonic time until which this member stands out of elections
        self._learner_leader_term = -1  # a learner: the newest term of a leader it followed
        self._lower_term_leader = False  # a joining member heard a leader of a lower term: stand once
        self._raft_calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.timings = timings
        self.fault: ReplicaFault | None = None
        self._startup_checked = False
        self._heard_from_leader = float("-inf")  # monotonic time of the last append from a leader
        self._echo: tuple[int, float] | None = None  # the lease stamp of the append being handled
        self._conflict_from: int | None = None  # first index of a conflicting term, for the reset reply
        self._lease_acks: dict[Any, float] = {}  # follower -> newest acknowledged send time, this term
        self._reset_floor: dict[Any, int] = {}  # follower -> lowest next index a reset asked for since a success
        self._lease_expiry = 0.0
        self._next_freeze = 0.0  # monotonic time of the next _freeze_survivors
        self._wake: PipeNotifier | None = None  # wakes the Raft thread for a proposal; made on that thread
        self._appended: tuple[int, int] = (-1, -1)  # (term, last log index) of the newest appends sent
        conf = SyncObjConf(
            password=password,
            # PySyncObj binds 0.0.0.0 (every interface) when no bindAddress is given.
            bindAddress=bind_address or raft_address,
            # Batched: appends leave once per tick (_send_new_entries), not once per entry and per apply.
            appendEntriesUseBatch=True,
            raftMinTimeout=timings.election_min,
            raftMaxTimeout=timings.election_max,
            appendEntriesPeriod=timings.heartbeat,
            leaderFallbackTimeout=timings.leader_fallback,
            connectionRetryTime=timings.connection_retry,
            # PySyncObj drops a link silent this long at its next socket event; links between followers
            # are always silent, so a short value lost the first vote request of every election. Dead
            # links are dropped by _drop_dead_links instead, by role.
            connectionTimeout=_IDLE_LINK_TIMEOUT,
            logCompactionMinEntries=timings.compaction_min_entries,
            logCompactionMinTime=timings.compaction_min_seconds,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
            onStateChanged=self._on_state_changed,
            **conf_options,
        )
        with _JOURNAL_FACTORY:
            create_journal, serializer = pysyncobj.syncobj.createJournal, pysyncobj.syncobj.Serializer
            pysyncobj.syncobj.createJournal = functools.partial(DocraftJournal, fsync=timings.fsync)
            if conf.serializer is not None:
                pysyncobj.syncobj.Serializer = functools.partial(
                    ForkingSerializer, on_written=self._note_snapshot, fsync=timings.fsync
                )
            try:
                super().__init__(None if mode == "learner" else raft_address, peers, conf)
            finally:
                pysyncobj.syncobj.createJournal, pysyncobj.syncobj.Serializer = create_journal, serializer
        self.journal: DocraftJournal = self._SyncObj__raftLog
        self._repair_marker = Path(self.journal.path).parent / REPAIR_MARKER
        transport = self._SyncObj__transport
        try:
            _check_instance(self, "SyncObj instance")
            _check_instance(self.journal, "FileJournal instance")
            _check_instance(transport, "TCPTransport instance")
        except PySyncObjMismatch:
            self.destroy()
            raise
        self._transport_send = transport.send
        transport.send = self._send
        for name in _UTILITY_CHANGES:
            transport.setOnUtilityMessageCallback(name, _refuse_utility)
        self._raft_calls.put(self._subscribe_wake)
        self.addOnTickCallback(self._on_tick)

    # -- the lease ------------------------------------------------------------

    def lease_valid(self) -> bool:
        """Whether this member may answer as leader now: it leads under an unexpired lease. Any thread."""
        if not self._isLeader():
            return False
        return not self.otherNodes or time.monotonic() < self._lease_expiry

    def _record_lease_ack(self, node: Any, stamp: Any) -> None:
        """Count ``node``'s echo of a heartbeat's (term, send time); only voters make a lease's majority."""
        term, sent = stamp
        if term != self._SyncObj__raftCurrentTerm or not self._isLeader():
            return
        voters = self.otherNodes
        if node not in voters:  # a learner, or a member removed since: its ack promises nothing
            self._lease_acks.pop(node, None)
            return
        if term == self._lease_blocked:
            return  # we asked another member to take over: the voters may elect it at any moment
        self._lease_acks[node] = max(self._lease_acks.get(node, float("-inf")), float(sent))
        needed = (len(voters) + 1) // 2  # followers that make a majority with the leader
        newest = sorted(self._lease_acks.values(), reverse=True)
        if len(newest) >= needed:
            self._lease_expiry = newest[needed - 1] + self.timings.lease

    def _on_state_changed(self, old: int, new: int) -> None:
        """Raft thread: a new role starts without a lease (or a log search under way)."""
        self._lease_acks.clear()
        self._reset_floor.clear()
        self._lease_expiry = 0.0
        self._change_pending = False

    def _drop_lease(self) -> None:
        self._lease_acks.clear()
        self._lease_expiry = 0.0

    # -- membership ---------------------------------------------------------------

    def membership_change_pending(self) -> bool:
        """Whether this leader's log holds a membership change it has not committed yet. Any thread."""
        return self._change_pending

    def _scan_pending_change(self) -> bool:
        """Raft thread: whether a membership entry sits in the log above the commit index."""
        journal, commit = self.journal, self.raftCommitIndex
        if not len(journal):
            return False
        first = int(journal[0][1])
        for position in range(max(commit + 1 - first, 0), len(journal)):
            if journal[position][0][:1] == _MEMBERSHIP_ENTRY:
                return True
        return False

    def _SyncObj__changeCluster(self, request: list[Any]) -> bool:  # noqa: N802
        """Raft thread, leader, before appending a membership entry: one change at a time.

        PySyncObj means to refuse a change while another is uncommitted but never records the
        other's index; False here makes it answer ``REQUEST_DENIED``.
        """
        if self._scan_pending_change():
            return False
        accepted: bool = SyncObj._SyncObj__changeCluster(self, request)
        self._change_pending = self._change_pending or accepted
        return accepted

    def _SyncObj__doChangeCluster(self, request: list[Any], reverse: bool = False) -> bool:  # noqa: N802
        """Raft thread: a membership entry appended (or, ``reverse``, truncated) changes the voters.

        Every change restarts the lease: its majority was counted in the old configuration. A member
        that appends its own removal notes it (PySyncObj ignores it), so it stops calling itself a voter.
        """
        kind, node_id = request[0], request[1]
        if kind == "rem" and node_id == self.raft_address and self.mode != "learner":
            self.removed = not reverse
        changed: bool = SyncObj._SyncObj__doChangeCluster(self, request, reverse)
        if changed:
            self._drop_lease()
            self.on_membership_changed()
        return changed

    def on_membership_changed(self) -> None:
        """Raft thread: the voters changed by an appended (or truncated) entry, before it is acknowledged.

        Subclasses record the new configuration here; this one does nothing.
        """

    # -- the garbage collector ----------------------------------------------------

    def _freeze_survivors(self) -> None:
        """Raft thread, every ``GC_FREEZE_INTERVAL``: collect the young generations, then freeze what survived.

        A full collection walks every reference of every tracked container: with 500,000 stored documents
        each one held the GIL for ~0.2 s (measured), and while a load grows the heap Python runs one per
        25% of growth, each long enough under load for followers to call an election. Frozen objects are
        never walked again. What this costs: cyclic garbage that reached the old generation before a freeze
        is never freed. The stored state holds no reference cycles (JSON values, sorted lists of keys), so
        what is frozen is live or freed by reference counting as usual.
        """
        now = time.monotonic()
        if now < self._next_freeze:
            return
        self._next_freeze = now + GC_FREEZE_INTERVAL
        gc.collect(1)
        gc.freeze()

    # -- snapshots ----------------------------------------------------------------

    def _note_snapshot(self, index: int, seconds: float) -> None:
        log.info("replica %s: snapshot at index %d written in %.2fs", self.raft_address, index, seconds)
        self.on_snapshot_written(index, seconds)

    def on_snapshot_written(self, index: int, seconds: float) -> None:
        """Raft thread: the snapshot file covering log index ``index`` is in place, ``seconds`` after its
        writer (a forked child: ``consensus.snapshots``) started. Subclasses note it; this one does nothing."""

    def snapshot_writing(self) -> bool:
        """Whether a forked child is writing a snapshot now. Any thread."""
        serializer = self._SyncObj__serializer
        return isinstance(serializer, ForkingSerializer) and serializer.writing

    def _doDestroy(self) -> None:  # noqa: N802 - PySyncObj's name
        """Raft thread, stopping: no snapshot writer outlives the member (a repair may discard its files next)."""
        serializer = self._SyncObj__serializer
        if isinstance(serializer, ForkingSerializer):
            serializer.abandon()
        super()._doDestroy()

    def _SyncObj__doApplyCommand(self, command: bytes) -> Any:  # noqa: N802
        """Raft thread, applying a committed entry: membership entries took effect when appended.

        PySyncObj applies them again at commit for a member that restarted; but a restarted member
        starts from its latest appended configuration (``on_membership_changed`` recorded it), and
        re-applying an older entry then would roll that back (an ``add`` below a later ``rem``).
        """
        if command[:1] == _MEMBERSHIP_ENTRY:
            return None
        return SyncObj._SyncObj__doApplyCommand(self, command)

    def propose_membership(self, op: str, address: str, callback: Callable[[Any, int], None]) -> None:
        """Append ``add``/``remove`` of ``address``; ``callback(result, FAIL_REASON)`` runs on the Raft thread.

        ``SUCCESS`` once the change is committed and applied here; ``REQUEST_DENIED`` while another change
        is uncommitted or before this leader's first entry is applied; ``NOT_LEADER``/``MISSING_LEADER``.
        Any thread. The caller checks the group can afford the change first (``node.membership``).
        """
        if op == "add":
            self.addNodeToCluster(address, callback)
        elif op == "remove":
            self.removeNodeFromCluster(address, callback)
        else:
            raise ValueError(f"a membership change is add or remove, not {op!r}")

    def transfer(self, target: str | None, callback: Callable[[Any, int], None]) -> None:
        """Ask the caught-up voter ``target`` (or the most caught-up one) to take over leadership.

        ``callback(None, FAIL_REASON)`` runs on the Raft thread: ``SUCCESS`` when ``timeout_now`` was sent
        (the transfer itself is confirmed by a new leader), ``REQUEST_DENIED`` when the target is not fully
        caught up or not a connected voter, ``NOT_LEADER``. Any thread.
        """
        self._raft_calls.put(lambda: self.transferLeadership(target, callback))

    def stand_down(self, seconds: float) -> None:
        """Stand out of elections, and ignore ``timeout_now``, for ``seconds``: the group is about to remove
        this member, which PySyncObj's leader stops reaching before it has sent it its removal, so it
        would otherwise campaign alone and inflate its term. Any thread."""
        self._stand_down_until = time.monotonic() + seconds
        log.warning("replica %s stands down for %.0fs: its group is removing it", self.raft_address, seconds)

    def progress(self) -> dict[str, dict[str, Any]]:
        """On a leader: each voter's match index and seconds since it last answered; else empty. Any thread."""
        if not self._isLeader():
            return {"match_index": {}, "last_response_age": {}}
        voters = {node.address: node for node in self.otherNodes}
        matched = dict(self._SyncObj__raftMatchIndex)
        answered = dict(self._SyncObj__lastResponseTime)
        now = time.monotonic()
        return {
            "match_index": {a: matched[n] for a, n in voters.items() if n in matched},
            "last_response_age": {a: round(now - answered[n], 3) for a, n in voters.items() if n in answered},
        }

    def voters(self) -> list[str]:
        """The group's voters as this member's log says (itself included when it is one). Any thread."""
        others = {node.address for node in self.otherNodes}
        if self.mode == "voter" and not self.removed:
            others.add(self.raft_address)
        return sorted(others)

    # -- proposals and appends ----------------------------------------------------

    def _applyCommand(self, command: bytes, callback: Any, commandType: int | None = None) -> None:  # noqa: N802, N803
        """PySyncObj's proposal entry point (any thread): queue the command, then wake the Raft thread so
        its tick appends it now rather than at the next heartbeat. A full pipe (a Raft thread busy for long:
        a slow disk) already wakes it: the proposal is queued, and the caller must not hear otherwise."""
        SyncObj._applyCommand(self, command, callback, commandType)
        wake = self._wake
        if wake is not None:
            with contextlib.suppress(BlockingIOError):
                wake.notify()

    def _subscribe_wake(self) -> None:
        """Raft thread (the poller is not safe to change from another): make the pipe proposals wake it by."""
        self._wake = PipeNotifier(self._poller)

    def _send_new_entries(self) -> None:
        """Raft thread, leader, after the tick appended its queued proposals: send what the followers have
        not been sent, in one append each (PySyncObj's batched mode would wait for the heartbeat)."""
        appended = (self._SyncObj__raftCurrentTerm, self.journal.last_index)
        if appended != self._appended:
            self._appended = appended
            self._SyncObj__sendAppendEntries()

    # -- messages in and out ----------------------------------------------------

    def _send(self, node: Any, message: dict[str, Any]) -> bool:
        """Every outgoing Raft message: stamp appends with (term, send time); echo the stamp in replies."""
        kind = message.get("type")
        if kind == "append_entries":
            message["lease"] = (self._SyncObj__raftCurrentTerm, time.monotonic())
        elif kind == "next_node_idx" and self._echo is not None:
            message["lease"] = self._echo
        elif kind == "request_vote" and self._transfer_term is not None:
            if message.get("term") == self._transfer_term + 1:
                message["transfer"] = True  # our leader asked us to stand: pass the voters' stickiness
        elif kind == "timeout_now":
            self._drop_lease()
            self._lease_blocked = self._SyncObj__raftCurrentTerm
        sent: bool = self._transport_send(node, message)
        return sent

    def _SyncObj__onMessageReceived(self, node: Any, message: dict[str, Any]) -> None:  # noqa: N802
        """PySyncObj's handler, behind docraft's checks (see the module docstring)."""
        handle = SyncObj._SyncObj__onMessageReceived
        kind = message.get("type")
        if self.fault is not None and (
            self.fault.kind == "snapshot_unloadable" or kind in ("request_vote", "timeout_now")
        ):
            return  # out of the group: no votes, no leadership, and no acks while the state is unusable
        if kind == "request_vote" and not message.get("transfer") and self._leader_recently_heard():
            return  # leader stickiness: the lease of the leader we heard from must hold
        if kind == "timeout_now" and self._standing_down():
            return  # the group is removing us: never take over
        if kind == "timeout_now" and message.get("term", -1) >= self._getTerm() and node == self._getLeader():
            self._transfer_term = self._getTerm()
        if kind == "append_entries":
            self._on_append(node, message, handle)
        elif kind == "next_node_idx":
            self._on_append_reply(node, message, handle)
        else:
            handle(self, node, message)

    def _leader_recently_heard(self) -> bool:
        return not self._isLeader() and time.monotonic() - self._heard_from_leader < self.timings.election_min

    def _standing_down(self) -> bool:
        return time.monotonic() < self._stand_down_until

    def _on_append(self, node: Any, message: dict[str, Any], handle: Any) -> None:
        term, own_term = message.get("term", -1), self._SyncObj__raftCurrentTerm
        if self.mode == "learner" and self._learner_leader_term <= term < own_term:
            # A learner never votes, so a term it reached campaigning (as a removed voter) binds no one:
            # follow the group's leader, but keep the higher term, so it never votes twice in a term
            # once it is a voter again. Never a leader older than one it already followed.
            message = {**message, "term": own_term}
        elif self.mode == "joining" and term < own_term and not self._lower_term_leader:
            log.warning(
                "replica %s (joining, term %d) hears a leader of term %d: standing for election once to "
                "move the group to its term",
                self.raft_address,
                own_term,
                term,
            )
            self._lower_term_leader = True
            self._SyncObj__raftElectionDeadline = time.monotonic() + self.timings.election_min
        if self.mode == "learner" and term >= self._learner_leader_term:
            self._learner_leader_term = term
        current = message.get("term", -1) >= self._SyncObj__raftCurrentTerm
        if current:
            self._lower_term_leader = False
        leader_commit = message.get("commit_index", -1)
        if current:
            self._heard_from_leader = time.monotonic()
            self._echo = message.get("lease")
            self._conflict_from = self._first_index_of_conflict(message)
            if "prevLogIdx" not in message and message.get("commit_index", -1) > self.raftCommitIndex:
                # A snapshot-install message (no prevLogIdx: nothing about this log was checked).
                # PySyncObj would still raise the commit index to min(leader's, own log end), so a
                # deposed leader applied its own uncommitted tail and acknowledged those writes.
                # The installed snapshot moves raftLastApplied; the next checked append moves the commit.
                message = {**message, "commit_index": self.raftCommitIndex}
        try:
            handle(self, node, message)
        finally:
            self._echo = None
            self._conflict_from = None
        if self.mode == "joining" and current and self.raftCommitIndex >= leader_commit > 0:
            # Only a leader that added us sends appends (the others drop our links): we are in the group.
            log.info("replica %s holds its leader's commit index %d: a voter now", self.raft_address, leader_commit)
            self.mode = "voter"

    def _first_index_of_conflict(self, message: dict[str, Any]) -> int | None:
        """Where the term that disagrees with the leader's at ``prevLogIdx`` starts here, or ``None``."""
        previous, previous_term = message.get("prevLogIdx"), message.get("prevLogTerm")
        if previous is None or message.get("transmission") is not None or not len(self.journal):
            return None
        first = int(self.journal[0][1])
        if not first <= previous <= self.journal.last_index:
            return None
        position = int(previous) - first
        term = self.journal[position][2]
        if term == previous_term:
            return None
        while position > 0 and self.journal[position - 1][2] == term:
            position -= 1
        return max(first + position, int(self.raftCommitIndex) + 1)

    def _on_append_reply(self, node: Any, message: dict[str, Any], handle: Any) -> None:
        stamp = message.get("lease")
        if stamp is not None:
            self._record_lease_ack(node, stamp)
        next_index: dict[Any, int] = self._SyncObj__raftNextIndex
        if message.get("reset") and not message.get("success"):
            # The leader sends several appends per tick; the follower answers the first with where its
            # conflicting term starts and the later ones (past its log) with its log's end. Until a
            # success, the search never moves forward again, or it would restart from the end each time.
            handle(self, node, message)
            floor = self._reset_floor.get(node)
            if floor is not None and next_index.get(node, 0) > floor:
                next_index[node] = floor
            self._reset_floor[node] = next_index.get(node, floor or 0)
            return
        if not message.get("success"):
            handle(self, node, message)
            return
        # A successful reply never lowers the next index (FACTS.md: PySyncObj's pipeline otherwise
        # restarts behind the follower's log, and the follower truncates entries it applied).
        self._reset_floor.pop(node, None)
        before = next_index.get(node)
        handle(self, node, message)
        if before is not None and next_index.get(node, 0) < before:
            next_index[node] = before

    def _SyncObj__sendNextNodeIdx(  # noqa: N802
        self,
        node: Any,
        reset: bool = False,
        nextNodeIdx: int | None = None,  # noqa: N803 - PySyncObj passes it by this name
        success: bool = False,
    ) -> None:
        """Flush the journal before telling the leader what this member holds; send conflict hints."""
        self.journal.sync()
        next_index = nextNodeIdx
        if reset and not success and self._conflict_from is not None:
            next_index = self._conflict_from if next_index is None else min(next_index, self._conflict_from)
        SyncObj._SyncObj__sendNextNodeIdx(self, node, reset=reset, nextNodeIdx=next_index, success=success)

    # -- every tick ---------------------------------------------------------------

    def _on_tick(self) -> None:
        """Raft thread, after each tick: flush, run queued calls, notice lost entries, keep faulty and
        joining members out of elections, drop dead links."""
        self.journal.sync()
        while not self._raft_calls.empty():
            self._raft_calls.get()()
        if self._isLeader():
            self._send_new_entries()
        if not self._startup_checked:
            self._startup_checked = True
            self._check_acknowledged_entries()
        self._drop_dead_links()
        self._freeze_survivors()
        if self._isLeader():
            self._change_pending = self._scan_pending_change()
        if (self.mode == "joining" and not self._lower_term_leader) or self._standing_down():
            self._SyncObj__raftElectionDeadline = time.monotonic() + _NO_ELECTION
        if self.fault is None:
            return
        # The log grows only by a leader's appends while the member stands out of elections, and a
        # leader's log holds every committed entry: once it reaches the acknowledged index again, so does
        # this one. (The commit index is no guide: PySyncObj restores it from .meta, beyond the log.)
        if self.fault.kind in ("entries_lost", "resyncing") and self.journal.last_index >= self.journal.acked_at_open:
            log.warning("replica %s holds index %d again: voting again", self.raft_address, self.journal.last_index)
            self.journal.caught_up()
            self._repair_marker.unlink(missing_ok=True)
            self.fault = None
            return
        self._SyncObj__raftElectionDeadline = time.monotonic() + _NO_ELECTION

    def _check_acknowledged_entries(self) -> None:
        """First tick, after PySyncObj loaded snapshot and journal: a log below the acked index lost entries."""
        acked, last = self.journal.acked_at_open, self.journal.last_index
        repaired = self._repair_marker.exists()
        if last >= acked:
            self.journal.caught_up()
            self._repair_marker.unlink(missing_ok=True)
        elif self.fault is None and repaired:
            # An operator's repair discarded the log on purpose: the same care, but nothing to alert on.
            self.fault = ReplicaFault(
                "resyncing",
                f"repaired: its log was discarded below index {acked} it had acknowledged; "
                "it does not vote until its leader has sent it that far again",
            )
            log.warning("replica %s: %s", self.raft_address, self.fault.message)
        elif self.fault is None:
            self.fault = ReplicaFault(
                "entries_lost",
                f"restarted with its log ending at index {last}, below index {acked} it had acknowledged; "
                "it does not vote until its leader has sent it that far again",
            )
            log.error("replica %s: %s", self.raft_address, self.fault.message)

    def _drop_dead_links(self) -> None:
        """Disconnect pending connection attempts, and silent links we expect traffic on, after the timeout."""
        now = time.monotonic()
        timeout = self.timings.election_max
        leader = self._getLeader()
        leading = self._isLeader()
        for node, connection in list(self._SyncObj__transport._connections.items()):
            state = connection.state
            if state == CONNECTION_STATE.DISCONNECTED:
                continue
            expect_traffic = state == CONNECTION_STATE.CONNECTING or leading or node == leader
            if expect_traffic and now - connection._TcpConnection__lastReadTime > timeout:
                connection.disconnect()


def _refuse_utility(args: Any, callback: Callable[[Any, int], None]) -> None:
    """PySyncObj's utility ``add``/``remove``/``transfer`` (syncobj_admin): docraft changes its groups only
    through its own checked routes."""
    callback(None, FAIL_REASON.REQUEST_DENIED)
