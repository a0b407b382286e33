"""Snapshot files written by a forked child, so the Raft thread never stops for one.

PySyncObj forks to write its own (pickled) snapshots, but turns forking off
when it is given a custom ``serializer`` such as docraft's JSON one: the whole
snapshot was then built and written on the Raft thread, holding the GIL, and
the member sent and answered no heartbeat for as long as that took (at 500k
documents, longer than an election timeout). ``ForkingSerializer`` is
PySyncObj's ``Serializer`` with forking for a custom format:

- ``serialize`` (Raft thread, from log compaction) forks. The child runs the
  custom serializer on its copy-on-write image of the process, writing
  ``<snapshot>.tmp``, and leaves with ``os._exit``. It touches nothing but the
  state it writes: the other threads' locks, the sockets and the signal wake-up
  descriptor are the parent's. It dies with the thread that forked it.
- ``checkSerializing`` (Raft thread, every tick) polls the child without
  waiting. Once it exited 0, the parent renames the file into place and calls
  ``on_written``; PySyncObj then compacts its journal to the snapshot.
- ``deserialize`` (Raft thread: on start, and after the leader's snapshot was
  installed in place) first ``abandon``s a running child, so an older snapshot
  never replaces one installed meanwhile: the rename and the install both
  happen on the Raft thread.
- ``setTransmissionData`` (Raft thread, follower) stores the leader's snapshot
  as it arrives and renames it into place. PySyncObj's did not flush it: with
  ``fsync`` it is now on disk, file and rename, before PySyncObj clears the
  journal to its anchors (a power loss would otherwise leave the old snapshot,
  or a torn new one, beside a journal that starts past it).

The fork happens on the Raft thread between applies, so the child's copy is the
state as of the entry the snapshot names. Other threads only read that state
(``query.collection``'s contract), so none is half-way through changing it.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.serializer import Serializer

from consensus.journal import _sync_directory as sync_directory  # the package's one directory flush

log = logging.getLogger("docraft.snapshots")

# Writes the snapshot of (last entry, previous entry, cluster) to a path: PySyncObj's serializer hook.
SnapshotWriter = Callable[[str, tuple[Any, Any, Any]], None]
# Told the log index a snapshot now on disk covers, and the seconds it took to write.
WrittenCallback = Callable[[int, float], None]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_NICENESS = 10  # how much lower the writer's CPU priority is than its member's
# After a snapshot failed (disk full, out of memory), no writer starts for RETRY_FIRST seconds, doubled after
# each further failure up to RETRY_MAX: PySyncObj asks again at every tick, which was a fork per tick.
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
# Looked up before any fork: the child must not load libraries (the loader's lock may be held by a thread).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


@dataclass(frozen=True)
class _Writer:
    pid: int
    serialize_id: int  # what PySyncObj compacts its journal to once the file is in place
    index: int  # the log index the snapshot covers
    started: float


class ForkingSerializer(Serializer):  # type: ignore[misc]
    """PySyncObj's ``Serializer`` for a custom ``serializer``, which it runs in a forked child.

    Built by ``SyncObj`` with its usual arguments (``RaftMember`` swaps it in); ``on_written`` runs on the
    Raft thread after each snapshot is renamed into place; ``fsync`` flushes a snapshot installed from the
    leader to disk before it is used (the journal's setting). Every method runs on the Raft thread.
    """

    def __init__(
        self,
        fileName: str | None,  # noqa: N803 - PySyncObj passes them by position, named as in its class
        transmissionBatchSize: int,  # noqa: N803
        tryUseFork: bool,  # noqa: N803
        serializer: SnapshotWriter | None,
        deserializer: Callable[[str], tuple[Any, Any, Any]] | None,
        serializeChecker: Callable[[], int] | None,  # noqa: N803
        on_written: WrittenCallback,
        fsync: bool,
    ) -> None:
        if fileName is None or serializer is None or deserializer is None or serializeChecker is not None:
            raise ValueError("a ForkingSerializer needs fullDumpFile, serializer and deserializer, and no checker")
        super().__init__(fileName, transmissionBatchSize, tryUseFork, serializer, deserializer, None)
        self.path = fileName
        self.temporary = fileName + ".tmp"
        self.incoming = fileName + ".1.tmp"  # the leader's snapshot as it arrives (PySyncObj's name for it)
        self._write = serializer
        self._on_written = on_written
        self._fsync = fsync
        self._receiving: BinaryIO | None = None
        self._writer: _Writer | None = None
        self._fork_failed: int | None = None  # the serialize id of a snapshot whose writer could not start
        self._retry_after = 0.0  # seconds to wait after the next failure (0: none failed since a success)
        self._retry_at = 0.0  # monotonic time before which no writer starts

    @property
    def writing(self) -> bool:
        """Whether a child is writing a snapshot now."""
        return self._writer is not None

    def serialize(self, data: tuple[Any, Any, Any, Any], serialize_id: int) -> None:
        """Fork a child that writes ``data``'s snapshot (``(None, last, previous, cluster)``); return at once.
        Nothing while one is being written, or while the back-off after a failed one lasts (``RETRY_FIRST``).

        ``serialize_id`` is the index PySyncObj compacts its journal to once the file is in place.
        """
        if self._writer is not None or time.monotonic() < self._retry_at:
            return
        _, last, previous, cluster = data
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:  # out of memory or processes: PySyncObj hears FAILED and tries again later
            log.warning("snapshot at index %d not written: its writer could not start: %s", last[1], exc)
            self._fork_failed = serialize_id
            self._back_off()
            return
        if pid == 0:
            _run_child(parent, lambda: self._write(self.temporary, (last, previous, cluster)))
        self._writer = _Writer(pid, serialize_id, int(last[1]), time.monotonic())

    def checkSerializing(self) -> tuple[int, int | None]:  # noqa: N802 - PySyncObj's interface
        """PySyncObj's ``(SERIALIZER_STATE, id)``: ``SUCCESS`` once, after the file is in place."""
        if self._fork_failed is not None:
            failed, self._fork_failed = self._fork_failed, None
            return SERIALIZER_STATE.FAILED, failed
        writer = self._writer
        if writer is None:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        pid, status = os.waitpid(writer.pid, os.WNOHANG)
        if pid == 0:
            return SERIALIZER_STATE.SERIALIZING, writer.serialize_id
        self._writer = None
        code = os.waitstatus_to_exitcode(status)
        try:
            if code != 0:
                raise OSError(f"the writer process exited with {code}")
            os.replace(self.temporary, self.path)
        except OSError as exc:
            log.warning("snapshot at index %d not written: %s", writer.index, exc)
            Path(self.temporary).unlink(missing_ok=True)
            self._back_off()
            return SERIALIZER_STATE.FAILED, writer.serialize_id
        self._retry_after = 0.0
        self._on_written(writer.index, time.monotonic() - writer.started)
        return SERIALIZER_STATE.SUCCESS, writer.serialize_id

    def _back_off(self) -> None:
        """After a failure: start no writer for ``RETRY_FIRST`` seconds, twice as long after each further one."""
        self._retry_after = min(max(RETRY_FIRST, 2 * self._retry_after), RETRY_MAX)
        self._retry_at = time.monotonic() + self._retry_after
        log.warning("the next snapshot is tried in %.0f s at the earliest", self._retry_after)

    def deserialize(self) -> Any:
        """Load the snapshot in place, after abandoning a snapshot being written (see the module docstring)."""
        self.abandon()
        return super().deserialize()

    def setTransmissionData(self, data: tuple[bytes, bool, bool] | None) -> bool:  # noqa: N802 - PySyncObj's
        """Follower: store one chunk ``(bytes, first, last)`` of the leader's snapshot; True once the whole
        snapshot is in place (renamed over ours; with ``fsync``, file and rename on disk). PySyncObj then
        loads it and clears its journal. A chunk that cannot be stored drops the transfer (False): the
        leader sends the snapshot again."""
        if data is None:
            return False
        chunk, first, last = data
        try:
            if first:
                self._stop_receiving()
                self._receiving = open(self.incoming, "wb")  # noqa: SIM115 - open across calls, one per chunk
            receiving = self._receiving
            if receiving is None:
                return False  # a chunk of a transfer whose start was missed or dropped
            receiving.write(chunk)
            if not last:
                return False
            self._receiving = None
            with receiving:
                if self._fsync:
                    receiving.flush()
                    os.fsync(receiving.fileno())
            os.replace(self.incoming, self.path)
            if self._fsync:
                sync_directory(self.path)
        except OSError as exc:
            log.warning("the leader's snapshot could not be stored: %s", exc)
            self._stop_receiving()
            return False
        return True

    def _stop_receiving(self) -> None:
        receiving, self._receiving = self._receiving, None
        if receiving is not None:
            receiving.close()

    def abandon(self) -> None:
        """Kill the child writing a snapshot, if any, and remove its file. PySyncObj may start another."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        os.kill(writer.pid, signal.SIGKILL)
        os.waitpid(writer.pid, 0)
        Path(self.temporary).unlink(missing_ok=True)


def _run_child(parent: int, write: Callable[[], None]) -> NoReturn:
    """In the forked child: run ``write`` and leave with its outcome, never returning into the parent's code."""
    code = 1
    try:
        _detach(parent)
        write()
        code = 0
    except BaseException as exc:  # the child must reach os._exit whatever happens
        os.write(2, f"docraft: the snapshot writer failed: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)


def _detach(parent: int) -> None:
    """Make the child forget the parent's signal handling, and die if the thread that forked it ends."""
    signal.set_wakeup_fd(-1)  # a signal to the child must not reach the parent's event loop
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    gc.disable()  # a collection would touch, and so copy, every tracked object of the parent's heap
    os.nice(_NICENESS)  # on a busy host the member's own threads (heartbeats) come first
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent was gone before the line above
            os._exit(1)
