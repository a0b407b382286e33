"""Where the fault benchmark's keys live: keys spread over the shards, and the end-of-run placement verdict."""

from __future__ import annotations

from typing import Any

from bench.placement import by_shard, judge, owner_of, spread_keys, state_of
from consensus.slots import slot_of

HALVES = {"s0": [(0, 8191)], "s1": [(8192, 16383)]}


def test_one_shard_keeps_the_keys_0_to_n() -> None:
    assert spread_keys({"s0": [(0, 16383)]}, 5) == [0, 1, 2, 3, 4]


def test_keys_split_evenly_over_the_shards_by_slot() -> None:
    keys = spread_keys(HALVES, 8)
    shards = by_shard({key: owner_of(HALVES, key) for key in keys})
    assert sorted(shards) == ["s0", "s1"] and [len(held) for held in shards.values()] == [4, 4]
    # each shard's keys are the smallest integers it owns
    assert shards["s0"] == [k for k in range(max(keys) + 1) if slot_of(k) <= 8191][:4]


def test_a_shard_without_slots_gets_no_keys() -> None:
    keys = spread_keys({**HALVES, "s2": []}, 4)
    assert {owner_of(HALVES, key) for key in keys} == {"s0", "s1"}


def ranges(*spans: tuple[int, int, str]) -> list[dict[str, Any]]:
    return [{"first": first, "last": last, "state": state} for first, last, state in spans]


def test_a_key_owned_by_one_group_passes_and_the_other_group_is_probed() -> None:
    key = 0
    slot = slot_of(key)
    verdict, probes = judge({"s0": ranges((slot, slot, "owned")), "s1": ranges((slot, slot, "moved"))}, [key])
    assert verdict.passed and probes == [("s1", key)]
    assert state_of(ranges((0, 10, "owned"), (11, 20, "frozen")), 15) == "frozen"


def test_a_key_held_by_two_groups_or_by_none_or_left_frozen_fails() -> None:
    key = 0
    slot = slot_of(key)
    owned = ranges((slot, slot, "owned"))
    for by_group in (
        {"s0": owned, "s1": owned},  # on two shards
        {"s0": [], "s1": ranges((slot, slot, "importing"))},  # on none
        {"s0": ranges((slot, slot, "frozen")), "s1": []},  # a move left unfinished
    ):
        verdict, _ = judge(by_group, [key])
        assert not verdict.passed and f"key {key}" in verdict.problems[0]
