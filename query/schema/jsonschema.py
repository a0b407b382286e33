"""JSON Schema (draft 2020-12) of every model of an app.

A model's schema is what ``Model.validate`` accepts: every field typed,
``required`` = the fields without a default, no other property. docraft's own
facts (version, keys, indexes, relations) ride along in ``x-docraft-*`` keys.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any

from models.model import Model
from query.app import App
from query.schema.shapes import (
    AnyOf,
    Array,
    Basic,
    Document,
    Key,
    MapOf,
    Nullable,
    PageOf,
    Shape,
    Unknown,
    shape_of_type,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"

Schema = dict[str, Any]
DocumentRef = Callable[[type[Model]], Schema]


def shape_schema(shape: Shape, document: DocumentRef) -> Schema:
    """The JSON Schema of ``shape``; ``document(model)`` gives the schema (or ``$ref``) of one document.

    Raises ``TypeError`` for ``PageOf``: a page is a whole response, described by the OpenAPI export.
    """
    if isinstance(shape, Basic):
        return {"type": shape.kind}
    if isinstance(shape, Unknown):
        return {}
    if isinstance(shape, Array):
        return {"type": "array", "items": shape_schema(shape.item, document)}
    if isinstance(shape, MapOf):
        return {"type": "object", "additionalProperties": shape_schema(shape.value, document)}
    if isinstance(shape, Nullable):
        inner = shape_schema(shape.inner, document)
        if isinstance(inner.get("type"), str):
            return {**inner, "type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}
    if isinstance(shape, AnyOf):
        return {"anyOf": [shape_schema(option, document) for option in shape.options]}
    if isinstance(shape, Document):
        return document(shape.model)
    if isinstance(shape, Key):
        return {
            **shape_schema(shape.key, document),
            "description": f"references {shape.target.name}",
            "x-docraft-ref": shape.target.name,
        }
    if isinstance(shape, PageOf):
        raise TypeError("a page is a response, not a value: see query.schema.openapi")
    raise TypeError(f"unknown shape {shape!r}")


def model_schema(model: type[Model], *, standalone: bool = True) -> Schema:
    """The JSON Schema of documents of ``model``, with ``$schema`` unless ``standalone`` is false.

    Fields hold no documents, so nothing here refers to another schema: a
    ``Ref`` field is its target's primary key type, marked ``x-docraft-ref``.
    """
    properties: dict[str, Schema] = {}
    for spec in model.fields.values():
        prop = shape_schema(shape_of_type(spec.type), _no_documents)
        if not spec.required:
            prop["default"] = copy.deepcopy(spec.default)  # the schema must not share the model's list
        properties[spec.name] = prop
    schema: Schema = {"$schema": DIALECT} if standalone else {}
    schema["title"] = model.name
    doc = model.__dict__.get("__doc__")
    if doc:
        schema["description"] = inspect.cleandoc(doc)
    schema.update(
        {
            "type": "object",
            "properties": properties,
            "required": [spec.name for spec in model.fields.values() if spec.required],
            "additionalProperties": False,
            "x-docraft-version": model.version,
            "x-docraft-primary-key": model.primary_key,
            "x-docraft-partition-key": model.partition_key,
            "x-docraft-indexes": list(model.indexes),
        }
    )
    if model.relations:
        schema["x-docraft-relations"] = {
            name: {"model": relation.model.name, "field": relation.field} for name, relation in model.relations.items()
        }
    return schema


def json_schemas(app: App) -> dict[str, Schema]:
    """One standalone JSON Schema per model of ``app``, by model name, in declaration order."""
    return {name: model_schema(model) for name, model in app.models.items()}


def _no_documents(model: type[Model]) -> Schema:
    raise TypeError(f"a field cannot hold a {model.name} document, only a Ref to one")
