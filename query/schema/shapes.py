"""The JSON shapes schema export walks: one tree for field, parameter and result types.

Field and parameter types are ``ValueType`` objects; endpoint results are
Python annotations (``Page[User]``, ``dict[str, Any]``, a ``Model`` class).
Both become a ``Shape`` here, so each output format (JSON Schema, TypeScript,
JSDoc) walks one kind of tree.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

from models.model import Model
from models.types import ListOf, Optional, Ref, Reference, Scalar, ValueType
from query.endpoints import Endpoint
from query.planner import Page

Primitive = Literal["string", "integer", "number", "boolean", "null"]

_PRIMITIVES: dict[Any, Primitive] = {str: "string", int: "integer", float: "number", bool: "boolean"}


@dataclass(frozen=True)
class Basic:
    """A JSON primitive; ``integer`` and ``number`` differ in JSON Schema only."""

    kind: Primitive


@dataclass(frozen=True)
class Unknown:
    """Any JSON value: the annotation says nothing docraft can export."""


@dataclass(frozen=True)
class Array:
    item: Shape


@dataclass(frozen=True)
class MapOf:
    """A JSON object with arbitrary keys (``dict[str, X]``)."""

    value: Shape


@dataclass(frozen=True)
class Nullable:
    inner: Shape


@dataclass(frozen=True)
class AnyOf:
    options: tuple[Shape, ...]


@dataclass(frozen=True)
class Document:
    """One document of ``model``."""

    model: type[Model]


@dataclass(frozen=True)
class Key:
    """The primary key of a ``target`` document (a ``Ref[target]`` field)."""

    target: type[Model]
    key: Shape


@dataclass(frozen=True)
class PageOf:
    """A page of documents of ``model``, or of unknown documents for a bare ``Page``; top level only."""

    model: type[Model] | None


Shape = Basic | Unknown | Array | MapOf | Nullable | AnyOf | Document | Key | PageOf


def shape_of_type(value_type: ValueType) -> Shape:
    """The shape of a field's or parameter's ``ValueType``; ``TypeError`` for a kind it does not know."""
    if isinstance(value_type, Scalar):
        return Basic(_PRIMITIVES[value_type.python_type])
    if isinstance(value_type, Optional):
        return Nullable(shape_of_type(value_type.inner))
    if isinstance(value_type, ListOf):
        return Array(shape_of_type(value_type.item))
    if isinstance(value_type, Reference):
        return Key(value_type.target, shape_of_type(value_type.key))
    raise TypeError(f"no schema for value type {value_type.name!r}")


def shape_of_annotation(annotation: Any) -> Shape:
    """The shape of a result annotation; what it cannot describe is ``Unknown``, never an error.

    ``Page`` is a top-level result only (see ``result_shape``); nested, it is ``Unknown``.
    """
    if annotation in _PRIMITIVES:
        return Basic(_PRIMITIVES[annotation])
    if annotation is None or annotation is type(None):
        return Basic("null")
    if isinstance(annotation, type) and issubclass(annotation, Model) and annotation is not Model:
        return Document(annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is list or origin is list:
        return Array(shape_of_annotation(args[0]) if args else Unknown())
    if annotation is dict or origin is dict:
        return MapOf(shape_of_annotation(args[1]) if len(args) == 2 else Unknown())
    if origin in (typing.Union, types.UnionType):
        options = tuple(shape_of_annotation(a) for a in args if a is not type(None))
        inner = options[0] if len(options) == 1 else AnyOf(options)
        return Nullable(inner) if type(None) in args else inner
    if origin is Ref and len(args) == 1:
        target = args[0]
        return Key(target, shape_of_type(target.fields[target.primary_key].type))
    return Unknown()


def result_shape(endpoint: Endpoint) -> Shape:
    """What a successful call of ``endpoint`` yields: ``PageOf`` for a query returning a ``Page``,
    otherwise the shape of the ``result`` value."""
    returns = endpoint.returns
    if endpoint.kind == "query" and (returns is Page or typing.get_origin(returns) is Page):
        args = typing.get_args(returns)
        model = args[0] if args and isinstance(args[0], type) and issubclass(args[0], Model) else None
        return PageOf(model)
    return shape_of_annotation(returns) if returns is not None else Unknown()


def pascal_case(name: str) -> str:
    """``get_user_orders`` -> ``GetUserOrders``: the stem of an endpoint's type names."""
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part)
