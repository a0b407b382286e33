"""The planner's choice of access path, ``find`` against a brute-force oracle, and ``merge_pages``."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import pytest
import ujson
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.slots import slot_of
from models import Model, field
from models.errors import BadRequest
from query.collection import Collection
from query.merge import merge_pages
from query.planner import Condition, Page, Range, choose_plan, find

PROPERTY = settings(max_examples=150, deadline=None)


class Item(Model, indexes=("rank", "tag")):
    id: int = field(primary_key=True)
    rank: int
    label: str
    tag: int | None


def collection_of(docs: list[dict[str, Any]]) -> Collection:
    collection = Collection(Item, slot_of)
    for doc in docs:
        collection.put(Item.validate(doc))
    return collection


# -- choose_plan ---------------------------------------------------------------


def plan_of(where: Mapping[str, Condition], order_by: str = "id", descending: bool = False) -> tuple[Any, ...]:
    plan = choose_plan(Item, where, order_by, descending)
    return plan.access, plan.field, plan.sort


@pytest.mark.parametrize("order_by", ["id", "rank", "label", "tag"])
def test_primary_key_equality_is_a_lookup_that_never_sorts(order_by: str) -> None:
    where = {"id": 3, "rank": 1, "tag": Range(gte=2), "label": "x"}
    assert plan_of(where, order_by) == ("primary_key_lookup", "id", False)


@pytest.mark.parametrize(
    ("where", "order_by", "expected"),
    [
        # an index equality yields (value, pk) order: pk order, and the field's own order
        ({"rank": 1}, "id", ("index_equality", "rank", False)),
        ({"rank": 1}, "rank", ("index_equality", "rank", False)),
        ({"rank": 1}, "label", ("index_equality", "rank", True)),
        ({"rank": 1}, "tag", ("index_equality", "rank", True)),
        # with two indexed equalities the one matching order_by wins, else the first declared index
        ({"tag": 2, "rank": 1}, "tag", ("index_equality", "tag", False)),
        ({"tag": 2, "rank": 1}, "id", ("index_equality", "rank", False)),
        # an equality beats a range, and an indexed one beats a primary-key range
        ({"rank": Range(gte=1), "tag": None}, "rank", ("index_equality", "tag", True)),
        ({"id": Range(lt=9), "tag": 4}, "id", ("index_equality", "tag", False)),
        # an unindexed equality does not count
        ({"label": "a", "rank": 1}, "id", ("index_equality", "rank", False)),
    ],
)
def test_index_equality(where: dict[str, Condition], order_by: str, expected: tuple[Any, ...]) -> None:
    assert plan_of(where, order_by) == expected


@pytest.mark.parametrize(
    ("where", "order_by", "expected"),
    [
        ({"rank": Range(gte=1)}, "rank", ("index_range", "rank", False)),
        ({"rank": Range(gte=1)}, "id", ("index_range", "rank", True)),
        ({"rank": Range(gte=1)}, "tag", ("index_range", "rank", True)),
        ({"rank": Range(gte=1), "tag": Range(lt=3)}, "tag", ("index_range", "tag", False)),
        ({"rank": Range(gte=1), "tag": Range(lt=3)}, "id", ("index_range", "rank", True)),
        # an index range beats an index walk in the requested order and a primary-key range
        ({"tag": Range(gt=0), "id": Range(lt=5)}, "rank", ("index_range", "tag", True)),
        ({"tag": Range(gt=0), "label": "x"}, "label", ("index_range", "tag", True)),
    ],
)
def test_index_range(where: dict[str, Condition], order_by: str, expected: tuple[Any, ...]) -> None:
    assert plan_of(where, order_by) == expected


@pytest.mark.parametrize(
    ("where", "order_by", "expected"),
    [
        ({}, "rank", ("index_order", "rank", False)),
        ({}, "tag", ("index_order", "tag", False)),
        ({"label": "x"}, "rank", ("index_order", "rank", False)),
        # walking an index in the requested order beats a primary-key range that would need a sort
        ({"id": Range(gte=2)}, "tag", ("index_order", "tag", False)),
    ],
)
def test_index_order(where: dict[str, Condition], order_by: str, expected: tuple[Any, ...]) -> None:
    assert plan_of(where, order_by) == expected


@pytest.mark.parametrize(
    ("where", "order_by", "expected"),
    [
        ({"id": Range(gte=2)}, "id", ("primary_key_range", "id", False)),
        ({"id": Range(gte=2), "label": "x"}, "label", ("primary_key_range", "id", True)),
        ({}, "id", ("full_scan", None, False)),
        ({"label": "x"}, "id", ("full_scan", None, False)),
        ({"label": Range(gte="a")}, "label", ("full_scan", None, True)),
    ],
)
def test_primary_key_range_and_full_scan(where: dict[str, Condition], order_by: str, expected: tuple[Any, ...]) -> None:
    assert plan_of(where, order_by) == expected


def test_plan_json_names_the_filters_sorted_and_the_direction() -> None:
    plan = choose_plan(Item, {"tag": 1, "label": "x", "id": Range(gt=0)}, "rank", True)
    assert plan.to_json() == {
        "access": "index_equality",
        "field": "tag",
        "order_by": "rank",
        "descending": True,
        "sort": True,
        "filters": ["id", "label", "tag"],
    }


def test_explain_puts_the_plan_on_the_page() -> None:
    collection = collection_of([{"id": 1, "rank": 1, "label": "a"}])
    assert find(collection, {"rank": 1}).plan == []
    page = find(collection, {"rank": 1}, order_by="label", explain=True)
    assert page.plan == [choose_plan(Item, {"rank": 1}, "label", False).to_json()]
    assert page.plan[0]["sort"] is True


# -- find against a brute-force oracle -------------------------------------------

LABELS = st.text(alphabet="abc", max_size=2)
RANKS = st.integers(0, 5)
TAGS = st.none() | st.integers(0, 4)
IDS = st.integers(-5, 40)

DOCS = st.lists(
    st.fixed_dictionaries({"id": IDS, "rank": RANKS, "label": LABELS, "tag": TAGS}),
    unique_by=lambda d: d["id"],
    min_size=3,
    max_size=30,
)


def ranges(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Range]:
    bound = st.sampled_from([None, None]) | values  # mostly unbounded, so ranges are rarely empty
    return st.builds(Range, gte=bound, gt=bound, lte=bound, lt=bound)


def conditions(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Condition]:
    return values | ranges(values)


WHERE = st.fixed_dictionaries(
    {},
    optional={
        "id": conditions(IDS),
        "rank": conditions(RANKS),
        "label": conditions(LABELS),
        # an equality to None finds documents without a tag; Range bounds are never None
        "tag": TAGS | ranges(st.integers(0, 4)),
    },
)
ORDER_BY = st.sampled_from([None, "id", "rank", "label", "tag"])


def oracle_matches(cond: Condition, value: Any) -> bool:
    if not isinstance(cond, Range):
        return bool(value == cond)
    if value is None:
        return False
    checks = [
        cond.gte is None or value >= cond.gte,
        cond.gt is None or value > cond.gt,
        cond.lte is None or value <= cond.lte,
        cond.lt is None or value < cond.lt,
    ]
    return all(checks)


def brute_force(
    docs: list[dict[str, Any]], where: Mapping[str, Condition], order_by: str | None, descending: bool
) -> list[dict[str, Any]]:
    order_by = order_by or "id"
    clean = [Item.validate(doc) for doc in docs]
    kept = [d for d in clean if all(oracle_matches(c, d[name]) for name, c in where.items())]

    def key(doc: dict[str, Any]) -> tuple[Any, ...]:
        value = doc[order_by]
        return ((0,) if value is None else (1, value), doc["id"])

    return sorted(kept, key=key, reverse=descending)


def all_pages(run: Any, limit: int, expected_total: int) -> list[list[dict[str, Any]]]:
    """Pages from ``run(after)`` until ``next`` is None; fails instead of looping forever."""
    pages: list[list[dict[str, Any]]] = []
    after = None
    for _ in range(expected_total // max(limit, 1) + 2):
        page = run(after)
        pages.append(page["items"])
        assert len(page["items"]) <= limit
        after = page["next"]
        if after is None:
            return pages
    raise AssertionError(f"pagination did not end after {len(pages)} pages")


@PROPERTY
@given(
    docs=DOCS,
    where=WHERE,
    order_by=ORDER_BY,
    descending=st.booleans(),
    limit=st.integers(0, 12),
)
def test_find_matches_brute_force(
    docs: list[dict[str, Any]],
    where: dict[str, Condition],
    order_by: str | None,
    descending: bool,
    limit: int,
) -> None:
    collection = collection_of(docs)
    expected = brute_force(docs, where, order_by, descending)
    page = find(collection, where, order_by=order_by, descending=descending, limit=limit)
    assert page.items == expected[:limit]
    assert (page.next is not None) == (0 < limit < len(expected))
    assert page.order_by == (order_by or "id")
    assert page.model == "Item"


@PROPERTY
@given(
    docs=DOCS,
    where=WHERE,
    order_by=ORDER_BY,
    descending=st.booleans(),
    limit=st.integers(1, 7),
)
def test_paginating_find_yields_everything_once(
    docs: list[dict[str, Any]],
    where: dict[str, Condition],
    order_by: str | None,
    descending: bool,
    limit: int,
) -> None:
    collection = collection_of(docs)
    expected = brute_force(docs, where, order_by, descending)

    def run(after: str | None) -> dict[str, Any]:
        page = find(collection, where, order_by=order_by, descending=descending, limit=limit, after=after)
        return page.to_json()

    pages = all_pages(run, limit, len(expected))
    assert [doc for page in pages for doc in page] == expected
    # a page with a cursor promises more, so only a lone first page may be empty
    assert all(pages[1:])


def test_find_survives_writes_between_pages() -> None:
    """A cursor is a position, not an offset: inserts and deletes before it do not shift the rest."""
    collection = collection_of([{"id": i, "rank": i % 3, "label": "x"} for i in range(10)])
    first = find(collection, {}, order_by="rank", limit=4)
    assert [d["id"] for d in first.items] == [0, 3, 6, 9]
    collection.remove(3)
    collection.put(Item.validate({"id": -1, "rank": 0, "label": "x"}))
    second = find(collection, {}, order_by="rank", limit=4, after=first.next)
    assert [d["id"] for d in second.items] == [1, 4, 7, 2]


# -- merge_pages -----------------------------------------------------------------


@PROPERTY
@given(
    docs=DOCS,
    shard_of=st.lists(st.integers(0, 2), min_size=30, max_size=30),
    where=WHERE,
    order_by=ORDER_BY,
    descending=st.booleans(),
    limit=st.integers(1, 7),
)
def test_merged_shard_pages_equal_one_collection(
    docs: list[dict[str, Any]],
    shard_of: list[int],
    where: dict[str, Condition],
    order_by: str | None,
    descending: bool,
    limit: int,
) -> None:
    whole = collection_of(docs)
    shards = [collection_of([d for i, d in enumerate(docs) if shard_of[i] == s]) for s in range(3)]
    after = None
    expected = brute_force(docs, where, order_by, descending)
    collected: list[dict[str, Any]] = []
    for _ in range(len(expected) // limit + 2):
        options: dict[str, Any] = {"order_by": order_by, "descending": descending, "limit": limit}
        merged = merge_pages([find(s, where, after=after, **options).to_json() for s in shards], "id")
        single = find(whole, where, after=after, **options).to_json()
        assert merged["items"] == single["items"]
        assert merged["next"] == single["next"]
        collected += merged["items"]
        after = merged["next"]
        if after is None:
            break
    assert after is None
    assert collected == expected


def test_merge_concatenates_every_shard_plan() -> None:
    shards = [collection_of([{"id": s, "rank": s, "label": "x"}]) for s in range(3)]
    pages = [find(s, {"rank": Range(gte=0)}, explain=True).to_json() for s in shards]
    merged = merge_pages(pages, "id")
    assert [d["id"] for d in merged["items"]] == [0, 1, 2]
    assert len(merged["plan"]) == 3
    assert all(plan["access"] == "index_range" for plan in merged["plan"])


def test_merge_of_no_pages_is_empty() -> None:
    assert merge_pages([], "id") == {"kind": "page", "items": [], "next": None, "plan": []}


# -- errors ----------------------------------------------------------------------


def cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(ujson.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor", ["", "not a cursor!", "%%%", cursor_of([1]), cursor_of("text"), cursor_of([1, 2, 3])]
)
def test_bad_cursor_is_bad_request(cursor: str) -> None:
    collection = collection_of([{"id": 1, "rank": 1, "label": "x"}])
    with pytest.raises(BadRequest, match="not a cursor docraft returned") as info:
        find(collection, {}, after=cursor)
    assert info.value.details == {"param": "cursor"}
    assert info.value.status == 400


def test_base64_of_non_json_is_bad_request() -> None:
    collection = collection_of([])
    with pytest.raises(BadRequest):
        find(collection, {}, after=base64.urlsafe_b64encode(b"{not json").decode())


@pytest.mark.parametrize(
    ("order_by", "position"),
    [
        ("id", ["x", "y"]),
        ("id", {"a": 1, "b": 2}),
        ("id", [1.5, 1]),
        ("id", [True, 1]),
        ("id", [1, None]),
        ("id", [1, "1"]),
        ("rank", [[1], 1]),
        ("label", [1, 1]),
        ("tag", ["x", 1]),
    ],
)
def test_cursor_of_the_wrong_type_is_bad_request(order_by: str, position: Any) -> None:
    # well-formed cursors whose values cannot be positions of this query: a 400, not a TypeError
    collection = collection_of([{"id": 1, "rank": 1, "label": "x", "tag": 2}])
    with pytest.raises(BadRequest, match="not a cursor docraft returned") as info:
        find(collection, {}, order_by=order_by, after=cursor_of(position))
    assert info.value.details == {"param": "cursor"}


def test_cursor_with_a_null_value_resumes_on_an_optional_field() -> None:
    docs = [{"id": i, "rank": i, "label": "x", "tag": None if i < 3 else i} for i in range(6)]
    collection = collection_of(docs)
    page = find(collection, {}, order_by="tag", after=cursor_of([None, 1]))
    assert [d["id"] for d in page.items] == [2, 3, 4, 5]


@pytest.mark.parametrize(
    ("where", "order_by", "unknown"),
    [({"colour": "red"}, None, "colour"), ({}, "colour", "colour"), ({"rank": 1, "nope": 2}, "id", "nope")],
)
def test_unknown_field_is_bad_request(where: dict[str, Any], order_by: str | None, unknown: str) -> None:
    with pytest.raises(BadRequest, match=f"Item has no field '{unknown}'") as info:
        find(collection_of([]), where, order_by=order_by)
    assert info.value.details == {"field": unknown}


def test_negative_limit_is_bad_request() -> None:
    with pytest.raises(BadRequest, match="limit") as info:
        find(collection_of([]), {}, limit=-1)
    assert info.value.details == {"param": "limit"}


def test_page_json_shape() -> None:
    page = Page(items=[], model="Item", order_by="id", descending=False, limit=5, next=None)
    assert page.to_json() == {
        "kind": "page",
        "items": [],
        "model": "Item",
        "order_by": "id",
        "descending": False,
        "limit": 5,
        "next": None,
        "plan": [],
    }
