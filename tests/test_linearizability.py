"""The register history checks (linearizability, lost writes) on small histories with known answers."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from bench.linearizability import Op, check_history, is_linearizable, lost_writes


def w(p: int, v: int, t0: float, t1: float | None, key: int = 0) -> Op:
    return Op(p, key, "write", v, None, t0, t1)


def r(p: int, v: int | None, t0: float, t1: float, key: int = 0) -> Op:
    return Op(p, key, "read", None, v, t0, t1)


def cas(p: int, old: int, new: int, found: int | None, t0: float, t1: float | None, key: int = 0) -> Op:
    """A cas that found ``found`` (it swapped iff that is ``old``); ``t1`` None: outcome unknown."""
    return Op(p, key, "cas", (old, new), found, t0, t1)


def test_sequential_history_is_linearizable() -> None:
    assert is_linearizable([w(0, 1, 0, 1), r(1, 1, 2, 3), cas(0, 1, 2, 1, 4, 5), r(1, 2, 6, 7)])


def test_stale_read_after_a_completed_write_is_not() -> None:
    assert is_linearizable([w(0, 1, 0, 1), r(1, None, 2, 3)]) is False


def test_concurrent_read_may_see_either_value() -> None:
    assert is_linearizable([w(0, 1, 0, 1), w(0, 2, 2, 10), r(1, 1, 3, 4), r(1, 2, 5, 6)])
    # ...but not go back once it has seen the new one
    assert is_linearizable([w(0, 1, 0, 1), w(0, 2, 2, 10), r(1, 2, 3, 4), r(1, 1, 5, 6)]) is False


def test_a_cas_finds_the_current_value() -> None:
    assert is_linearizable([w(0, 1, 0, 1), cas(1, 7, 5, 1, 2, 3), r(0, 1, 4, 5)])
    # a failed cas that found a value the register no longer held
    assert is_linearizable([w(0, 1, 0, 1), w(0, 2, 2, 3), cas(1, 7, 5, 1, 4, 5)]) is False
    # finding ``old`` means it swapped: the register cannot still hold ``old``
    assert is_linearizable([w(0, 1, 0, 1), cas(1, 1, 5, 1, 2, 3), r(0, 1, 4, 5)]) is False


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


def lost(history: list[Op]) -> list[tuple[Op, Op]]:
    return [(loss.write, loss.observation) for loss in lost_writes(history)]


def test_a_write_a_later_read_contradicts_is_lost() -> None:
    first, second, stale = w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 1, 4, 5)
    assert lost([first, second, stale]) == [(second, stale)]
    # the final read finding the initial value loses every acknowledged write before it
    final = r(-1, None, 6, 7)
    assert lost([first, second, final]) == [(first, final), (second, final)]


def test_a_read_concurrent_with_the_write_proves_nothing() -> None:
    assert lost([w(0, 1, 0, 1), w(0, 2, 2, 5), r(1, 1, 3, 4)]) == []
    assert lost([w(0, 1, 0, 1), w(0, 2, 2, 5), r(1, 1, 4, 6)]) == []  # began before the write completed


def test_an_overwritten_write_is_not_lost() -> None:
    assert lost([w(0, 1, 0, 1), w(0, 2, 2, 3), r(1, 2, 4, 5)]) == []
    # by a concurrent write that completed later
    assert lost([w(0, 1, 0, 5), w(1, 2, 2, 3), r(2, 1, 6, 7)]) == []
    # by a swap
    assert lost([w(0, 1, 0, 1), cas(1, 1, 5, 1, 2, 3), r(2, 5, 4, 5)]) == []


def test_a_write_overwritten_by_an_unknown_outcome_is_not_lost() -> None:
    assert lost([w(0, 1, 0, 1), w(1, 2, 2, None), r(2, 2, 10, 11)]) == []
    # an unknown write invoked before it may take effect after it
    assert lost([w(1, 2, 0, None), w(0, 1, 1, 2), r(2, 2, 3, 4)]) == []
    assert lost([w(0, 1, 0, 1), cas(1, 1, 5, None, 2, None), r(2, 5, 4, 5)]) == []


def test_a_failed_cas_finding_an_old_value_finds_the_loss() -> None:
    second, failed = w(0, 2, 2, 3), cas(1, 7, 9, 1, 4, 5)
    assert lost([w(0, 1, 0, 1), second, failed]) == [(second, failed)]


def test_an_acknowledged_swap_can_be_lost() -> None:
    swap, stale = cas(1, 1, 5, 1, 2, 3), r(2, 1, 4, 5)
    assert lost([w(0, 1, 0, 1), swap, stale]) == [(swap, stale)]


def test_failed_cas_and_unknown_outcomes_do_not_vouch_for_a_write() -> None:
    second, final = w(0, 2, 2, 3), r(-1, 1, 10, 11)
    history = [w(0, 1, 0, 1), second, cas(1, 7, 9, 2, 4, 5), w(1, 3, 6, None), cas(1, 2, 4, None, 7, None), final]
    assert lost(history) == [(second, final)]


def test_the_oldest_observation_is_the_evidence() -> None:
    second, third = w(0, 2, 2, 3), w(0, 3, 4, 5)
    oldest = r(1, None, 8, 9)
    assert lost([w(0, 1, 0, 1), second, third, r(1, 1, 6, 7), oldest]) == [
        (w(0, 1, 0, 1), oldest),
        (second, oldest),
        (third, oldest),
    ]


@st.composite
def real_histories(draw: st.DrawFn) -> list[Op]:
    """Histories of one register that really happened, with unique written values.

    Each op takes effect at a point inside its interval, except that a write
    or cas of unknown outcome may also never take effect.
    """
    specs = []
    for i in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(["write", "read", "cas"]))
        start = draw(st.integers(0, 30))
        unknown = kind != "read" and draw(st.integers(0, 3)) == 0
        end = None if unknown else start + draw(st.integers(6, 12))
        applied = not unknown or draw(st.booleans())
        specs.append((start + draw(st.integers(1, 5)), i, kind, start, end, applied))
    value: int | None = None
    history = []
    for _, i, kind, start, end, applied in sorted(specs):
        written = 100 + i
        if kind == "read":
            history.append(Op(i, 0, "read", None, value, start, end))
        elif kind == "write":
            history.append(Op(i, 0, "write", written, None, start, end))
            value = written if applied else value
        else:
            old = value if draw(st.booleans()) else 7
            history.append(Op(i, 0, "cas", (old, written), None if end is None else value, start, end))
            value = written if applied and value == old else value
    return history


@given(real_histories())
def test_histories_that_really_happened_lose_nothing_and_linearize(history: list[Op]) -> None:
    assert lost_writes(history) == []
    assert is_linearizable(history)


def test_an_unknown_cas_keeps_the_unknown_write_it_can_only_have_swapped_from() -> None:
    # Nobody read 6, but 4 was read, and only the unknown cas 6 -> 4 wrote it: the unknown write of 6 took effect.
    history = [w(0, 6, 0, None), cas(1, 6, 4, None, 0, None), r(2, None, 0, 6), r(3, 4, 0, 6)]
    assert is_linearizable(history)
    assert is_linearizable([w(0, 9, 0, None), *history[1:]]) is False  # with no write of 6, 4 cannot appear


def test_the_smallest_failing_prefix_brings_the_writes_its_reads_observed() -> None:
    # The read at 1 sees 2, written by an op invoked later but concurrent with it: not a failure on its own.
    history = [w(0, 1, 0, 0.5), r(1, 2, 1, 5), w(2, 2, 2, 3), r(1, 1, 6, 7)]
    (verdict,) = check_history(history)
    assert verdict.linearizable is False
    assert [(op["kind"], op["value"], op["output"]) for op in verdict.smallest_failing] == [
        ("write", 1, None),
        ("read", None, 2),
        ("write", 2, None),
        ("read", None, 1),
    ]
