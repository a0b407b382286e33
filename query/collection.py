"""One model's documents on one replica, with their sorted indexes.

Documents are kept by primary key in a ``SortedDict``; every declared index
is a ``SortedList`` of index entries, ordered as ``(value key, primary key)``
pairs would be (``_index_entry``: flat tuples, which compare faster), and
``slot_keys`` holds each hash slot's primary keys in a ``SortedList``, so a
slot range's documents can be paged in ``(slot, primary key)`` order when it
moves. Mutating methods keep them all in step; nothing here does I/O. Callers
must pass documents already validated by the model.

Reads are read-only: ``get``, ``all`` and ``scan_index`` return copies the
caller owns, so no reader (app query code, a mutation, a lookup for
``include=``, a router embedding related documents) can change what is
stored behind ``put``'s back, where the content hash and rollback would miss
it. The ``stored*`` accessors lend the stored documents themselves, for code
that only reads them, such as the planner (it filters on them and copies only
the page it returns): never change or hand out a lent document.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import ujson
from sortedcontainers import SortedDict, SortedList

from models.json_values import copy_document
from models.model import Model
from query.ordering import KEY_MAX, SortKey, value_key

HASH_MODULUS = 2**128


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text (keys sorted): what document hashes and request digests hash."""
    return ujson.dumps(value, sort_keys=True, escape_forward_slashes=False)


def document_hash(collection: str, doc: dict[str, Any], text: str | None = None) -> int:
    """A 128-bit hash of one document's canonical JSON, tagged with its collection.

    ``text`` is ``canonical_json(doc)`` when the caller has it already, else ``None``.
    """
    tagged = collection + "\0" + (canonical_json(doc) if text is None else text)
    return int.from_bytes(hashlib.blake2b(tagged.encode(), digest_size=16).digest(), "big")


