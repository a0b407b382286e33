"""Choosing and running an access path for a ``find`` on one collection.

The planner prefers, in order: a primary-key lookup, an index equality, an
index range (or an index walk that yields the requested order), a primary-key
range, and a full scan as the fallback. Every condition is re-checked on each
candidate, so the access path only decides speed, never the answer. When the
path does not yield documents in the requested order, results are collected
and sorted (the plan says ``"sort": true``). Candidates are the collection's
stored documents, lent; only the page's items are copied, so a find costs one
copy per returned document, not per scanned one.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Generic, TypeVar

from models.errors import BadRequest
from models.json_values import copy_document
from models.model import Model
from query.collection import Collection
from query.ordering import SortKey, decode_cursor, encode_cursor, position, value_key


@dataclass(frozen=True)
class Range:
    """A condition ``gte <= value <= lte`` with optional strict bounds ``gt``/``lt``."""

    gte: Any = None
    gt: Any = None
    lte: Any = None
    lt: Any = None

    def low(self) -> SortKey | None:
        bound = self.gte if self.gte is not None else self.gt
        return None if bound is None else value_key(bound)

    def high(self) -> SortKey | None:
        bound = self.lte if self.lte is not None else self.lt
        return None if bound is None else value_key(bound)

    def matches(self, value: Any) -> bool:
        if value is None:
            return False
        return not (
            (self.gte is not None and value < self.gte)
            or (self.gt is not None and value <= self.gt)
            or (self.lte is not None and value > self.lte)
            or (self.lt is not None and value >= self.lt)
        )


Condition = Any  # a value (equality) or a Range


def _matches(cond: Condition, value: Any) -> bool:
    return cond.matches(value) if isinstance(cond, Range) else value == cond


@dataclass(frozen=True)
class Plan:
    """How a find runs; ``to_json`` is what ``?explain=1`` shows."""

    access: str
    field: str | None
    order_by: str
    descending: bool
    sort: bool
    filters: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "access": self.access,
            "field": self.field,
            "order_by": self.order_by,
            "descending": self.descending,
            "sort": self.sort,
            "filters": list(self.filters),
        }


PageModel = TypeVar("PageModel")


@dataclass
class Page(Generic[PageModel]):
    """One page of documents in (order_by, primary key) order; ``next`` resumes after it.

    ``items`` are copies the holder owns. ``Page[User]`` in an endpoint's
    return annotation types its result for schema export.
    """

    items: list[dict[str, Any]]
    model: str
    order_by: str
    descending: bool
    limit: int
    next: str | None
    plan: list[dict[str, Any]] = dataclass_field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "page",
            "items": self.items,
            "model": self.model,
            "order_by": self.order_by,
            "descending": self.descending,
            "limit": self.limit,
            "next": self.next,
            "plan": self.plan,
        }


def choose_plan(model: type[Model], where: Mapping[str, Condition], order_by: str, descending: bool) -> Plan:
    """Pick the cheapest access path for ``where`` that the model's indexes allow."""
    pk = model.primary_key
    filters = tuple(sorted(where))
    indexed = [name for name in model.indexes if name in where]
    equalities = [name for name in indexed if not isinstance(where[name], Range)]
    ranges = [name for name in indexed if isinstance(where[name], Range)]

    def make(access: str, on: str | None, ordered_by: tuple[str, ...]) -> Plan:
        return Plan(access, on, order_by, descending, order_by not in ordered_by, filters)

    if pk in where and not isinstance(where[pk], Range):
        return make("primary_key_lookup", pk, (order_by,))
    if equalities:
        best = order_by if order_by in equalities else equalities[0]
        return make("index_equality", best, (pk, best))
    if ranges:
        best = order_by if order_by in ranges else ranges[0]
        return make("index_range", best, (best,))
    if order_by in model.indexes:
        return make("index_order", order_by, (order_by,))
    if pk in where:
        return make("primary_key_range", pk, (pk,))
    return make("full_scan", None, (pk,))


def _candidates(collection: Collection, plan: Plan, where: Mapping[str, Condition]) -> Iterator[dict[str, Any]]:
    """The stored documents the plan's access path visits, lent: read them, never change or return them."""
    reverse = plan.descending and not plan.sort
    on = plan.field or collection.model.primary_key
    if plan.access == "primary_key_lookup":
        doc = collection.stored(where[on])
        return iter(() if doc is None else (doc,))
    if plan.access == "index_equality":
        key = value_key(where[on])
        return collection.stored_by_index(on, key, key, reverse)
    if plan.access in ("index_range", "index_order"):
        cond = where.get(on)
        low, high = (cond.low(), cond.high()) if isinstance(cond, Range) else (None, None)
        return collection.stored_by_index(on, low, high, reverse)
    cond = where.get(collection.model.primary_key)
    if isinstance(cond, Range):
        return collection.stored_by_key(cond.low(), cond.high(), reverse)
    return collection.stored_by_key(reverse=reverse)


def find(
    collection: Collection,
    where: Mapping[str, Condition],
    *,
    order_by: str | None = None,
    descending: bool = False,
    limit: int = 100,
    after: str | None = None,
    explain: bool = False,
) -> Page[Any]:
    """Copies of the documents matching every condition in ``where``, one page of at most ``limit``.

    ``after`` is a cursor from a previous page's ``next``. Raises ``BadRequest``
    for an unknown field or a bad cursor or limit.
    """
    model = collection.model
    order_by = order_by or model.primary_key
    for name in (*where, order_by):
        if name not in model.fields:
            raise BadRequest(f"{model.name} has no field {name!r}", field=name)
    if not 0 <= limit < sys.maxsize:  # islice takes limit + 1
        raise BadRequest(f"limit must be between 0 and {sys.maxsize - 1}", param="limit")
    plan = choose_plan(model, where, order_by, descending)
    pk = model.primary_key
    matching: Iterator[dict[str, Any]] = (
        doc
        for doc in _candidates(collection, plan, where)
        if all(_matches(cond, doc.get(name)) for name, cond in where.items())
    )
    if plan.sort:
        matching = iter(sorted(matching, key=lambda d: position(d, order_by, pk), reverse=descending))
    if after is not None:
        start = decode_cursor(after, model.fields[order_by].type, model.fields[pk].type)
        if descending:
            matching = (d for d in matching if position(d, order_by, pk) < start)
        else:
            matching = (d for d in matching if position(d, order_by, pk) > start)
    items = list(itertools.islice(matching, limit + 1))
    more = len(items) > limit
    items = [copy_document(doc) for doc in items[:limit]]
    next_cursor = encode_cursor(items[-1], order_by, pk) if more and items else None
    return Page(
        items=items,
        model=model.name,
        order_by=order_by,
        descending=descending,
        limit=limit,
        next=next_cursor,
        plan=[plan.to_json()] if explain else [],
    )
