"""Restarting a replica's process in another role: promoted, or repaired (state discarded).

``docraft repair`` is remove + wipe + add (``node.membership``): the group
removes the replica first, so the wipe never costs it a voter, and only one
membership change runs per group at a time. The wipe keeps what Raft's
safety needs a replica never to forget:

- **Term and vote** (``raft.journal.meta``), so a replica added back cannot
  vote twice in a term it already voted in.
- **What it acknowledged** (``raft.journal.acked``): on restart it finds its
  log ending below that index and reports ``resyncing`` until its leader has
  sent it that far again (``consensus.raft_member``).

It restarts as a learner of the group's voters, then copies the group's
state from the leader before it is promoted and added back.
"""

from __future__ import annotations

import logging
import os
import sys

from consensus.members import Membership, write_membership
from consensus.raft_member import REPAIR_MARKER
from node.shard_service import ShardService

log = logging.getLogger("docraft.repair")

# Files a repair removes; raft.journal.meta (term, vote) and raft.journal.acked stay.
DISCARDED = ("raft.journal", "raft.journal.compacting", "snapshot.json", "snapshot.json.tmp")


def restart(service: ShardService, membership: Membership, wipe: bool) -> None:
    """Stop Raft, record ``membership`` in ``raft.members`` and re-exec this process (same pid).

    With ``wipe`` the log and snapshot are discarded first (see the module docstring); without, a
    snapshot is written first so the restart need not replay the log. Called on the event loop
    as the last thing it does: the process image is replaced.
    """
    replica = service.replica
    data_dir = service.config.data_dir
    if wipe:
        log.warning("repair: discarding the log and snapshot in %s and restarting as a learner", data_dir)
    elif not replica.snapshot_now():
        log.warning("no snapshot before restarting as %s: the restart will replay the log", membership.mode)
    replica.destroy_synchronous()
    if wipe:
        (data_dir / REPAIR_MARKER).touch()
        for name in DISCARDED:
            (data_dir / name).unlink(missing_ok=True)
    write_membership(data_dir, membership, replica.journal.fsync)
    logging.shutdown()
    os.execv(sys.executable, [sys.executable, "-m", "node.cli", *sys.argv[1:]])
