"""OpenAPI paths of the routes that are not app endpoints: bulk insert, admin, this document."""

from __future__ import annotations

from typing import Any

from models.model import Model
from query.app import App
from query.schema.jsonschema import Schema, shape_schema
from query.schema.oas import ALERT, ERROR, JSON, error_responses, json_response, object_schema, ref
from query.schema.shapes import shape_of_type

SCHEMA_ROUTE = "/_schema/openapi.json"


def bulk_path(model: type[Model]) -> dict[str, Any]:
    """``POST /_bulk/<Model>``: documents in, one ``{"ok": key}`` or error per document out."""
    key = shape_schema(shape_of_type(model.fields[model.primary_key].type), lambda m: ref(m.name))
    outcome = {"oneOf": [object_schema({"ok": key}, required=("ok",)), ref(ERROR)]}
    body = object_schema({"docs": {"type": "array", "items": ref(model.name)}}, required=("docs",))
    answer = object_schema({"results": {"type": "array", "items": outcome}}, required=("results",))
    post = {
        "operationId": f"bulk_insert_{model.name}",
        "tags": ["bulk"],
        "summary": f"Insert many {model.name} documents; one result per document, in order",
        "requestBody": {"required": True, "content": {JSON: {"schema": body}}},
        "responses": {"200": json_response("One result per document", answer), **error_responses("bulk")},
    }
    return {"post": post}


def admin_paths(app: App) -> dict[str, Any]:
    """The dispatcher's admin routes and ``SCHEMA_ROUTE``."""
    shard = object_schema(
        {
            "id": {"type": "string"},
            "slots": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
            "leader": {"type": ["string", "null"]},
            "replicas": {"type": "array", "items": {"type": "object"}},
        },
        required=("id", "slots", "leader", "replicas"),
        closed=False,
    )
    alerts = {"type": "array", "items": ref(ALERT)}
    fingerprint = {"type": "string", "minLength": 64, "maxLength": 64, "description": "hex SHA-256 of the app code"}
    migration = object_schema(
        {
            "model": {"type": "string", "enum": list(app.models)},
            "to": {"type": "integer", "description": "the model version the code declares"},
            "dry_run": {"type": "boolean", "default": False},
        },
        required=("model", "to"),
    )
    by_shard = {"type": "object", "additionalProperties": True, "description": "by shard id"}
    return {
        "/_admin/cluster": _admin(
            "get",
            "cluster",
            "Shards, slot ranges, leaders and replica status",
            object_schema({"shards": {"type": "array", "items": shard}}, required=("shards",)),
        ),
        "/_admin/alerts": _admin(
            "get",
            "alerts",
            "Active and recent integrity alerts",
            object_schema({"active": alerts, "recent": alerts}, required=("active", "recent")),
        ),
        "/_admin/fingerprint": _admin(
            "post",
            "accept_fingerprint",
            "Record new app code on every shard (docraft accept-code)",
            object_schema({"shards": by_shard}, required=("shards",)),
            body=object_schema({"fingerprint": fingerprint}, required=("fingerprint",)),
            errors="fingerprint",
        ),
        "/_admin/migrate": _admin(
            "post",
            "migrate",
            "Migrate a model to the code's version on every shard, or only plan it",
            object_schema({"dry_run": {"type": "boolean"}, "shards": by_shard}, required=("dry_run", "shards")),
            body=migration,
            errors="migrate",
        ),
        SCHEMA_ROUTE: _admin("get", "openapi", "This document", {"type": "object"}),
    }


def _admin(
    method: str, operation_id: str, summary: str, answer: Schema, body: Schema | None = None, errors: str = ""
) -> dict[str, Any]:
    operation: dict[str, Any] = {"operationId": operation_id, "tags": ["admin"], "summary": summary}
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
    operation["responses"] = {"200": json_response(summary, answer), **(error_responses(errors) if errors else {})}
    return {method: operation}
