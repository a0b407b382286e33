"""OpenAPI 3.1 description of a dispatcher's HTTP API for one app.

Paths: one per endpoint (with its declared methods), one bulk insert per model,
the admin routes and this document's own route (``/_schema/openapi.json``), as
the dispatcher's route table (``node.routes``) lists them, each with the
permission it needs (``x-docraft-permission``, the bearer security scheme).
Schemas are JSON Schema 2020-12, OpenAPI 3.1's dialect; ``components/schemas``
holds each model, a page of each model, ``ServedBy``, ``Alert`` and the one
error body. Every integer is ``format: int64``, the range docraft accepts, and
every operation lists the refusals any request can meet (a ``Host`` the
server does not answer to; a body too large or not JSON).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from models.model import Model
from query.app import App
from query.endpoints import CONSISTENCY_LEVELS, Endpoint, Param
from query.fingerprint import docraft_version
from query.schema.jsonschema import Schema, model_schema, shape_schema
from query.schema.oas import (
    JSON,
    SERVED_BY_LIST,
    error_responses,
    json_response,
    object_schema,
    ref,
    shared_schemas,
)
from query.schema.routes import (
    BULK_ROUTE,
    ENDPOINT_ROUTE,
    RouteDoc,
    bulk_path,
    fixed_paths,
    secure,
    security_schemes,
)
from query.schema.shapes import PageOf, Shape, result_shape, shape_of_type

OPENAPI_VERSION = "3.1.0"
DOCUMENT_PAGE = "docraft.DocumentPage"


def openapi_document(app: App, routes: Sequence[RouteDoc], mutations_by_get: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.1 document of a dispatcher serving ``app`` on ``routes``; a fresh dict on every call.

    Without ``mutations_by_get`` (a cluster's ``[http]`` setting), a mutation
    has no GET operation even where it declares one (and no path when GET is all
    it declares). ``routes`` are the dispatcher's (``node.routes.dispatcher_routes()``):
    ``/{endpoint}`` stands for one path per endpoint of ``app``, ``/_bulk/{Model}``
    for one per model, and every other route is described as it is
    (``ValueError`` for one this export does not know). Model schemas are named
    after their model; generated ones hold a dot (``User.Page``,
    ``docraft.Error``), so no model name can clash with them.
    """
    paths: dict[str, Any] = {}
    bulk: dict[str, Any] = {}
    fixed: list[RouteDoc] = []
    for route in routes:
        if route.path == ENDPOINT_ROUTE:
            endpoints = {f"/{e.name}": _endpoint_path(e, mutations_by_get) for e in app.endpoints.values()}
            paths.update({path: item for path, item in endpoints.items() if item})
        elif route.path == BULK_ROUTE:
            bulk.update({f"/_bulk/{m.name}": bulk_path(m, route.permission) for m in app.models.values()})
        else:
            fixed.append(route)
    paths.update(bulk)
    paths.update(fixed_paths(app, fixed))
    for item in paths.values():
        for method, operation in item.items():
            kinds = ("request", "body") if method == "post" else ("request",)
            for kind in kinds:
                operation["responses"].update(error_responses(kind))
    document = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": f"docraft — {app.module}",
            "version": docraft_version(),
            "description": f"The HTTP API of a docraft dispatcher serving the app module `{app.module}`.",
        },
        "paths": paths,
        "components": {"schemas": _component_schemas(app), "securitySchemes": security_schemes()},
    }
    _as_int64(document)
    return document


def _as_int64(node: Any) -> None:
    """Mark every integer schema under ``node`` ``format: int64`` (``models.types``' range), in place."""
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "integer" or (isinstance(kind, list) and "integer" in kind):
            node["format"] = "int64"
        for value in node.values():
            _as_int64(value)
    elif isinstance(node, list):
        for value in node:
            _as_int64(value)


def _document(model: type[Model]) -> Schema:
    return ref(model.name)


def _component_schemas(app: App) -> dict[str, Schema]:
    schemas: dict[str, Schema] = {name: model_schema(model, standalone=False) for name, model in app.models.items()}
    for model in app.models.values():
        item = ref(model.name)
        if model.relations:
            schemas[f"{model.name}.WithRelations"] = _with_relations(model)
            item = ref(f"{model.name}.WithRelations")
        schemas[f"{model.name}.Page"] = _page(item, f"A page of {model.name} documents")
    schemas[DOCUMENT_PAGE] = _page({"type": "object"}, "A page of documents")
    return {**schemas, **shared_schemas()}


