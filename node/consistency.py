"""Read consistency levels, parsed in one place.

- ``stale``: any replica answers from its local state; it may lag the leader.
- ``leader`` (default): the replica that believes it leads answers, once it has
  applied an entry of its own term. A leader cut off from its majority steps
  down after ``RaftTimings.leader_fallback`` seconds; until then it may answer
  with state that a newer leader has already overwritten.
- ``linearizable``: the replica first commits a no-op through the Raft log, so
  the answer reflects every write acknowledged before the read began.
"""

from __future__ import annotations

import enum

from models.errors import BadRequest


class Consistency(enum.Enum):
    STALE = "stale"
    LEADER = "leader"
    LINEARIZABLE = "linearizable"

    @classmethod
    def parse(cls, text: object, default: str = "leader") -> Consistency:
        """The level ``text`` names; ``None`` or empty means ``default``; unknown is a ``BadRequest``."""
        if text is None or text == "":
            return cls(default)
        for level in cls:
            if level.value == text:
                return level
        raise BadRequest(f"consistency must be one of stale, leader, linearizable; got {text!r}", param="consistency")
