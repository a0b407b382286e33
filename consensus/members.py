"""A replica's place in its group, on disk: ``raft.members`` and ``RETIRED`` in its data directory.

``raft.members`` is ``{"mode": "voter"|"learner"|"joining", "voters": ["host:port", ...]}``: how the
replica takes part in its group and the group's voters as its log last said (the latest *appended*
configuration, which Raft uses, not the latest applied one). A replica starts from it; PySyncObj
would otherwise start from the peers it is given and only re-learn membership entries as they commit.

- ``voter``: a full Raft member.
- ``learner``: a non-voting copy (PySyncObj's read-only node): it receives the log and snapshots, never
  votes, never stands, never counts for commit.
- ``joining``: a promoted learner waiting for its leader to add it: a full member that does not stand
  for election until its leader has reached it (see ``consensus.raft_member``).

``RETIRED`` marks a data directory whose replica was removed from its group: it must not start again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ujson

MEMBERS_FILE = "raft.members"
RETIRED_FILE = "RETIRED"
MODES = ("voter", "learner", "joining")


@dataclass(frozen=True)
class Membership:
    """A replica's mode and its group's voters (Raft addresses, sorted)."""

    mode: str
    voters: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "voters": list(self.voters)}


def read_membership(data_dir: Path) -> Membership | None:
    """The recorded membership, or ``None`` when there is no ``raft.members``.

    Raises ``ValueError`` for a file that is not a membership record.
    """
    try:
        text = (data_dir / MEMBERS_FILE).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    record = ujson.loads(text)
    voters = record.get("voters") if isinstance(record, dict) else None
    if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
        raise ValueError(f"{data_dir / MEMBERS_FILE} holds no voter list")
    return Membership(str(record.get("mode")), tuple(sorted(voters)))


def write_membership(data_dir: Path, membership: Membership, fsync: bool) -> None:
    """Replace ``raft.members`` atomically (temporary file, rename; flushed to disk with ``fsync``)."""
    target = data_dir / MEMBERS_FILE
    temporary = target.with_name(MEMBERS_FILE + ".tmp")
    with open(temporary, "w", encoding="utf-8") as out:
        ujson.dump(membership.to_json(), out)
        if fsync:
            out.flush()
            os.fsync(out.fileno())
    os.replace(temporary, target)
    if fsync:
        directory = os.open(data_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def retired_message(data_dir: Path) -> str | None:
    """Why a replica must not start on ``data_dir`` (it was removed from its group), or ``None``."""
    marker = data_dir / RETIRED_FILE
    if not marker.exists():
        return None
    return (
        f"this replica was removed from its group ({marker}: {marker.read_text(encoding='utf-8').strip()}); "
        f"to bring it back, empty {data_dir} except raft.journal.meta (its term and vote), start it, "
        "and run docraft replica add"
    )


def retire(data_dir: Path, why: str) -> None:
    """Mark ``data_dir`` as a removed replica's (see ``retired_message``)."""
    (data_dir / RETIRED_FILE).write_text(why + "\n", encoding="utf-8")
