"""Merging the per-shard answers of a scatter read at the router.

Each shard returns its own first ``limit`` matches in (order_by, primary key)
order, so the global first ``limit`` are among them: a k-way merge keeps the
order and the limit, and the cursor of the last item kept resumes the whole
query on every shard.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from query.ordering import encode_cursor, position


def merge_pages(pages: list[dict[str, Any]], primary_key: str) -> dict[str, Any]:
    """One page from shard pages (``Page.to_json`` dicts) of the same query.

    The plans of every shard are concatenated, so ``?explain=1`` shows each.
    """
    if not pages:
        return {"kind": "page", "items": [], "next": None, "plan": []}
    first = pages[0]
    order_by, descending, limit = first["order_by"], first["descending"], first["limit"]
    merged = heapq.merge(
        *(page["items"] for page in pages),
        key=lambda doc: position(doc, order_by, primary_key),
        reverse=descending,
    )
    items = list(itertools.islice(merged, limit + 1))
    more = len(items) > limit or any(page["next"] for page in pages)
    items = items[:limit]
    return {
        **first,
        "items": items,
        "next": encode_cursor(items[-1], order_by, primary_key) if more and items else None,
        "plan": [plan for page in pages for plan in page["plan"]],
    }


def merge_values(values: list[Any]) -> dict[str, Any]:
    """Scatter results that are not pages: the list of each shard's value, in shard order."""
    return {"kind": "value", "value": values}
