"""Steps that turn a document of model version N into version N + 1.

A model declares them with its version:

    class User(Model, version=2, migrations={2: [DropField("address"), AddField("email", "")]}):
        ...

Every step is a pure function of one document, so running a migration inside
the replicated state machine gives the same result on every replica.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Document = dict[str, Any]


class Step:
    """One change to every document; ``apply`` returns a new dict and never mutates its input."""

    def apply(self, doc: Document) -> Document:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class AddField(Step):
    name: str
    default: Any

    def apply(self, doc: Document) -> Document:
        return {**doc, self.name: doc.get(self.name, self.default)}

    def describe(self) -> str:
        return f"add {self.name} = {self.default!r}"


@dataclass(frozen=True)
class RenameField(Step):
    old: str
    new: str

    def apply(self, doc: Document) -> Document:
        out = {k: v for k, v in doc.items() if k != self.old}
        if self.old in doc:
            out[self.new] = doc[self.old]
        return out

    def describe(self) -> str:
        return f"rename {self.old} to {self.new}"


@dataclass(frozen=True)
class DropField(Step):
    name: str

    def apply(self, doc: Document) -> Document:
        return {k: v for k, v in doc.items() if k != self.name}

    def describe(self) -> str:
        return f"drop {self.name}"


@dataclass(frozen=True)
class ChangeType(Step):
    """Convert one field's value; a conversion that raises ``ValueError`` or ``TypeError`` fails the document."""

    name: str
    convert: Callable[[Any], Any]

    def apply(self, doc: Document) -> Document:
        if self.name not in doc:
            return dict(doc)
        return {**doc, self.name: self.convert(doc[self.name])}

    def describe(self) -> str:
        return f"convert {self.name} with {getattr(self.convert, '__name__', 'a function')}"


@dataclass(frozen=True)
class Transform(Step):
    """Any deterministic function of the whole document."""

    func: Callable[[Document], Document]

    def apply(self, doc: Document) -> Document:
        return self.func(dict(doc))

    def describe(self) -> str:
        return f"transform with {getattr(self.func, '__name__', 'a function')}"


def steps_between(migrations: dict[int, list[Step]], stored: int, target: int) -> list[Step]:
    """Every step from version ``stored`` to ``target``, in order; raises ``KeyError`` for a gap."""
    return [step for version in range(stored + 1, target + 1) for step in migrations[version]]