def _with_relations(model: type[Model]) -> Schema:
    """A document as a page holds it: every field, plus the relations ``include`` embedded."""
    schema = model_schema(model, standalone=False)
    schema["title"] = f"{model.name} with included relations"
    schema["required"] = list(model.fields)  # defaults are filled in on write
    for name, relation in model.relations.items():
        schema["properties"][name] = {
            "type": "array",
            "items": ref(relation.model.name),
            "description": f"{relation.model.name} documents whose {relation.field} references this one "
            f"(with include={name})",
        }
    return schema


def _page(item: Schema, title: str) -> Schema:
    return object_schema(
        {
            "items": {"type": "array", "items": item},
            "next": {"type": ["string", "null"], "description": "pass back as the endpoint's cursor"},
            "served_by": SERVED_BY_LIST,
            "plan": {"type": "array", "description": "with explain=1: each shard's plan"},
        },
        required=("items", "next", "served_by"),
        title=title,
    )


def _endpoint_path(endpoint: Endpoint, mutations_by_get: bool) -> dict[str, Any]:
    doc = inspect.getdoc(endpoint.func) or ""
    shape = result_shape(endpoint)
    if isinstance(shape, PageOf):
        result = ref(DOCUMENT_PAGE if shape.model is None else f"{shape.model.name}.Page")
    else:
        value = shape_schema(shape, _document)
        result = object_schema({"result": value, "served_by": SERVED_BY_LIST}, required=("result", "served_by"))
    reserved = _reserved_params(endpoint, shape) if endpoint.kind == "query" else []
    served = ("GET", "POST") if endpoint.kind == "query" or mutations_by_get else ("POST",)
    methods = [m for m in endpoint.methods if m in served]  # the only ones EndpointHandler serves
    item: dict[str, Any] = {}
    for method in methods:
        operation: dict[str, Any] = {
            "operationId": endpoint.name if len(methods) == 1 else f"{endpoint.name}_{method.lower()}",
            "tags": ["queries" if endpoint.kind == "query" else "mutations"],
            "summary": doc.splitlines()[0] if doc else endpoint.name,
            "description": doc,
        }
        if method == "GET":
            operation["parameters"] = [_query_param(endpoint, p) for p in endpoint.params.values()] + reserved
        else:
            if reserved:
                operation["parameters"] = reserved
            operation["requestBody"] = _body(endpoint)
        operation["responses"] = {
            "200": json_response("The endpoint's answer", result),
            **error_responses(endpoint.kind),
        }
        item[method.lower()] = secure(operation, endpoint.permission)
    return item


def _param_schema(endpoint: Endpoint, param: Param) -> Schema:
    schema = shape_schema(shape_of_type(param.type), _document)
    if not param.required:
        schema["default"] = param.default
    if param.name == endpoint.shard_key:
        schema["description"] = "shard key: picks the shard"
    return schema


def _query_param(endpoint: Endpoint, param: Param) -> dict[str, Any]:
    schema = _param_schema(endpoint, param)
    spec: dict[str, Any] = {"name": param.name, "in": "query", "required": param.required, "schema": schema}
    kinds = schema.get("type")
    if "array" in (kinds if isinstance(kinds, list) else [kinds]):
        spec.update(style="form", explode=False)  # tags=a,b
    return spec


def _body(endpoint: Endpoint) -> dict[str, Any]:
    params = endpoint.params.values()
    schema = object_schema(
        {p.name: _param_schema(endpoint, p) for p in params}, required=tuple(p.name for p in params if p.required)
    )
    return {"required": any(p.required for p in params), "content": {JSON: {"schema": schema}}}


def _reserved_params(endpoint: Endpoint, shape: Shape) -> list[dict[str, Any]]:
    """``consistency`` and ``explain`` on every read; ``include`` on reads of pages whose model has relations."""
    levels = {"type": "string", "enum": list(CONSISTENCY_LEVELS), "default": endpoint.consistency}
    explain = {"type": "boolean", "description": "true (or 1): answer each shard's plan in plan"}
    params: list[dict[str, Any]] = [
        {"name": "consistency", "in": "query", "required": False, "schema": levels},
        {"name": "explain", "in": "query", "required": False, "schema": explain},
    ]
    model = shape.model if isinstance(shape, PageOf) else None
    if model is not None and model.relations:
        names = {"type": "array", "items": {"type": "string", "enum": list(model.relations)}}
        include = {"name": "include", "in": "query", "required": False, "schema": names}
        params.append({**include, "style": "form", "explode": False})
    return params
