"""Finishing moves whose rebalancer died: the dispatcher's stall guard.

A ``docraft rebalance`` killed mid-move leaves its range frozen on the source
(writes wait, then ``503 slot_frozen``) or, after the source's commit,
served by neither group, until someone runs it again. A ``MoveJanitor`` runs
in every dispatcher (``run``, a task the server starts) and, every
``interval`` seconds, lists the unfinished moves in the groups' records
(``node.rebalance.pending_moves``). A move none of whose records was touched
for ``stall_after`` seconds (``[rebalance] stall_after``) is finished with
``node.rebalance.resume``, exactly as ``docraft rebalance`` without
``--abort`` would: rolled forward after the source's commit; before it, the
copy finished, verified and committed (a target importing a move its source
never froze is aborted).

A record's ``touched_at`` is the wall-clock time the group's leader stamped on
the command that last changed it (the target's on every copied page), and it
is compared with this process's wall clock: clock skew between hosts only
makes the janitor step in sooner or later, never wrongly.

Why racing a slow but living rebalancer (or another dispatcher's janitor, or
an operator's ``docraft rebalance``) is safe: every step is a command
idempotent by move id. A resent begin or commit answers ok; export pages are
cut at a fixed size from the frozen (unchanging) range, and the target
ignores a page number it already took, so two copies of one move write the
same pages once; the source's log orders a ``move_commit`` against a
``move_abort``, and the one that comes second is refused, so both groups
always agree on one outcome. A step refused because the other party already
ended the move ends this attempt (``failed`` in the log) with the groups
consistent; the next sweep sees what remains.

Runs on the router's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from models.errors import DocraftError
from node.config import RebalanceConfig
from node.rebalance import FAILED, MoveSummary, PendingMove, pending_moves, reports, resume
from node.router import Router

log = logging.getLogger("docraft.janitor")

INTERVAL = 5.0


def last_touched(move: PendingMove) -> float:
    """The newest ``touched_at`` of the move's records (leader wall-clock seconds)."""
    records = [r for r in (move.source_record, move.target_record) if r is not None]
    return max(float(r.get("touched_at") or 0.0) for r in records)


def stalled(pending: list[PendingMove], now: float, stall_after: float) -> list[PendingMove]:
    """The moves of ``pending`` whose records nobody touched in the ``stall_after`` seconds before ``now``."""
    return [move for move in pending if now - last_touched(move) > stall_after]


class MoveJanitor:
    """Resumes moves left unfinished for ``stall_after`` seconds; see the module docstring."""

    def __init__(
        self,
        router: Router,
        stall_after: float = RebalanceConfig.stall_after,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.router = router
        self.stall_after = stall_after
        self.interval = interval
        self.clock = clock

    async def run(self) -> None:
        """Sweep every ``interval`` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except DocraftError as exc:  # a group without a leader now: the next sweep asks again
                log.warning("could not look for stalled moves: %s: %s", exc.code, exc.message)
            except Exception:  # a bug here must not end the guard for the dispatcher's lifetime
                log.exception("looking for stalled moves failed; trying again in %.0fs", self.interval)

    async def sweep(self) -> list[MoveSummary]:
        """Resume each stalled move once; a summary of each (logged one line per move).

        Raises ``DocraftError`` when a group's slots cannot be read; a move that cannot be finished is a
        ``failed`` summary, not an error.
        """
        due = stalled(pending_moves(await reports(self.router)), self.clock(), self.stall_after)
        summaries = []
        for move in due:
            (summary,) = await resume(self.router, pending=[move])
            if summary.outcome == FAILED:
                log.warning("stalled move %s resumed: failed: %s", summary.move, summary.detail)
            else:
                log.info("stalled %s resumed: %s, %d documents", move.describe(), summary.outcome, summary.docs)
            summaries.append(summary)
        return summaries
