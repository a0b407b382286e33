"""Checks of histories of registers (read, write, compare-and-set): linearizability and lost writes.

``check_history``: Wing & Gong's search with Lowe's memoisation, run per key
(a history of independent registers is linearizable iff each key's
sub-history is, as Porcupine and Knossos exploit). An operation with an
unknown outcome (the client never learned whether it applied) has no
completion time and may take effect at any point after its invocation, or
never.

``lost_writes``: acknowledged writes that a later observation contradicts,
found directly (in O(n log n)) and named with the observation as evidence.

Each ``Op`` is ``kind`` in {"read", "write", "cas"}:
- read: ``output`` is the value read.
- write: ``value`` is written.
- cas: ``value`` is ``(old, new)``; ``output`` is the value the register held
  when the cas applied (it swapped iff that is ``old``).

Written values must be unique (no two writes or swaps write the same value,
none writes the initial value): a value then names the op that wrote it.
"""

from __future__ import annotations

import bisect
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
    return op.output == state, new if state == old else state


def _observes(op: Op) -> bool:
    """A completed read or cas: its ``output`` is a value the register held."""
    return op.kind != "write" and op.complete is not None


def _observed(ops: list[Op]) -> set[Any]:
    """Values some completed read returned or some completed cas found."""
    return {op.output for op in ops if _observes(op)}


def _acknowledged(op: Op) -> bool:
    """A completed write, or a completed cas that swapped."""
    if op.complete is None:
        return False
    return op.kind == "write" or (op.kind == "cas" and op.output == op.value[0])


def _writes(op: Op) -> Any:
    """The value ``op`` wrote, or may have written; ``None`` if it certainly wrote nothing."""
    if op.kind == "read" or not (_acknowledged(op) or op.complete is None):
        return None
    return op.value if op.kind == "write" else op.value[1]


def _relied_on(ops: list[Op]) -> set[Any]:
    """Values ``ops`` rely on having been written.

    Those completed reads and cas observed, and the ``old`` value of each
    unknown cas whose own value is relied on: it can only have swapped from it.
    """
    values = _observed(ops)
    unknown_swaps = [op.value for op in ops if op.kind == "cas" and op.complete is None]
    grew = True
    while grew:
        grew = False
        for old, new in unknown_swaps:
            if new in values and old not in values:
                values.add(old)
                grew = True
    return values


def prune(ops: list[Op]) -> list[Op]:
    """Drop unknown-outcome writes and swaps whose value nothing relies on (``_relied_on``).

    Such an op may be taken never to have happened: its value would have been
    overwritten unseen, so leaving it out cannot turn a valid linearization
    invalid. With unique written values this removes nearly all of them and
    keeps the search from branching on each.
    """
    relied_on = _relied_on(ops)

    def needed(op: Op) -> bool:
        return op.complete is not None or (op.kind != "read" and _writes(op) in relied_on)

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


def _by_key(history: Iterable[Op]) -> dict[int, list[Op]]:
    by_key: dict[int, list[Op]] = defaultdict(list)
    for op in history:
        by_key[op.key].append(op)
    return by_key


@dataclass
class KeyVerdict:
    key: int
    ops: int
    linearizable: bool | None
    smallest_failing: list[dict[str, Any]]


def check_history(history: Iterable[Op], initial: Any = None) -> list[KeyVerdict]:
    """Check every key; for a key that fails, also find a smallest failing prefix.

    The prefix is taken in invocation order: the first ``k`` operations of
    the key, with the writes whose values they observed (``_closure``), and
    ``k`` as small as possible such that these alone are not linearizable.
    """
    by_key = _by_key(history)
    verdicts = []
    for key in sorted(by_key):
        ops = sorted(by_key[key], key=lambda o: o.invoke)
        verdict = is_linearizable(ops, initial)
        smallest: list[dict[str, Any]] = []
        if verdict is False:
            smallest = [op.to_json() for op in _smallest_failing_prefix(ops, initial)]
        verdicts.append(KeyVerdict(key, len(ops), verdict, smallest))
    return verdicts


def _closure(prefix: list[Op], ops: list[Op]) -> list[Op]:
    """``prefix`` with every op of ``ops`` that wrote (or may have written) a value the set relies on.

    A linearization of all of ``ops``, restricted to this set, is one of the
    set: every value the set relies on (``_relied_on``) is written inside it,
    and values are unique. So the set of a linearizable history is
    linearizable, and the larger ``prefix``, the more it constrains: failing
    is monotone in it.
    """
    chosen = list(prefix)
    while True:
        relied_on = _relied_on(chosen)
        inside = set(map(id, chosen))
        writers = [op for op in ops if id(op) not in inside and _writes(op) is not None and _writes(op) in relied_on]
        if not writers:
            return sorted(chosen, key=lambda o: o.invoke)
        chosen += writers


def _smallest_failing_prefix(ops: list[Op], initial: Any) -> list[Op]:
    """The smallest failing ``_closure`` of a prefix of ``ops`` (in invocation order), by bisection.

    ``ops`` must not be linearizable. A prefix whose search ran out of budget counts as not failing.
    """
    low, high = 1, len(ops)  # the closure of ops[:high] fails
    while low < high:
        middle = (low + high) // 2
        if is_linearizable(_closure(ops[:middle], ops), initial) is False:
            high = middle
        else:
            low = middle + 1
    return _closure(ops[:high], ops)


@dataclass(frozen=True)
class LostWrite:
    """An acknowledged write and an observation, begun after it completed, that contradicts it."""

    write: Op
    observation: Op

    def to_json(self) -> dict[str, Any]:
        return {"write": self.write.to_json(), "observed_by": self.observation.to_json()}


def lost_writes(history: Iterable[Op]) -> list[LostWrite]:
    """Acknowledged writes (and swaps) that some later observation of their key shows lost.

    After an acknowledged write ``w`` of ``v`` completes, its key may hold only
    ``v`` or a value written by a write or swap that had not completed before
    ``w`` was invoked (concurrent or later; acknowledged or of unknown
    outcome). A read, or a completed cas (through the value it found), that
    begins after ``w`` completed and observes anything else (an older value,
    the initial value, a value nobody wrote) proves ``w`` lost. This is sound:
    in a linearizable history nothing is reported. A failed cas or an
    unknown outcome never vouches for ``w``; only what is observed counts.
    Each lost write is reported once, with the observation of the oldest value.
    """
    by_key = _by_key(history)
    lost: list[LostWrite] = []
    for key in sorted(by_key):
        lost += _lost_in_key(by_key[key])
    return lost


def _lost_in_key(ops: list[Op]) -> list[LostWrite]:
    # When the writer of each value completed; a value nobody wrote (the initial one) counts as -inf.
    written_until = {_writes(op): op.end for op in ops if _writes(op) is not None}
    observations = sorted(filter(_observes, ops), key=lambda o: o.invoke)
    # oldest[i]: among observations[i:], the one whose value's writer completed first (and when).
    oldest: list[tuple[float, Op] | None] = [None] * (len(observations) + 1)
    for i in range(len(observations) - 1, -1, -1):
        here = (written_until.get(observations[i].output, -math.inf), observations[i])
        later = oldest[i + 1]
        oldest[i] = here if later is None or here[0] < later[0] else later
    starts = [op.invoke for op in observations]
    lost = []
    for write in sorted(filter(_acknowledged, ops), key=lambda o: o.invoke):
        entry = oldest[bisect.bisect_right(starts, write.end)]
        if entry is not None and entry[0] < write.invoke:
            lost.append(LostWrite(write, entry[1]))
    return lost
