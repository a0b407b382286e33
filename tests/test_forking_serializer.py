"""``consensus.snapshots.ForkingSerializer`` in this process: a forked child writes, the parent renames."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pysyncobj.config import SERIALIZER_STATE

from consensus import snapshots
from consensus.snapshots import ForkingSerializer
from tests.harness import wait_for

LAST, PREVIOUS = (b"last", 8, 2), (b"previous", 7, 2)


class Gate:
    """A pipe a forked writer blocks on until the test opens it."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe()

    def wait(self) -> None:
        os.read(self.read, 1)

    def open(self) -> None:
        os.write(self.write, b"x")

    def close(self) -> None:
        os.close(self.read)
        os.close(self.write)


@pytest.fixture
def gate() -> Iterator[Gate]:
    opened = Gate()
    yield opened
    opened.close()


def serializer(path: Path, write: Any, written: list[tuple[int, float]], fsync: bool = False) -> ForkingSerializer:
    def load(name: str) -> tuple[Any, Any, Any]:
        return LAST, PREVIOUS, set()

    return ForkingSerializer(
        str(path), 2**16, True, write, load, None, on_written=lambda *a: written.append(a), fsync=fsync
    )


def finished(forking: ForkingSerializer) -> tuple[int, int | None]:
    return wait_for(
        lambda: (state := forking.checkSerializing())[0] != SERIALIZER_STATE.SERIALIZING and state, 30, "the writer"
    )


def test_the_snapshot_is_renamed_into_place_once_its_writer_exited(tmp_path: Path, gate: Gate) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text("old")
    written: list[tuple[int, float]] = []

    def write(name: str, raft: tuple[Any, Any, Any]) -> None:
        Path(name).write_text(f"new {raft[0][1]}")
        gate.wait()

    forking = serializer(path, write, written)
    forking.serialize((None, LAST, PREVIOUS, set()), PREVIOUS[1])
    assert forking.writing and forking.checkSerializing() == (SERIALIZER_STATE.SERIALIZING, PREVIOUS[1])
    assert path.read_text() == "old", "the snapshot in place changed before its writer finished"
    gate.open()
    assert finished(forking) == (SERIALIZER_STATE.SUCCESS, PREVIOUS[1])
    assert path.read_text() == "new 8" and not Path(forking.temporary).exists()
    assert [index for index, _ in written] == [8]
    assert forking.checkSerializing() == (SERIALIZER_STATE.NOT_SERIALIZING, None)


def test_a_failed_writer_leaves_the_snapshot_in_place(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text("old")
    written: list[tuple[int, float]] = []

    def write(name: str, raft: tuple[Any, Any, Any]) -> None:
        Path(name).write_text("half")
        raise OSError("disk full")

    forking = serializer(path, write, written)
    forking.serialize((None, LAST, PREVIOUS, set()), PREVIOUS[1])
    assert finished(forking) == (SERIALIZER_STATE.FAILED, PREVIOUS[1])
    assert path.read_text() == "old" and not Path(forking.temporary).exists() and not written


def test_after_a_failed_snapshot_the_next_writer_waits_longer_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Disk full: PySyncObj asks for a snapshot again at every tick, and each ask forked a writer.
    monkeypatch.setattr(snapshots, "RETRY_FIRST", 0.3)
    starts: list[float] = []

    def write(name: str, raft: tuple[Any, Any, Any]) -> None:
        raise OSError("disk full")

    forking = serializer(tmp_path / "snapshot.json", write, [])

    def ask() -> bool:
        forking.serialize((None, LAST, PREVIOUS, set()), PREVIOUS[1])
        if forking.writing:
            starts.append(time.monotonic())
            assert finished(forking) == (SERIALIZER_STATE.FAILED, PREVIOUS[1])
        return len(starts) == 3

    wait_for(ask, 10, "three writers")
    first_wait, second_wait = starts[1] - starts[0], starts[2] - starts[1]
    assert first_wait >= 0.3 and second_wait >= 0.6


def test_loading_a_snapshot_abandons_the_one_being_written(tmp_path: Path, gate: Gate) -> None:
    # A follower installing its leader's snapshot while it writes its own: the older one must not win.
    path = tmp_path / "snapshot.json"
    written: list[tuple[int, float]] = []

    def write(name: str, raft: tuple[Any, Any, Any]) -> None:
        Path(name).write_text("older")
        gate.wait()

    forking = serializer(path, write, written)
    forking.serialize((None, LAST, PREVIOUS, set()), PREVIOUS[1])
    wait_for(Path(forking.temporary).exists, 30, "the writer started")
    path.write_text("installed")
    assert forking.deserialize() == (None, LAST, PREVIOUS, set())
    gate.open()
    assert not forking.writing and forking.checkSerializing() == (SERIALIZER_STATE.NOT_SERIALIZING, None)
    assert path.read_text() == "installed" and not Path(forking.temporary).exists() and not written


def test_a_writer_dies_with_the_thread_that_forked_it(tmp_path: Path, gate: Gate) -> None:
    # The Raft thread ends (the member stops, or the process dies): its writer must not rename anything later.
    def write(name: str, raft: tuple[Any, Any, Any]) -> None:
        Path(name).write_text(str(os.getpid()))
        gate.wait()

    forking = serializer(tmp_path / "snapshot.json", write, [])
    temporary = Path(forking.temporary)

    def raft_thread() -> None:
        forking.serialize((None, LAST, PREVIOUS, set()), PREVIOUS[1])
        wait_for(lambda: temporary.exists() and temporary.read_text(), 30, "the writer running")

    thread = threading.Thread(target=raft_thread)
    thread.start()
    thread.join()
    _, status = os.waitpid(int(temporary.read_text()), 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def test_a_writer_that_cannot_start_is_reported_failed_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_fork() -> int:
        raise OSError(12, "Cannot allocate memory")

    forking = serializer(tmp_path / "snapshot.json", lambda name, raft: None, [])
    monkeypatch.setattr(os, "fork", no_fork)
    forking.serialize((None, LAST, PREVIOUS, set()), PREVIOUS[1])
    assert forking.checkSerializing() == (SERIALIZER_STATE.FAILED, PREVIOUS[1])
    assert forking.checkSerializing() == (SERIALIZER_STATE.NOT_SERIALIZING, None)
    assert "its writer could not start" in caplog.text


def test_a_snapshot_installed_from_the_leader_is_on_disk_before_it_replaces_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PySyncObj then clears the journal to the new snapshot's anchors (and the member acknowledges them):
    # with fsync, a power loss must find the new snapshot whole and in place, not the old one or a torn
    # new one beside that journal. PySyncObj's own install (until this fix) flushed neither.
    path = tmp_path / "snapshot.json"
    path.write_text("ours")
    forking = serializer(path, lambda name, raft: None, [], fsync=True)
    events: list[tuple[str, str]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def recording_replace(source: str, target: str) -> None:
        events.append(("rename", str(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    chunks = [(b"the leader", True, False), (b"'s snapshot", False, False), (b"", False, True)]
    assert [forking.setTransmissionData(chunk) for chunk in chunks] == [False, False, True]
    assert path.read_text() == "the leader's snapshot"
    assert events == [("fsync", f"{path}.1.tmp"), ("rename", str(path)), ("fsync", str(tmp_path))], events


def test_a_chunk_without_the_start_of_its_snapshot_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "snapshot.json"
    path.write_text("ours")
    forking = serializer(path, lambda name, raft: None, [])
    assert not forking.setTransmissionData((b"the middle", False, False))
    assert not forking.setTransmissionData((b"", False, True))
    assert path.read_text() == "ours"
