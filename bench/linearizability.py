"""A linearizability checker for histories of registers (read, write, compare-and-set).

Wing & Gong's search with Lowe's memoisation, run per key (a history of
independent registers is linearizable iff each key's sub-history is, as
Porcupine and Knossos exploit). An operation with an unknown outcome (the
client never learned whether it applied) has no completion time and may
take effect at any point after its invocation, or never.

Each ``Op`` is ``kind`` in {"read", "write", "cas"}:
- read: ``output`` is the value read.
- write: ``value`` is written.
- cas: ``value`` is ``(old, new)``; ``output`` is True (swapped) or False.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Op:
    process: int
    key: int
    kind: str
    value: Any
    output: Any
    invoke: float
    complete: float | None  # None: outcome unknown

    @property
    def end(self) -> float:
        return math.inf if self.complete is None else self.complete

    def to_json(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "key": self.key,
            "kind": self.kind,
            "value": self.value,
            "output": self.output,
            "invoke": self.invoke,
            "complete": self.complete,
        }


def _step(op: Op, state: Any) -> tuple[bool, Any]:
    """Whether ``op`` can take effect on ``state``, and the state after it."""
    if op.kind == "write":
        return True, op.value
    if op.kind == "read":
        return op.output == state, state
    old, new = op.value
    if op.complete is None:  # unknown cas: linearizable only where it would have swapped
        return state == old, new
    if op.output:
        return state == old, new
    return state != old, state


def _observed(ops: list[Op]) -> set[Any]:
    """Values some completed read returned or some successful cas found."""
    seen = {op.output for op in ops if op.kind == "read" and op.complete is not None}
    seen |= {op.value[0] for op in ops if op.kind == "cas" and op.output and op.complete is not None}
    return seen


def prune(ops: list[Op]) -> list[Op]:
    """Drop unknown-outcome writes and swaps whose value nobody observed.

    Such an op may be taken never to have happened: its value would have been
    overwritten unseen, so leaving it out cannot turn a valid linearization
    invalid. With unique written values this removes nearly all of them and
    keeps the search from branching on each.
    """
    observed = _observed(ops)

    def needed(op: Op) -> bool:
        if op.complete is not None:
            return True
        written = op.value if op.kind == "write" else op.value[1] if op.kind == "cas" else None
        return op.kind != "read" and written in observed

    return [op for op in ops if needed(op)]


def is_linearizable(ops: list[Op], initial: Any = None, budget: int = 2_000_000) -> bool | None:
    """Whether one key's history is linearizable; ``None`` when the search budget ran out.

    Ops with unknown outcome may stay unlinearized; every completed op must be placed.
    """
    ops = sorted(prune(ops), key=lambda o: o.invoke)
    n = len(ops)
    required = sum(1 << i for i, op in enumerate(ops) if op.complete is not None)
    seen: set[tuple[int, Any]] = set()
    stack: list[tuple[int, Any]] = [(0, initial)]
    while stack:
        done, state = stack.pop()
        if done & required == required:
            return True
        if (done, state) in seen:
            continue
        seen.add((done, state))
        if len(seen) > budget:
            return None
        # Candidates: pending ops invoked before every pending op's completion. Scanning in
        # invocation order, an op invoked after the horizon cannot lower it, so stop there.
        horizon = math.inf
        candidates = []
        first_pending = ((done + 1) & ~done).bit_length() - 1
        for i in range(first_pending, n):
            if done >> i & 1:
                continue
            if ops[i].invoke > horizon:
                break
            horizon = min(horizon, ops[i].end)
            candidates.append(i)
        for i in candidates:
            if ops[i].invoke > horizon:
                continue
            ok, after = _step(ops[i], state)
            if ok:
                stack.append((done | 1 << i, after))
    return False


@dataclass
class KeyVerdict:
    key: int
    ops: int
    linearizable: bool | None
    smallest_failing: list[dict[str, Any]]


def check_history(history: Iterable[Op], initial: Any = None) -> list[KeyVerdict]:
    """Check every key; for a key that fails, also find the smallest failing prefix.

    The prefix is taken in invocation order: the first ``k`` operations of the
    key with ``k`` as small as possible such that they alone are not linearizable.
    """
    by_key: dict[int, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    verdicts = []
    for key in sorted(by_key):
        ops = sorted(by_key[key], key=lambda o: o.invoke)
        verdict = is_linearizable(ops, initial)
        smallest: list[dict[str, Any]] = []
        if verdict is False:
            for k in range(1, len(ops) + 1):
                if is_linearizable(ops[:k], initial) is False:
                    smallest = [op.to_json() for op in ops[:k]]
                    break
        verdicts.append(KeyVerdict(key, len(ops), verdict, smallest))
    return verdicts
