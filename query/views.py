"""What endpoints see of a shard: ``ReadView`` for queries, ``WriteView`` for mutations.

A ``WriteView`` records an undo entry for every change, so the state machine
can roll a failed mutation back and keep multi-document writes atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.errors import DocumentNotFound, DuplicateKey, ValidationError
from models.model import Model
from query.collection import Collection
from query.planner import Condition, Page, find


class ReadView:
    """Read access to one shard's collections; ``explain`` asks finds for their plan."""

    def __init__(self, collection_of: Callable[[type[Model]], Collection], explain: bool = False) -> None:
        self._collection_of = collection_of
        self.explain = explain

    def get(self, model: type[Model], key: Any) -> dict[str, Any] | None:
        """The document of ``model`` with primary key ``key``, or ``None``. Do not mutate it."""
        return self._collection_of(model).get(key)

    def find(
        self,
        model: type[Model],
        where: Mapping[str, Condition] | None = None,
        *,
        order_by: str | None = None,
        descending: bool = False,
        limit: int = 100,
        after: str | None = None,
    ) -> Page[Any]:
        """One page of ``model``'s documents matching ``where``; see ``query.planner.find``."""
        return find(
            self._collection_of(model),
            where or {},
            order_by=order_by,
            descending=descending,
            limit=limit,
            after=after,
            explain=self.explain,
        )


class WriteView(ReadView):
    """Read-write access inside one replicated command.

    ``now`` (seconds since the epoch) and ``request_id`` are stamped by the
    leader into the command, so every replica sees the same values.
    """

    def __init__(self, collection_of: Callable[[type[Model]], Collection], now: float, request_id: str) -> None:
        super().__init__(collection_of)
        self.now = now
        self.request_id = request_id
        self.undo: list[tuple[Collection, Any, dict[str, Any] | None]] = []

    def insert(self, model: type[Model], doc: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and store a new document; raises ``DuplicateKey`` if its key is taken."""
        clean = model.validate(doc)
        collection = self._collection_of(model)
        key = clean[model.primary_key]
        if collection.get(key) is not None:
            raise DuplicateKey(
                f"{model.name} with {model.primary_key}={key!r} already exists",
                model=model.name,
                key=key,
            )
        self._store(collection, clean)
        return clean

    def put(self, model: type[Model], doc: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and store a document, replacing any with the same key."""
        clean = model.validate(doc)
        self._store(self._collection_of(model), clean)
        return clean

    def update(self, model: type[Model], key: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` to an existing document; raises ``DocumentNotFound``."""
        collection = self._collection_of(model)
        current = collection.get(key)
        if current is None:
            raise DocumentNotFound(f"no {model.name} with {model.primary_key}={key!r}", model=model.name, key=key)
        clean = model.validate({**current, **changes, model.primary_key: key})
        self._store(collection, clean)
        return clean

    def delete(self, model: type[Model], key: Any) -> dict[str, Any]:
        """Remove a document and return it; raises ``DocumentNotFound``."""
        collection = self._collection_of(model)
        old = collection.remove(key)
        if old is None:
            raise DocumentNotFound(f"no {model.name} with {model.primary_key}={key!r}", model=model.name, key=key)
        self.undo.append((collection, key, old))
        return old

    def _store(self, collection: Collection, doc: dict[str, Any]) -> None:
        self._check_references(collection.model, doc)
        key = doc[collection.model.primary_key]
        self.undo.append((collection, key, collection.put(doc)))

    def _check_references(self, model: type[Model], doc: dict[str, Any]) -> None:
        """A co-located child must reference a parent that exists (it is on this shard).

        References to documents that may live on other shards are not checked here.
        """
        key_field = model.fields[model.partition_key]
        parent = key_field.references
        if parent is None or not model.co_located_with(parent):
            return
        value = doc[key_field.name]
        if self._collection_of(parent).get(value) is None:
            raise ValidationError(
                f"{model.name}.{key_field.name}: no {parent.name} with {parent.primary_key}={value!r}",
                model=model.name,
                field=key_field.name,
            )

    def rollback(self) -> None:
        """Undo every change made through this view, newest first."""
        for collection, key, old in reversed(self.undo):
            if old is None:
                collection.remove(key)
            else:
                collection.put(old)
        self.undo.clear()
