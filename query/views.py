"""What endpoints see of a shard: ``ReadView`` for queries, ``WriteView`` for mutations.

A ``WriteView`` records an undo entry for every change, so the state machine
can roll a failed mutation back and keep multi-document writes atomic. It
writes or deletes a document only if the group may write its hash slot now
(``writable``): a slot being moved away, or held elsewhere, refuses the write.

Every document either view hands out is a copy the endpoint owns: changing
it changes nothing stored. The only way to change a document is ``insert``,
``put``, ``update`` or ``delete``, which keep the content hash and undo log true.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.errors import DocumentNotFound, DuplicateKey, ValidationError
from models.json_values import copy_document
from models.model import Model
from query.collection import Collection
from query.planner import Condition, Page, find


class ReadView:
    """Read access to one shard's collections; ``explain`` asks finds for their plan."""

    def __init__(self, collection_of: Callable[[type[Model]], Collection], explain: bool = False) -> None:
        self._collection_of = collection_of
        self.explain = explain

    def get(self, model: type[Model], key: Any) -> dict[str, Any] | None:
        """A copy of the document of ``model`` with primary key ``key``, or ``None``."""
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
        """One page of copies of ``model``'s documents matching ``where``; see ``query.planner.find``."""
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
    ``writable(slot)`` raises the ``DocraftError`` to refuse a write to a
    document of that hash slot with (the state machine's slot fence).
    """

    def __init__(
        self,
        collection_of: Callable[[type[Model]], Collection],
        now: float,
        request_id: str,
        writable: Callable[[int], None],
    ) -> None:
        super().__init__(collection_of)
        self.now = now
        self.request_id = request_id
        self.writable = writable
        self.undo: list[tuple[Collection, Any, dict[str, Any] | None]] = []

    def insert(self, model: type[Model], doc: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and store a new document and return a copy; raises ``DuplicateKey`` if its key is taken."""
        clean = model.validate(doc)
        collection = self._collection_of(model)
        key = clean[model.primary_key]
        if key in collection:
            raise DuplicateKey(
                f"{model.name} with {model.primary_key}={key!r} already exists",
                model=model.name,
                key=key,
            )
        return self._store(collection, clean)

    def put(self, model: type[Model], doc: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and store a document, replacing any with the same key; return a copy."""
        return self._store(self._collection_of(model), model.validate(doc))

    def update(self, model: type[Model], key: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` to an existing document and return a copy; raises ``DocumentNotFound``."""
        collection = self._collection_of(model)
        current = collection.stored(key)  # lent: read only, validate() builds the new document
        if current is None:
            raise DocumentNotFound(f"no {model.name} with {model.primary_key}={key!r}", model=model.name, key=key)
        return self._store(collection, model.validate({**current, **changes, model.primary_key: key}))

    def delete(self, model: type[Model], key: Any) -> dict[str, Any]:
        """Remove a document and return a copy of it; raises ``DocumentNotFound``."""
        collection = self._collection_of(model)
        current = collection.stored(key)  # lent: read only
        if current is None:
            raise DocumentNotFound(f"no {model.name} with {model.primary_key}={key!r}", model=model.name, key=key)
        self.writable(collection.slot_of(current))
        collection.remove(key)
        self.undo.append((collection, key, current))  # the original, for rollback; the endpoint gets a copy
        return copy_document(current)

    def _store(self, collection: Collection, doc: dict[str, Any]) -> dict[str, Any]:
        """Store ``doc`` (the collection owns it from now on) and return a copy for the endpoint."""
        key = doc[collection.model.primary_key]
        replaced = collection.stored(key)  # lent: read only
        # A changed partition key moves the document between slots: both must be writable here.
        self.writable(collection.slot_of(doc))
        if replaced is not None:
            self.writable(collection.slot_of(replaced))
        self._check_references(collection.model, doc)
        self.undo.append((collection, key, collection.put(doc)))
        return copy_document(doc)

    def _check_references(self, model: type[Model], doc: dict[str, Any]) -> None:
        """A co-located child must reference a parent that exists (it is on this shard).

        References to documents that may live on other shards are not checked here.
        """
        key_field = model.fields[model.partition_key]
        parent = key_field.references
        if parent is None or not model.co_located_with(parent):
            return
        value = doc[key_field.name]
        if value not in self._collection_of(parent):
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
