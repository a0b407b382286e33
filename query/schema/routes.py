"""OpenAPI paths of the routes that are not app endpoints (bulk insert, admin, metrics, health checks, this
document), and security.

Which routes there are, and the permission each needs, is the node's route
table (``node.routes``): the caller passes its routes in as ``RouteDoc``s.
Here is what their requests and answers look like.
"""

from __future__ import annotations

from typing import Any, Protocol

from models.model import Model
from query.app import App
from query.permissions import Access, Permission
from query.schema.jsonschema import Schema, shape_schema
from query.schema.oas import ALERT, ERROR, JSON, error_responses, json_response, object_schema, ref
from query.schema.shapes import shape_of_type

SCHEMA_ROUTE = "/_schema/openapi.json"
ENDPOINT_ROUTE = "/{endpoint}"
BULK_ROUTE = "/_bulk/{Model}"
BEARER = "bearer"
# Answers that are not JSON, by path.
_MEDIA_TYPES = {"/metrics": "text/plain"}


class RouteDoc(Protocol):
    """What the OpenAPI document needs to know of a route (``node.routes.Route`` is one)."""

    @property
    def path(self) -> str: ...

    @property
    def methods(self) -> tuple[str, ...]: ...

    @property
    def summary(self) -> str: ...

    @property
    def permission(self) -> Permission | Access: ...


def security_schemes() -> dict[str, Any]:
    """``components/securitySchemes``: the bearer token clients send."""
    bearer = {
        "type": "http",
        "scheme": "bearer",
        "description": "a token made by `docraft user add`; without one, a client may do what the cluster "
        "file's [auth] anonymous grants (nothing unless it says so)",
    }
    return {BEARER: bearer}


def secure(operation: dict[str, Any], permission: Permission | Access) -> dict[str, Any]:
    """``operation`` with its security requirement, ``x-docraft-permission`` and 401/403 answers; changed in place.

    A public route needs nothing; an admin route a token; any other a token or,
    where the cluster grants it, none.
    """
    if permission is Access.PUBLIC:
        operation["security"] = []
        return operation
    operation["security"] = [{BEARER: []}] if permission is Permission.ADMIN else [{BEARER: []}, {}]
    operation["x-docraft-permission"] = permission.value
    operation["responses"] = {**operation["responses"], **error_responses("auth")}
    return operation


def bulk_path(model: type[Model], permission: Permission | Access) -> dict[str, Any]:
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
    return {"post": secure(post, permission)}


def fixed_paths(app: App, routes: list[RouteDoc]) -> dict[str, Any]:
    """The paths of ``routes`` (routes without a ``{name}`` part); ``ValueError`` for one not described here."""
    operations = _operations(app)
    paths: dict[str, Any] = {}
    for route in routes:
        if route.path not in operations:
            raise ValueError(f"the OpenAPI export does not describe the route {route.path}")
        operation_id, answer, body, errors = operations[route.path]
        summary = route.summary.replace("`", "")
        for method in route.methods:
            operation: dict[str, Any] = {"operationId": operation_id, "tags": ["admin"], "summary": summary}
            if body is not None:
                operation["requestBody"] = {"required": True, "content": {JSON: {"schema": body}}}
            media_type = _MEDIA_TYPES.get(route.path, JSON)
            operation["responses"] = {
                "200": {"description": summary, "content": {media_type: {"schema": answer}}},
                **(error_responses(errors) if errors else {}),
            }
            paths.setdefault(route.path, {})[method.lower()] = secure(operation, route.permission)
    return paths


def _operations(app: App) -> dict[str, tuple[str, Schema, Schema | None, str]]:
    """By path: operation id, answer schema, request body schema (or ``None``), error kind (``oas.ERRORS``)."""
    shard = object_schema(
        {
            "id": {"type": "string"},
            "epoch": {"type": ["integer", "null"], "description": "the highest slot version the group committed"},
            "slots": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2},
                "description": "inclusive [first, last] slot ranges",
            },
            "slot_count": {"type": "integer"},
            "documents": {"type": ["integer", "null"]},
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
        "/_admin/cluster": (
            "cluster",
            object_schema(
                {
                    "epoch": {"type": "integer", "description": "the slot map's epoch"},
                    "pid": {"type": "integer", "description": "the answering process's id"},
                    "shards": {"type": "array", "items": shard},
                    "moves": {"type": "array", "items": {"type": "object"}, "description": "slot moves and progress"},
                },
                required=("epoch", "pid", "shards", "moves"),
            ),
            None,
            "",
        ),
        "/_admin/alerts": (
            "alerts",
            object_schema({"active": alerts, "recent": alerts}, required=("active", "recent")),
            None,
            "",
        ),
        "/_admin/fingerprint": (
            "accept_fingerprint",
            object_schema({"shards": by_shard}, required=("shards",)),
            object_schema({"fingerprint": fingerprint}, required=("fingerprint",)),
            "fingerprint",
        ),
        "/_admin/migrate": (
            "migrate",
            object_schema({"dry_run": {"type": "boolean"}, "shards": by_shard}, required=("dry_run", "shards")),
            migration,
            "migrate",
        ),
        SCHEMA_ROUTE: ("openapi", {"type": "object"}, None, ""),
        "/metrics": ("metrics", {"type": "string", "description": "Prometheus text format"}, None, ""),
        "/livez": ("livez", _health("live"), None, ""),
        "/readyz": ("readyz", _health("ready"), None, "health"),
    }


def _health(verdict: str) -> Schema:
    """A health route's answer when it passes: ``{verdict: true, "checks": [...], "failed": []}``."""
    check = object_schema(
        {"name": {"type": "string"}, "ok": {"type": "boolean"}, "reason": {"type": "string"}},
        required=("name", "ok"),
    )
    checks = {"type": "array", "items": check}
    failed = {"type": "array", "items": {"type": "string"}}
    return object_schema(
        {verdict: {"type": "boolean"}, "checks": checks, "failed": failed}, required=(verdict, "checks", "failed")
    )
