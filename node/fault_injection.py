"""Fault injection for tests: change a replica's state outside the Raft log.

Served only with ``--unsafe-fault-injection`` (``POST /_admin/fault/corrupt``),
so the integrity monitor can be shown to find a replica whose state diverged.
Kept out of the state machine: nothing a command does can reach it.
"""

from __future__ import annotations

from typing import Any

from consensus.state_machine import StateMachine
from models.errors import NotFound


def corrupt(state: StateMachine, collection: str, key: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """Overwrite ``fields`` of one stored document of ``state`` and return the document as now stored.

    The change bypasses the log, so ``state``'s digest moves while its log hash
    does not. Raises ``NotFound`` for an unknown model or key. The caller holds
    the replica's lock (``Replica.read_locally``).
    """
    model = state.app.model(collection)
    store = state.collections[model.name]
    current = store.get(key)
    if current is None:
        raise NotFound(f"no {collection} with key {key!r} on this replica", key=key)
    changed = {**current, **fields}
    store.put(changed)
    return changed
