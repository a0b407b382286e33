"""State machines for unit tests, as a replica group has them once its first leader committed.

A fresh ``StateMachine`` holds no slot table and refuses every write with
``slots_unknown`` until ``init_slots`` is applied (a replica's first leader
proposes it from the cluster file). ``owning_all`` builds one that owns every
slot, as a one-shard cluster's group does.
"""

from __future__ import annotations

from typing import Any

from consensus.slots import SLOT_COUNT, slot_of
from consensus.state_machine import StateMachine
from query.app import App

OWN_ALL = {"type": "init_slots", "ranges": [[0, SLOT_COUNT - 1]]}


def owning_all(app: App, **options: Any) -> StateMachine:
    """A ``StateMachine(app, **options)`` that has applied ``init_slots`` for every slot (no log index)."""
    machine = StateMachine(app, **options)
    result = machine.apply(OWN_ALL)
    assert "ok" in result, result
    return machine


def insert_batch(model: str, docs: list[Any], key: Any, **envelope: Any) -> dict[str, Any]:
    """An ``insert_batch`` routed by the slot of partition key ``key``, as a router sends one."""
    return {"type": "insert_batch", "model": model, "docs": docs, "slot": slot_of(key), **envelope}


def keys_sharing_a_slot(count: int, first: int = 1) -> list[int]:
    """``count`` integer keys from ``first`` up whose slot is ``first``'s: documents one routed batch may hold."""
    keys, candidate = [first], first
    while len(keys) < count:
        candidate += 1
        if slot_of(candidate) == slot_of(first):
            keys.append(candidate)
    return keys
