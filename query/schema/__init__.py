"""Typed schema export of an app: JSON Schema, OpenAPI 3.1, TypeScript, JSDoc and a Python client.

``docraft schema --format F`` prints ``export_text(app, F, routes)``; a
dispatcher serves ``openapi_document(app, routes)`` at ``GET /_schema/openapi.json``.
``routes`` are the dispatcher's, from the node's route table (``node.routes``);
only the OpenAPI export needs them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from query.app import App
from query.schema.jsdoc import jsdoc
from query.schema.jsonschema import json_schemas
from query.schema.openapi import openapi_document
from query.schema.python import python_client
from query.schema.routes import SCHEMA_ROUTE, RouteDoc
from query.schema.typescript import typescript

Render = Callable[[App, Sequence[RouteDoc]], str]


def _of_app(render: Callable[[App], str]) -> Render:
    return lambda app, routes: render(app)


def _json(build: Callable[[App, Sequence[RouteDoc]], Any]) -> Render:
    return lambda app, routes: json.dumps(build(app, routes), indent=2, ensure_ascii=False) + "\n"


FORMATS: dict[str, Render] = {
    "typescript": _of_app(typescript),
    "jsdoc": _of_app(jsdoc),
    "jsonschema": _json(lambda app, routes: json_schemas(app)),
    "openapi": _json(openapi_document),
    "python": _of_app(python_client),
}


def export_text(app: App, format_name: str, routes: Sequence[RouteDoc]) -> str:
    """``app``'s schema in ``format_name`` (a key of ``FORMATS``) as the text of one file.

    ``routes`` are the dispatcher's (see ``openapi_document``). Raises
    ``ValueError`` for an unknown format, or when the TypeScript, JSDoc or
    Python export would declare two types of one name (a model called ``Page``).
    """
    render = FORMATS.get(format_name)
    if render is None:
        raise ValueError(f"unknown schema format {format_name!r} (known: {', '.join(FORMATS)})")
    return render(app, routes)


__all__ = [
    "FORMATS",
    "SCHEMA_ROUTE",
    "RouteDoc",
    "export_text",
    "jsdoc",
    "json_schemas",
    "openapi_document",
    "python_client",
    "typescript",
]
