"""``include=``: embedding each returned document's related documents under the relation's name.

Children co-located with their parent share its partition value, hence its
slot, and move with it: they are looked up only at the group that owns each
parent's slot now (``Router.read_keys``). Other relations are looked up on
every group (``Router.scatter``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ujson

from models.errors import BadRequest
from models.model import Model
from node.consistency import Consistency
from query.ordering import value_key

if TYPE_CHECKING:
    from node.router import Router


async def embed(
    router: Router,
    model: type[Model],
    items: list[dict[str, Any]],
    names: list[str],
    consistency: Consistency,
    deadline: float,
) -> None:
    """Set ``item[name]`` on each of ``items`` to its related documents, in the related model's key order.

    Raises ``BadRequest`` for a name that is no relation of ``model``, and
    whatever the reads raise (``NoLeader``, ``SlotFrozen``...) at ``deadline``
    (a ``time.monotonic()`` value).
    """
    for name in names:
        relation = model.relations.get(name)
        if relation is None:
            known = ", ".join(sorted(model.relations)) or "none"
            raise BadRequest(f"{model.name} has no relation {name!r} (it has: {known})", param="include")
        child, field = relation.model, relation.field
        keys = [item[model.primary_key] for item in items]

        def lookup(values: list[Any], child_name: str = child.name, by: str = field) -> dict[str, Any]:
            return {"lookup": {"model": child_name, "field": by, "values": values}, "consistency": consistency.value}

        if child.co_located_with(model):
            results = await router.read_keys(keys, lookup, consistency, deadline)
        else:
            results = await router.scatter(lookup(keys), consistency, deadline)
        children: dict[str, list[dict[str, Any]]] = {}
        for result in results:
            for doc in result["items"]:
                refs = doc[field] if isinstance(doc[field], list) else [doc[field]]
                for ref in refs:
                    children.setdefault(ujson.dumps(ref), []).append(doc)
        for item in items:
            related = children.get(ujson.dumps(item[model.primary_key]), [])
            item[name] = sorted(related, key=lambda d: value_key(d[child.primary_key]))
