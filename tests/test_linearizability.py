"""The register linearizability checker on small histories with known answers."""

from __future__ import annotations

import random

from bench.linearizability import Op, check_history, is_linearizable


def w(p: int, v: int, t0: float, t1: float | None, key: int = 0) -> Op:
    return Op(p, key, "write", v, None, t0, t1)


def r(p: int, v: int | None, t0: float, t1: float, key: int = 0) -> Op:
    return Op(p, key, "read", None, v, t0, t1)


def cas(p: int, old: int, new: int, swapped: bool | None, t0: float, t1: float | None, key: int = 0) -> Op:
    return Op(p, key, "cas", (old, new), swapped, t0, t1)


def test_sequential_history_is_linearizable() -> None:
    assert is_linearizable([w(0, 1, 0, 1), r(1, 1, 2, 3), cas(0, 1, 2, True, 4, 5), r(1, 2, 6, 7)])


def test_stale_read_after_a_completed_write_is_not() -> None:
    assert is_linearizable([w(0, 1, 0, 1), r(1, None, 2, 3)]) is False


def test_concurrent_read_may_see_either_value() -> None:
    assert is_linearizable([w(0, 1, 0, 1), w(0, 2, 2, 10), r(1, 1, 3, 4), r(1, 2, 5, 6)])
    # ...but not go back once it has seen the new one
    assert is_linearizable([w(0, 1, 0, 1), w(0, 2, 2, 10), r(1, 2, 3, 4), r(1, 1, 5, 6)]) is False


def test_failed_cas_must_see_another_value() -> None:
    assert is_linearizable([w(0, 1, 0, 1), cas(1, 1, 5, False, 2, 3)]) is False
    assert is_linearizable([w(0, 1, 0, 1), cas(1, 7, 5, False, 2, 3), r(0, 1, 4, 5)])


def test_unknown_write_may_apply_late_or_never() -> None:
    # an unknown write observed long after it was invoked: it took effect late
    assert is_linearizable([w(0, 1, 0, 1), w(1, 2, 2, None), r(2, 1, 3, 4), r(2, 2, 20, 21)])
    # an unknown write never observed: it may never have happened
    assert is_linearizable([w(0, 1, 0, 1), w(1, 2, 2, None), r(2, 1, 30, 31)])
    # but it cannot take effect before it was invoked
    assert is_linearizable([w(0, 1, 0, 1), r(2, 2, 2, 3), w(1, 2, 5, None)]) is False


def test_unknown_cas_applies_only_where_it_would_have_swapped() -> None:
    assert is_linearizable([w(0, 1, 0, 1), cas(1, 1, 3, None, 2, None), r(0, 3, 5, 6)])
    assert is_linearizable([w(0, 4, 0, 1), cas(1, 1, 3, None, 2, None), r(0, 3, 5, 6)]) is False


def test_keys_are_checked_independently_and_failures_are_minimised() -> None:
    history = [
        w(0, 1, 0, 1, key=1),
        r(1, 1, 2, 3, key=1),
        w(0, 5, 0, 1, key=2),
        r(1, 5, 2, 3, key=2),
        w(0, 6, 4, 5, key=2),
        r(1, 5, 6, 7, key=2),  # stale: 6 was written before this read began
        r(1, 6, 8, 9, key=2),
    ]
    verdicts = {v.key: v for v in check_history(history)}
    assert verdicts[1].linearizable is True and verdicts[1].smallest_failing == []
    assert verdicts[2].linearizable is False
    assert [op["output"] for op in verdicts[2].smallest_failing] == [None, 5, None, 5]


def test_a_long_sequential_history_checks_quickly() -> None:
    rng = random.Random(3)
    ops, value, t = [], None, 0.0
    for i in range(3000):
        if rng.random() < 0.5:
            value = i
            ops.append(w(0, i, t, t + 0.5))
        else:
            ops.append(r(1, value, t, t + 0.5))
        t += 1
    assert is_linearizable(ops)
    ops[-1] = r(1, -1, t, t + 0.5) if ops[-1].kind == "read" else ops[-1]
    ops.append(r(1, -2, t + 1, t + 2))
    assert is_linearizable(ops) is False
