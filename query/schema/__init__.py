"""Typed schema export of an app: JSON Schema, OpenAPI 3.1, TypeScript and JSDoc.

``docraft schema --format F`` prints ``export_text(app, F)``; a dispatcher
serves ``openapi_document(app)`` at ``GET /_schema/openapi.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from query.app import App
from query.schema.jsdoc import jsdoc
from query.schema.jsonschema import json_schemas
from query.schema.openapi import openapi_document
from query.schema.routes import SCHEMA_ROUTE
from query.schema.typescript import typescript


def _json(build: Callable[[App], Any]) -> Callable[[App], str]:
    return lambda app: json.dumps(build(app), indent=2, ensure_ascii=False) + "\n"


FORMATS: dict[str, Callable[[App], str]] = {
    "typescript": typescript,
    "jsdoc": jsdoc,
    "jsonschema": _json(json_schemas),
    "openapi": _json(openapi_document),
}


def export_text(app: App, format_name: str) -> str:
    """``app``'s schema in ``format_name`` (a key of ``FORMATS``) as the text of one file.

    Raises ``ValueError`` for an unknown format, or when the TypeScript or
    JSDoc export would declare two types of one name (a model called ``Page``).
    """
    render = FORMATS.get(format_name)
    if render is None:
        raise ValueError(f"unknown schema format {format_name!r} (known: {', '.join(FORMATS)})")
    return render(app)


__all__ = [
    "FORMATS",
    "SCHEMA_ROUTE",
    "export_text",
    "jsdoc",
    "json_schemas",
    "openapi_document",
    "typescript",
]