class Collection:
    """Documents and indexes; ``content_hash`` is the sum of every document's hash.

    The sum is order-independent and updated on each change, so equal contents
    give equal hashes however they were reached, at O(1) cost per write. The
    same sums and counts are kept per hash slot (``slot_hashes``,
    ``slot_counts``; slots with no document have no entry), for moving slots.
    """

    def __init__(self, model: type[Model], slot_of: Callable[[Any], int]) -> None:
        """An empty collection of ``model``; ``slot_of`` maps a partition key to its hash slot
        (``consensus.slots.slot_of``: the storage layer does not decide how keys are placed)."""
        self.model = model
        self._slot_of = slot_of
        self.docs: SortedDict = SortedDict()
        self.indexes: dict[str, SortedList] = {name: SortedList() for name in model.indexes}
        self.slot_keys: dict[int, SortedList] = {}  # slot -> its documents' primary keys; no empty slot
        self.slot_counts: dict[int, int] = {}
        self.slot_hashes: dict[int, int] = {}
        self.content_hash = 0

    def __len__(self) -> int:
        return len(self.docs)

    def __contains__(self, key: Any) -> bool:
        """Whether a document with primary key ``key`` is stored."""
        return value_key(key) in self.docs

    def get(self, key: Any) -> dict[str, Any] | None:
        """A copy of the document with primary key ``key``, or ``None``."""
        doc = self.stored(key)
        return None if doc is None else copy_document(doc)

    def all(self) -> list[dict[str, Any]]:
        """Copies of every document, in primary-key order."""
        return [copy_document(doc) for doc in self.docs.values()]

    def scan_index(
        self, field: str, low: SortKey | None, high: SortKey | None, reverse: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Copies of the documents whose ``field`` key lies in [low, high], in (field, primary key) order."""
        return map(copy_document, self.stored_by_index(field, low, high, reverse))

    def stored(self, key: Any) -> dict[str, Any] | None:
        """The stored document with primary key ``key``, lent (see the module docstring), or ``None``."""
        doc: dict[str, Any] | None = self.docs.get(value_key(key))
        return doc

    def stored_by_key(
        self, low: SortKey | None = None, high: SortKey | None = None, reverse: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Stored documents, lent, in primary-key order, ``low`` to ``high`` inclusive (``None``: unbounded)."""
        for pk in self.docs.irange(low, high, reverse=reverse):
            yield self.docs[pk]

    def stored_by_index(
        self, field: str, low: SortKey | None, high: SortKey | None, reverse: bool = False
    ) -> Iterator[dict[str, Any]]:
        """Stored documents, lent, whose ``field`` key lies in [low, high], in (field, primary key) order."""
        index = self.indexes[field]
        # A value key is a prefix of its entries (sorting before them); KEY_MAX after it sorts after them.
        maximum = None if high is None else (*high, KEY_MAX)
        for entry in index.irange(low, maximum, reverse=reverse):
            yield self.docs[entry[-1]]

    def slot_of(self, doc: dict[str, Any]) -> int:
        """The hash slot of ``doc``'s partition key (a co-located child's is its parent's)."""
        return self.slot_of_key(doc[self.model.partition_key])

    def slot_of_key(self, value: Any) -> int:
        """The hash slot of a partition key value."""
        return self._slot_of(value)

    def stored_in_slots(self, first: int, last: int, after: SortKey | None = None) -> Iterator[dict[str, Any]]:
        """Stored documents, lent, whose slot is in ``first..last``, in (slot, primary key) order,
        starting after the position ``after`` = ``(slot, primary key)`` when given."""
        start = first if after is None else max(first, after[0])
        for slot in range(start, last + 1):
            keys = self.slot_keys.get(slot)
            if keys is None:
                continue
            pks = keys.irange(after[1], inclusive=(False, True)) if after is not None and slot == after[0] else keys
            for pk in pks:
                yield self.docs[pk]

    def put(self, doc: dict[str, Any], slot: int | None = None, text: str | None = None) -> dict[str, Any] | None:
        """Store ``doc`` (insert or replace), which the collection now owns; return the document it replaced.

        ``slot`` (``slot_of(doc)``) and ``text`` (``canonical_json(doc)``) are given when the caller
        has them already, else ``None``.
        """
        pk = value_key(doc[self.model.primary_key])
        old: dict[str, Any] | None = self.docs.get(pk)
        if old is not None:
            self._unindex(old, pk)
        self.docs[pk] = doc
        for name, index in self.indexes.items():
            index.add(_index_entry(doc.get(name), pk))
        if slot is None:
            slot = self.slot_of(doc)
        digest = document_hash(self.model.name, doc, text)
        keys = self.slot_keys.get(slot)
        if keys is None:
            keys = self.slot_keys[slot] = SortedList()
        keys.add(pk)
        self.slot_counts[slot] = self.slot_counts.get(slot, 0) + 1
        self.slot_hashes[slot] = (self.slot_hashes.get(slot, 0) + digest) % HASH_MODULUS
        self.content_hash = (self.content_hash + digest) % HASH_MODULUS
        return old

    def load(self, docs: Iterable[dict[str, Any]]) -> None:
        """Store ``docs`` into this empty collection, which now owns them: what ``put`` of each would give,
        with each index and key list sorted once rather than grown a document at a time (a restart
        loading a snapshot). Raises ``ValueError`` if the collection is not empty or two documents share
        a primary key."""
        if self.docs:
            raise ValueError(f"{self.model.name}: load fills an empty collection only")
        name, primary_key = self.model.name, self.model.primary_key
        by_pk: dict[SortKey, dict[str, Any]] = {}
        by_slot: dict[int, list[SortKey]] = {}
        entries: dict[str, list[SortKey]] = {field: [] for field in self.indexes}
        for doc in docs:
            pk = value_key(doc[primary_key])
            if pk in by_pk:
                raise ValueError(f"{name}: primary key {doc[primary_key]!r} is stored twice")
            by_pk[pk] = doc
            for field, index_entries in entries.items():
                index_entries.append(_index_entry(doc.get(field), pk))
            slot = self.slot_of(doc)
            by_slot.setdefault(slot, []).append(pk)
            digest = document_hash(name, doc)
            self.slot_hashes[slot] = (self.slot_hashes.get(slot, 0) + digest) % HASH_MODULUS
            self.content_hash = (self.content_hash + digest) % HASH_MODULUS
        self.docs.update(by_pk)
        for field, index_entries in entries.items():
            self.indexes[field].update(index_entries)
        for slot, pks in by_slot.items():
            self.slot_keys[slot] = SortedList(pks)
            self.slot_counts[slot] = len(pks)

    def remove(self, key: Any) -> dict[str, Any] | None:
        """Delete the document with primary key ``key``; return it (no longer stored), or ``None``."""
        pk = value_key(key)
        old: dict[str, Any] | None = self.docs.pop(pk, None)
        if old is not None:
            self._unindex(old, pk)
        return old

    def _unindex(self, doc: dict[str, Any], pk: SortKey) -> None:
        for name, index in self.indexes.items():
            index.remove(_index_entry(doc.get(name), pk))
        slot, digest = self.slot_of(doc), document_hash(self.model.name, doc)
        self.slot_keys[slot].remove(pk)
        if self.slot_counts[slot] == 1:
            del self.slot_counts[slot], self.slot_hashes[slot], self.slot_keys[slot]
        else:
            self.slot_counts[slot] -= 1
            self.slot_hashes[slot] = (self.slot_hashes[slot] - digest) % HASH_MODULUS
        self.content_hash = (self.content_hash - digest) % HASH_MODULUS


def _index_entry(value: Any, pk: SortKey) -> SortKey:
    """An index's entry for a document with ``value`` and primary key ``pk``: ``(*value_key(value), pk)``.

    Entries compare as ``(value_key(value), pk)`` pairs do, as a value key is ``(0,)`` or ``(1, value)``.
    """
    return (0, pk) if value is None else (1, value, pk)
