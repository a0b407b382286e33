"""docraft's Raft journal: PySyncObj's file journal, safe to compact, durable on request,
and able to say which entries it acknowledged.

PySyncObj 0.3.17's ``FileJournal`` keeps the log in an mmap. Three things it
does not do, which Raft's safety needs, are done here:

- **Compaction is atomic.** PySyncObj drops the entries a snapshot covers by
  clearing the file and adding the rest back one by one; a crash in between
  leaves a journal missing entries this replica acknowledged. Here the kept
  entries are written to a new file that replaces the old one by ``rename``.
- **What was acknowledged is recorded.** ``raft.journal.acked`` holds the
  index of the last entry appended (a follower acknowledges what it appended;
  a leader counts its own log towards a majority). It is lowered before a
  leader's conflicting entries are truncated, and left alone when the log is
  cleared or compacted, so a replica that restarts with its log ending below
  it knows it lost entries it had acknowledged (``acked_at_open``).
- **fsync.** With ``fsync=True``, ``sync()`` flushes the journal and the acked
  index to disk, term and vote are written through a flushed temporary file,
  and the data directory is flushed before compaction drops entries, so a
  renamed snapshot is on disk before the log entries it replaces are gone.

Threads: every method runs on PySyncObj's thread (or before it starts).
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any

from pysyncobj.journal import FileJournal
from pysyncobj.pickle import dumps

ACKED_SUFFIX = ".acked"
_INDEX = struct.Struct("<Q")


class AckedIndex:
    """One durable unsigned 64-bit integer in its own small mmap'd file."""

    def __init__(self, path: str) -> None:
        if not os.path.exists(path) or os.path.getsize(path) < _INDEX.size:
            with open(path, "wb") as out:
                out.write(_INDEX.pack(0))
        self._file = open(path, "r+b")  # noqa: SIM115 - kept open for the mmap's lifetime
        self._map = mmap.mmap(self._file.fileno(), _INDEX.size)

    @property
    def value(self) -> int:
        value: int = _INDEX.unpack(self._map[: _INDEX.size])[0]
        return value

    @value.setter
    def value(self, index: int) -> None:
        self._map[: _INDEX.size] = _INDEX.pack(index)

    def sync(self) -> None:
        self._map.flush()

    def close(self) -> None:
        self._map.close()
        self._file.close()


class DocraftJournal(FileJournal):  # type: ignore[misc]
    """A ``FileJournal`` with atomic compaction, an acknowledged-index record and optional fsync."""

    # PySyncObj's private state, restored across the re-open in ``deleteEntriesTo``.
    _FileJournal__meta: dict[str, Any]
    _FileJournal__metaSaved: bool

    def __init__(self, path: str, fsync: bool = False) -> None:
        super().__init__(path)
        self.path = path
        self.fsync = fsync
        self._acked = AckedIndex(path + ACKED_SUFFIX)
        #: The last index this replica had acknowledged when the journal was opened.
        self.acked_at_open = self._acked.value
        # Until the replica has caught up past it, the record never goes below acked_at_open:
        # a second restart must still know what the first one lost.
        self._floor = self.acked_at_open

    @property
    def last_index(self) -> int:
        """Index of the newest entry, 0 when empty."""
        return int(self[len(self) - 1][1]) if len(self) else 0

    @property
    def acked_index(self) -> int:
        return self._acked.value

    def caught_up(self) -> None:
        """The replica holds everything it had acknowledged again; the record may follow the log from now on."""
        self._floor = 0

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self._acked.value = max(idx, self._floor)

    def deleteEntriesFrom(self, position: int) -> None:  # noqa: N802 - PySyncObj's interface
        """Drop a leader's conflicting tail; the acked record goes down first, so a crash leaves it low, not high."""
        self._acked.value = max(int(self[position - 1][1]) if position > 0 else 0, self._floor)
        super().deleteEntriesFrom(position)

    def deleteEntriesTo(self, position: int) -> None:  # noqa: N802 - PySyncObj's interface
        """Drop the first ``position`` entries by writing the rest to a new file and renaming it over."""
        if self.fsync:
            _sync_directory(self.path)  # the snapshot that replaces these entries is on disk first
        kept = [self[i] for i in range(position, len(self))]
        temporary = self.path + ".compacting"
        for leftover in (temporary, temporary + ".meta"):
            if os.path.exists(leftover):
                os.remove(leftover)
        writer = FileJournal(temporary)
        for entry in kept:
            writer.add(*entry)
        writer.flush()
        writer._destroy()
        if self.fsync:
            _sync_file(temporary)
        meta, saved = self._FileJournal__meta, self._FileJournal__metaSaved
        self._FileJournal__journalFile._destroy()
        os.replace(temporary, self.path)
        if self.fsync:
            _sync_directory(self.path)
        FileJournal.__init__(self, self.path)
        self._FileJournal__meta = meta
        self._FileJournal__metaSaved = saved

    def trim_to_snapshot(self, previous: tuple[bytes, int, int], last: tuple[bytes, int, int]) -> bool:
        """Drop the entries before a snapshot's two anchor entries if this log holds both.

        PySyncObj keeps a journal on start only when it begins with the
        snapshot's anchors, and otherwise clears it down to them, dropping
        every entry after the snapshot, acknowledged ones included. A replica
        that wrote a snapshot and stopped before compacting holds the anchors
        further in; compacting to them here keeps the entries after them.
        Returns whether the log now starts with the anchors.
        """
        if not len(self):
            return False
        position = previous[1] - int(self[0][1])
        if position < 0 or position + 1 >= len(self):
            return False
        if tuple(self[position]) != tuple(previous) or tuple(self[position + 1]) != tuple(last):
            return False
        if position:
            self.deleteEntriesTo(position)
        return True

    def sync(self) -> None:
        """Flush appended entries and the acked index to disk (``fsync`` mode; a no-op otherwise)."""
        if self.fsync:
            self.flush()
            self._acked.sync()

    def setCurrentTerm(self, term: int, voted_for: Any) -> None:  # noqa: N802 - PySyncObj's interface
        """Store term and vote before any message reflecting them leaves; flushed in ``fsync`` mode."""
        if not self.fsync:
            super().setCurrentTerm(term, voted_for)
            return
        meta = self._FileJournal__meta
        meta["currentTerm"] = term
        meta["votedForNodeId"] = voted_for
        meta_path = self.path + ".meta"
        with open(meta_path + ".tmp", "wb") as out:
            out.write(dumps(meta))
            out.flush()
            os.fsync(out.fileno())
        os.replace(meta_path + ".tmp", meta_path)
        _sync_directory(meta_path)
        self._FileJournal__metaSaved = True

    def _destroy(self) -> None:
        super()._destroy()
        self._acked.close()


def _sync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_directory(path: str) -> None:
    """fsync the directory holding ``path``, so renames and new files in it are on disk."""
    _sync_file(str(Path(path).parent))
