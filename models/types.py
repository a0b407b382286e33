"""Value types of model fields and endpoint parameters.

A ``ValueType`` checks a JSON value (``check``) and parses the text a URL
query string or a CSV cell carries (``parse``). Both raise ``ValueError``
with a message a person can act on; callers add the field or parameter name.
Every value they let through is valid JSON: floats are finite, and integers
are 64-bit signed (``INT64_MIN`` to ``INT64_MAX``), as every JSON reader with
64-bit integers (and the OpenAPI export's ``format: int64``) can hold them.
"""

from __future__ import annotations

import math
import types
import typing
from typing import Any

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class ValueType:
    """One scalar, optional or list type; immutable."""

    name: str = "any"

    def check(self, value: Any) -> Any:
        """Return ``value`` in canonical form, or raise ``ValueError``."""
        raise NotImplementedError

    def parse(self, text: str) -> Any:
        """Parse ``text`` (from a URL or CSV) into a checked value."""
        raise NotImplementedError


class Scalar(ValueType):
    def __init__(self, python_type: type) -> None:
        self.python_type = python_type
        self.name = python_type.__name__

    def check(self, value: Any) -> Any:
        """A float is finite (JSON has no NaN or infinity); an int given for one becomes a float; an int fits
        in 64 bits."""
        kind = self.python_type
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"expected {self.name}, got a boolean")
        if kind is float and isinstance(value, int):
            try:
                return float(value)
            except OverflowError:
                raise ValueError("expected a finite float, got an integer too large for one") from None
        if not isinstance(value, kind):
            raise ValueError(f"expected {self.name}, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a finite float, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool):
            _check_int64(value)
        return value

    def parse(self, text: str) -> Any:
        """Python's own syntax for ints and floats; ``nan``, ``inf``, overflowing ``1e999`` and ints beyond
        64 bits are refused."""
        kind = self.python_type
        if kind is str:
            return text
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError(f"expected a boolean (true/false), got {text!r}")
        try:
            value = kind(text.strip())
        except ValueError:
            raise ValueError(f"expected {self.name}, got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise ValueError(f"expected a finite float, got {text!r}")
        if isinstance(value, int) and not isinstance(value, bool):
            _check_int64(value)
        return value


def _check_int64(value: int) -> None:
    """Raise ``ValueError`` for an integer a 64-bit signed integer cannot hold."""
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"expected a 64-bit signed integer ({INT64_MIN} to {INT64_MAX}), got {value}")


class Optional(ValueType):
    def __init__(self, inner: ValueType) -> None:
        self.inner = inner
        self.name = f"{inner.name} | None"

    def check(self, value: Any) -> Any:
        return None if value is None else self.inner.check(value)

    def parse(self, text: str) -> Any:
        return None if text == "" else self.inner.parse(text)


class ListOf(ValueType):
    """A list; from text it is comma-separated (``tags=a,b``)."""

    def __init__(self, item: ValueType) -> None:
        self.item = item
        self.name = f"list[{item.name}]"

    def check(self, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError(f"expected a list, got {type(value).__name__}")
        return [self.item.check(v) for v in value]

    def parse(self, text: str) -> Any:
        if text == "":
            return []
        return [self.item.parse(part) for part in text.split(",")]


class Reference(ValueType):
    """A reference to a document of another model: holds that document's primary key."""

    def __init__(self, target: Any) -> None:
        self.target = target  # a Model subclass (models.model imports this module)
        self.key = target.fields[target.primary_key].type
        self.name = f"Ref[{target.name}]"

    def check(self, value: Any) -> Any:
        return self.key.check(value)

    def parse(self, text: str) -> Any:
        return self.key.parse(text)


ModelT = typing.TypeVar("ModelT")


class Ref(typing.Generic[ModelT]):
    """Annotation for a field that references another model: ``user_id: Ref[User]``.

    The stored value is the referenced document's primary key; ``list[Ref[X]]``
    holds several. Never instantiated.
    """


_SCALARS = (str, int, float, bool)


def value_type_of(annotation: Any) -> ValueType:
    """Map a Python annotation (``int``, ``str | None``, ``list[str]``) to a ``ValueType``.

    Raises ``TypeError`` for annotations docraft cannot store.
    """
    if annotation in _SCALARS:
        return Scalar(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1 and len(args) == 2:
            return Optional(value_type_of(rest[0]))
    if origin is list and len(args) == 1:
        return ListOf(value_type_of(args[0]))
    if origin is Ref and len(args) == 1:
        return Reference(args[0])
    raise TypeError(
        f"unsupported field type {annotation!r}: use str, int, float, bool, Ref[Model], X | None or list[X]"
    )


def references_of(value_type: ValueType) -> Reference | None:
    """The reference inside ``Ref[X]``, ``Ref[X] | None`` or ``list[Ref[X]]``, if any."""
    while isinstance(value_type, Optional | ListOf):
        value_type = value_type.inner if isinstance(value_type, Optional) else value_type.item
    return value_type if isinstance(value_type, Reference) else None
