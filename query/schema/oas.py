"""Building blocks of the OpenAPI export: references, object schemas, responses, the error table.

Which error codes each kind of call can answer with lives here, by code;
``models.errors`` decides their statuses, so a status changes in one place.
"""

from __future__ import annotations

import inspect
from typing import Any

from models.errors import ERROR_CLASSES
from query.endpoints import CONSISTENCY_LEVELS
from query.schema.jsonschema import Schema

JSON = "application/json"

# Generated component names hold a dot, which no Python class name (so no model name) can: they never clash.
ERROR = "docraft.Error"
SERVED_BY = "docraft.ServedBy"
ALERT = "docraft.Alert"

_CALL = ("bad_request", "endpoint_failed", "no_leader", "code_mismatch", "replica_flagged", "migration_pending")
ERRORS: dict[str, tuple[str, ...]] = {
    "query": (*_CALL, "shard_unavailable"),
    "mutation": (*_CALL, "document_not_found", "duplicate_key", "validation_failed", "outcome_unknown"),
    "bulk": ("bad_request", "no_leader", "code_mismatch", "replica_flagged", "migration_pending", "outcome_unknown"),
    "fingerprint": ("bad_request", "fingerprint_refused", "no_leader", "replica_flagged", "outcome_unknown"),
    "migrate": ("bad_request", "not_found", "migration_refused", "no_leader", "replica_flagged", "outcome_unknown"),
    "auth": ("unauthorized", "forbidden"),  # every route that needs a permission
    "health": ("not_ready",),  # GET /readyz
    "request": ("host_not_allowed",),  # every operation (node.browsers)
    "body": ("payload_too_large", "unsupported_media_type"),  # every operation with a body (node.limits)
}


def ref(name: str) -> Schema:
    """A reference to ``components/schemas/<name>``."""
    return {"$ref": f"#/components/schemas/{name}"}


def object_schema(
    properties: dict[str, Schema], required: tuple[str, ...] = (), title: str = "", closed: bool = True
) -> Schema:
    """An object with ``properties``; ``closed`` forbids any other property."""
    schema: Schema = {"title": title} if title else {}
    schema.update(type="object", properties=properties, required=list(required), additionalProperties=not closed)
    return schema


def json_response(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


def error_responses(kind: str) -> dict[str, Any]:
    """One response per status the error codes of ``kind`` map to, described by those codes.

    Codes the error table does not hold (any more) are skipped.
    """
    by_status: dict[int, list[str]] = {}
    for code in ERRORS[kind]:
        cls = ERROR_CLASSES.get(code)
        if cls is not None:
            by_status.setdefault(cls.status, []).append(code)
    responses: dict[str, Any] = {}
    for status, codes in sorted(by_status.items()):
        reasons = [f"- `{code}`: {_first_line(ERROR_CLASSES[code].__doc__)}" for code in codes]
        response = json_response("\n".join(reasons), ref(ERROR))
        if "no_leader" in codes:
            retry = {"description": "with no_leader: seconds to wait", "schema": {"type": "integer"}}
            response["headers"] = {"Retry-After": retry}
        responses[str(status)] = response
    return responses


def shared_schemas() -> dict[str, Schema]:
    """The component schemas every app's document has: ``ServedBy``, ``Alert`` and ``Error``, by component name."""
    error = object_schema(
        {
            "code": {"type": "string", "enum": list(ERROR_CLASSES)},
            "message": {"type": "string"},
            "details": {"type": "object", "description": "context: the field or parameter at fault, ..."},
        },
        required=("code", "message"),
    )
    served_by = object_schema(
        {
            "shard": {"type": "string"},
            "replica": {"type": "string"},
            "role": {"type": "string"},
            "term": {"type": "integer"},
            "applied_index": {"type": "integer"},
            "consistency": {"type": "string", "enum": list(CONSISTENCY_LEVELS), "description": "reads only"},
        },
        required=("shard", "replica", "role", "term", "applied_index"),
        title="The replica that answered for one shard",
        closed=False,
    )
    alert = object_schema(
        {
            "kind": {"type": "string"},
            "shard": {"type": "string"},
            "replica": {"type": ["string", "null"]},
            "index": {"type": ["integer", "null"]},
            "digests": {"type": "object", "additionalProperties": {"type": "string"}},
            "message": {"type": "string"},
            "raised_at": {"type": "number"},
            "cleared_at": {"type": ["number", "null"]},
            "active": {"type": "boolean"},
        },
        required=("kind", "shard", "replica", "index", "digests", "message", "raised_at", "cleared_at", "active"),
        title="An integrity alert",
    )
    return {
        SERVED_BY: served_by,
        ALERT: alert,
        ERROR: object_schema({"error": error}, required=("error",), title="The body of every non-2xx answer"),
    }


SERVED_BY_LIST: Schema = {"type": "array", "items": ref(SERVED_BY)}


def _first_line(doc: str | None) -> str:
    return inspect.cleandoc(doc or "").split("\n", 1)[0]
