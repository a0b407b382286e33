"""What endpoints see of a shard: ``ReadView`` for queries, ``WriteView`` for mutations.

A ``WriteView`` records an undo entry for every change, so the state machine
can roll a failed mutation back and keep multi-document writes atomic. It
writes or deletes a document only if the group may write its hash slot now
(``fence``): a slot being moved away, or held elsewhere, refuses the write.

Every document either view hands out is a copy the endpoint owns: changing
it changes nothing stored. The only way to change a document is ``insert``,
``put``, ``update`` or ``delete``, which keep the content hash and undo log true.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from models.errors import DocraftError, DocumentNotFound, DuplicateKey, ValidationError
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

    A mutation may read and write only its own slot (its shard key's) and the
    documents co-located with it. ``fence(slot)`` is the state machine's slot
    fence: the ``DocraftError`` refusing documents of that hash slot, or
    ``None``. The view raises it before writing or deleting such a document,
    and for a model whose partition key is its primary key also before
    ``get``, ``update`` or ``delete`` of such a key, so a document of a slot
    that moved away is never read as absent. Co-located children and ``find``
    cannot be checked by key: reading them elsewhere is the mutation's own
    error. The first refusal raised is kept in ``refusal``; the state machine
    refuses the whole command with it, even if the endpoint caught it.

    ``awaiting(model name, key)`` says whether a document with that primary
    key waits to be installed by a slot move into this group: inserting or
    putting that key is refused as taken (``DuplicateKey``), since it will be.
    """

    def __init__(
        self,
        collection_of: Callable[[type[Model]], Collection],
        now: float,
        request_id: str,
        fence: Callable[[int], DocraftError | None],
        awaiting: Callable[[str, Any], bool],
    ) -> None:
        super().__init__(collection_of)
        self.now = now
        self.request_id = request_id
        self.fence = fence
        self.awaiting = awaiting
        self.refusal: DocraftError | None = None
        self.undo: list[tuple[Collection, Any, dict[str, Any] | None]] = []

    def get(self, model: type[Model], key: Any) -> dict[str, Any] | None:
        """A copy of the document of ``model`` with primary key ``key``, or ``None``; raises the fence's
        refusal for a key of a slot this mutation may not read (see the class docstring)."""
        self._fence_key(model, key)
        return super().get(model, key)

    def insert(self, model: type[Model], doc: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and store a new document and return a copy; raises ``DuplicateKey`` if its key is taken
        (stored, or arriving with a slot move)."""
        clean = model.validate(doc)
        self.insert_validated(model, clean, self._collection_of(model).slot_of(clean))
        return copy_document(clean)

    def insert_validated(self, model: type[Model], clean: dict[str, Any], slot: int, text: str | None = None) -> Any:
        """Store ``clean``, a new document ``model.validate`` returned, whose hash slot is ``slot``, and return
        its primary key; raises as ``insert``. ``text`` is ``canonical_json(clean)`` if the caller has it.
        The collection owns ``clean`` from now on: the caller must not keep or change it (what a bulk
        insert saves is the copy ``insert`` makes, validating twice, finding the slot and the text again)."""
        collection = self._collection_of(model)
        key = clean[model.primary_key]
        if key in collection:
            raise _taken(model, key, "already exists")
        self._store(collection, clean, slot, text)
        return key

    def put(self, model: type[Model], doc: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and store a document, replacing any with the same key; return a copy. Raises
        ``DuplicateKey`` for a key arriving with a slot move."""
        collection, clean = self._collection_of(model), model.validate(doc)
        return copy_document(self._store(collection, clean, collection.slot_of(clean)))

    def update(self, model: type[Model], key: Any, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``changes`` to an existing document and return a copy; raises ``DocumentNotFound``."""
        self._fence_key(model, key)
        collection = self._collection_of(model)
        current = collection.stored(key)  # lent: read only, validate() builds the new document
        if current is None:
            raise DocumentNotFound(f"no {model.name} with {model.primary_key}={key!r}", model=model.name, key=key)
        clean = model.validate({**current, **changes, model.primary_key: key})
        return copy_document(self._store(collection, clean, collection.slot_of(clean)))

    def delete(self, model: type[Model], key: Any) -> dict[str, Any]:
        """Remove a document and return a copy of it; raises ``DocumentNotFound``."""
        self._fence_key(model, key)
        collection = self._collection_of(model)
        current = collection.stored(key)  # lent: read only
        if current is None:
            raise DocumentNotFound(f"no {model.name} with {model.primary_key}={key!r}", model=model.name, key=key)
        self._fence_slot(collection.slot_of(current))
        collection.remove(key)
        self.undo.append((collection, key, current))  # the original, for rollback; the endpoint gets a copy
        return copy_document(current)

    def _fence_key(self, model: type[Model], key: Any) -> None:
        """For a model placed by its primary key, raise the fence's refusal of ``key``'s slot, if any."""
        if model.partition_key != model.primary_key:
            return
        try:
            slot = self._collection_of(model).slot_of_key(key)
        except (TypeError, ValueError, OverflowError):  # not a JSON value: no stored document has it
            return
        self._fence_slot(slot)

    def _fence_slot(self, slot: int) -> None:
        """Raise the fence's refusal of ``slot``, if any, keeping the first one raised in ``refusal``."""
        refusal = self.fence(slot)
        if refusal is None:
            return
        if self.refusal is None:
            self.refusal = refusal
        raise refusal

    def _store(self, collection: Collection, doc: dict[str, Any], slot: int, text: str | None = None) -> dict[str, Any]:
        """Store ``doc``, of hash slot ``slot`` (and canonical JSON ``text`` if known), and return it, lent:
        the collection owns it from now on."""
        key = doc[collection.model.primary_key]
        replaced = collection.stored(key)  # lent: read only
        # A changed partition key moves the document between slots: both must be writable here.
        self._fence_slot(slot)
        if replaced is not None:
            self._fence_slot(collection.slot_of(replaced))
        if self.awaiting(collection.model.name, key):
            raise _taken(collection.model, key, "is arriving here with a slot move")
        self._check_references(collection.model, doc)
        self.undo.append((collection, key, collection.put(doc, slot, text)))
        return doc

    def _check_references(self, model: type[Model], doc: dict[str, Any]) -> None:
        """A co-located child must reference a parent that exists (it is on this shard).

        References to documents that may live on other shards are not checked here.
        """
        parent = model.co_located_parent
        if parent is None:
            return
        key_field = model.fields[model.partition_key]
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


def _taken(model: type[Model], key: Any, why: str) -> DuplicateKey:
    return DuplicateKey(f"{model.name} with {model.primary_key}={key!r} {why}", model=model.name, key=key)
