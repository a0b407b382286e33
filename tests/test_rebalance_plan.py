"""The rebalance planner: even shares, drains, chosen ranges, chunking by document counts."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.slots import SLOT_COUNT, Ranges
from node.rebalance_plan import (
    Chunk,
    PlanError,
    chosen_plan,
    chunks,
    even_plan,
    even_shares,
    merged,
    parse_slots,
    size,
)

TWO = {"s0": [(0, 8191)], "s1": [(8192, 16383)]}


def after(owned: dict[str, Ranges], plan: list[Chunk]) -> dict[str, Ranges]:
    """Who owns what once ``plan`` ran; fails if a chunk moves a slot its source did not own at that point."""
    slots = {
        slot: shard for shard, ranges in owned.items() for first, last in ranges for slot in range(first, last + 1)
    }
    for chunk in plan:
        for slot in range(chunk.first, chunk.last + 1):
            assert slots[slot] == chunk.source, f"{chunk} moves slot {slot} held by {slots[slot]}"
            slots[slot] = chunk.target
    result: dict[str, Ranges] = {shard: [] for shard in owned}
    for slot, shard in slots.items():
        result[shard].append((slot, slot))
    return {shard: merged(ranges) for shard, ranges in result.items()}


def test_even_shares_give_the_remainder_to_the_first_shards() -> None:
    assert even_shares(["s0", "s1", "s2"]) == {"s0": 5462, "s1": 5461, "s2": 5461}
    assert even_shares(["s0", "s1"]) == {"s0": 8192, "s1": 8192}
    assert even_shares(["s0", "s1", "s2"], drained=["s0"]) == {"s0": 0, "s1": 8192, "s2": 8192}


def test_draining_every_shard_is_refused() -> None:
    with pytest.raises(PlanError, match="every shard"):
        even_shares(["s0"], drained=["s0"])


def test_adding_a_third_shard_takes_the_high_end_of_each_full_one() -> None:
    plan = even_plan({**TWO, "s2": []}, counts={})
    assert plan == [Chunk("s0", "s2", 5462, 8191), Chunk("s1", "s2", 13653, 16383)]
    assert after({**TWO, "s2": []}, plan) == {
        "s0": [(0, 5461)],
        "s1": [(8192, 13652)],
        "s2": [(5462, 8191), (13653, 16383)],
    }


def test_a_balanced_cluster_plans_nothing() -> None:
    assert even_plan(TWO, counts={5: 10_000}) == []


def test_draining_a_shard_hands_its_slots_to_the_others() -> None:
    owned = {"s0": [(0, 5461)], "s1": [(5462, 10922)], "s2": [(10923, 16383)]}
    final = after(owned, even_plan(owned, counts={}, drained=["s2"]))
    assert final["s2"] == []
    assert size(final["s0"]) == size(final["s1"]) == 8192


def test_draining_an_unknown_shard_is_refused() -> None:
    with pytest.raises(PlanError, match="no shard 's9'"):
        even_plan(TWO, counts={}, drained=["s9"])


def test_chunks_hold_at_most_max_docs_and_a_heavy_slot_stands_alone() -> None:
    counts = {10: 1500, 11: 400, 12: 200, 13: 5000, 14: 1}
    plan = chunks([Chunk("s0", "s1", 10, 20)], counts, max_docs=2000)
    assert plan == [
        Chunk("s0", "s1", 10, 11, 1900),
        Chunk("s0", "s1", 12, 12, 200),
        Chunk("s0", "s1", 13, 13, 5000),
        Chunk("s0", "s1", 14, 20, 1),
    ]


def test_chosen_slots_move_from_every_owner_and_skip_the_targets_own() -> None:
    owned = {"s0": [(0, 8191)], "s1": [(8192, 16383)], "s2": []}
    plan = chosen_plan(owned, parse_slots("8000-8300,100,101-102"), "s2", counts={8100: 3})
    assert plan == [Chunk("s0", "s2", 100, 102), Chunk("s0", "s2", 8000, 8191, 3), Chunk("s1", "s2", 8192, 8300)]
    assert chosen_plan(owned, [(10, 20)], "s0", counts={}) == []


def test_chosen_slots_nobody_owns_are_refused() -> None:
    with pytest.raises(PlanError, match="owned by no shard"):
        chosen_plan({"s0": [(0, 99)], "s1": [(200, 16383)]}, [(50, 150)], "s1", counts={})
    with pytest.raises(PlanError, match="no shard 'x'"):
        chosen_plan(TWO, [(1, 2)], "x", counts={})


@pytest.mark.parametrize("text", ["", "5-", "a", "9-3", f"0-{SLOT_COUNT}", "1-2-3", "-1"])
def test_malformed_slot_lists_are_refused(text: str) -> None:
    with pytest.raises(PlanError):
        parse_slots(text)


def test_slot_lists_merge() -> None:
    assert parse_slots("300, 100-299,4000") == [(100, 300), (4000, 4000)]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[dict[str, Ranges], list[str], dict[int, int]]:
    """A partition of the slots among 1-5 shards (some holding nothing), a drained subset, random counts."""
    count = draw(st.integers(1, 5))
    cuts = sorted(draw(st.sets(st.integers(1, SLOT_COUNT - 1), max_size=8)))
    bounds = [0, *cuts, SLOT_COUNT]
    owned: dict[str, Ranges] = {f"s{i}": [] for i in range(count)}
    for first, end in itertools.pairwise(bounds):
        owned[f"s{draw(st.integers(0, count - 1))}"].append((first, end - 1))
    drained = draw(st.lists(st.sampled_from(sorted(owned)), unique=True, max_size=count - 1))
    counts = draw(st.dictionaries(st.integers(0, SLOT_COUNT - 1), st.integers(1, 3000), max_size=50))
    return owned, drained, counts


@settings(max_examples=200, deadline=None)
@given(layouts(), st.integers(1, 5000))
def test_any_layout_ends_even_with_bounded_chunks(
    layout: tuple[dict[str, Ranges], list[str], dict[int, int]], max_docs: int
) -> None:
    owned, drained, counts = layout
    plan = even_plan(owned, counts, max_docs, drained)
    final = after(owned, plan)
    assert {shard: size(ranges) for shard, ranges in final.items()} == even_shares(list(owned), drained)
    for chunk in plan:
        assert chunk.source != chunk.target
        assert chunk.docs == sum(counts.get(s, 0) for s in range(chunk.first, chunk.last + 1))
        heavy = [s for s in range(chunk.first, chunk.last + 1) if counts.get(s, 0)]
        assert chunk.docs <= max_docs or len(heavy) == 1
