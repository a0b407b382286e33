"""The types the TypeScript and JSDoc exports declare, built once for both.

TypeScript checks JSDoc with TypeScript's own type syntax, so one type
expression (``Array<string | null>``, ``Page<User & UserRelations>``) serves
both formats; they differ only in how a declaration is written, which is all
``query.schema.typescript`` and ``query.schema.jsdoc`` do.

Documents read back always carry every field (defaults are filled in on
write), so a model's type has no optional property; endpoint parameters with a
default are optional.

The Python export (``query.schema.python``) shares what is not TypeScript:
the docs (``model_doc``, ``field_doc``, ``param_doc``) and each endpoint's
``client_method`` (its name, doc, HTTP method and type names).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from models.errors import ERROR_CLASSES
from models.model import FieldSpec, Model
from query.app import App
from query.endpoints import CONSISTENCY_LEVELS, Endpoint
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
    pascal_case,
    result_shape,
    shape_of_type,
)

_BASIC = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean", "null": "null"}

# Names the TypeScript client itself declares at module level: a model or generated type may not take them.
RUNTIME_NAMES = ("DocraftClient", "DocraftClientOptions", "DocraftRequestError")


@dataclass(frozen=True)
class Property:
    name: str
    type: str
    optional: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Declaration:
    """A named object type (``properties``) or, when ``alias`` is set, a type alias."""

    name: str
    doc: str
    properties: tuple[Property, ...] = ()
    alias: str | None = None
    type_params: tuple[str, ...] = ()


@dataclass(frozen=True)
class Method:
    """The client method that calls one endpoint."""

    name: str
    doc: str
    params_type: str
    result_type: str
    params_optional: bool  # every parameter has a default, so the argument may be left out
    read: bool  # a query, taking ``ReadOptions``; otherwise a mutation, taking ``MutationOptions``
    http_method: Literal["GET", "POST"]  # POST (a JSON body, exact types) whenever the endpoint accepts it

    @property
    def signature(self) -> str:
        """The method's function type, e.g. ``(params: P, options?: ReadOptions) => Promise<R>``."""
        params = f"params{'?' if self.params_optional else ''}: {self.params_type}"
        return f"({params}, options?: {self.options_type}) => Promise<{self.result_type}>"

    @property
    def options_type(self) -> str:
        """The type of the method's per-call options: ``ReadOptions`` or ``MutationOptions``."""
        return "ReadOptions" if self.read else "MutationOptions"


@dataclass(frozen=True)
class TypeExports:
    declarations: tuple[Declaration, ...]
    methods: tuple[Method, ...]


def type_expression(shape: Shape) -> str:
    """``shape`` as a type expression valid in TypeScript and in JSDoc checked by ``tsc``."""
    if isinstance(shape, Basic):
        return _BASIC[shape.kind]
    if isinstance(shape, Unknown):
        return "unknown"
    if isinstance(shape, Array):
        return f"Array<{type_expression(shape.item)}>"
    if isinstance(shape, MapOf):
        return f"Record<string, {type_expression(shape.value)}>"
    if isinstance(shape, Nullable):
        return f"{type_expression(shape.inner)} | null"
    if isinstance(shape, AnyOf):
        return " | ".join(type_expression(option) for option in shape.options)
    if isinstance(shape, Document):
        return shape.model.name
    if isinstance(shape, Key):
        return type_expression(shape.key)
    if isinstance(shape, PageOf):
        if shape.model is None:
            return "Page<Record<string, unknown>>"
        relations = f" & {shape.model.name}Relations" if shape.model.relations else ""
        return f"Page<{shape.model.name}{relations}>"
    raise TypeError(f"unknown shape {shape!r}")


def type_exports(app: App) -> TypeExports:
    """Every declaration and client method of ``app``'s typed client.

    Raises ``ValueError`` when two types would share a name (a model called
    ``Page`` or ``GetUserParams``) or an endpoint is called ``constructor``.
    """
    declarations = list(_common_declarations())
    for model in app.models.values():
        declarations.append(_model(model))
        if model.relations:
            declarations.append(_relations(model))
    methods = [client_method(endpoint) for endpoint in app.endpoints.values()]
    for endpoint, method in zip(app.endpoints.values(), methods, strict=True):
        stem = pascal_case(endpoint.name)
        properties = tuple(
            Property(p.name, type_expression(shape_of_type(p.type)), not p.required, param_doc(endpoint, p.name))
            for p in endpoint.params.values()
        )
        alias = None if properties else "Record<string, never>"
        declarations.append(Declaration(f"{stem}Params", f"Parameters of `{endpoint.name}`.", properties, alias))
        result = Declaration(method.result_type, f"What `{endpoint.name}` answers.", alias=_result_expression(endpoint))
        declarations.append(result)
    api = tuple(Property(m.name, m.signature, doc=m.doc) for m in methods)
    declarations.append(Declaration("DocraftApi", f"One method per endpoint of `{app.module}`.", api))
    names = [d.name for d in declarations] + list(RUNTIME_NAMES)
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise ValueError(f"schema export: more than one type would be named {', '.join(clashes)}; rename the model")
    if "constructor" in app.endpoints:
        raise ValueError("schema export: an endpoint named 'constructor' cannot be a client method")
    return TypeExports(tuple(declarations), tuple(methods))


def doc_lines(text: str) -> list[str]:
    """``text`` as lines safe inside a ``/** ... */`` comment."""
    return inspect.cleandoc(text).replace("*/", "*\\/").splitlines() if text else []


def _model(model: type[Model]) -> Declaration:
    properties = tuple(
        Property(spec.name, type_expression(shape_of_type(spec.type)), doc=field_doc(model, spec))
        for spec in model.fields.values()
    )
    return Declaration(model.name, model_doc(model), properties)


def model_doc(model: type[Model]) -> str:
    """The doc of a model's type: its own docstring, then its version and keys (Markdown, any export)."""
    facts = f"One `{model.name}` document (model version {model.version}; primary key `{model.primary_key}`"
    if model.partition_key != model.primary_key:
        facts += f", partition key `{model.partition_key}`"
    own = model.__dict__.get("__doc__")
    return f"{inspect.cleandoc(own)}\n\n{facts})." if own else f"{facts})."


def field_doc(model: type[Model], spec: FieldSpec, literal: Callable[[Any], str] = json.dumps) -> str:
    """The doc of one field of a model's type: key roles, the model it references, its default (as ``literal``
    writes a value: JSON unless told)."""
    notes = []
    if spec.primary_key:
        notes.append("Primary key.")
    elif spec.name == model.partition_key:
        notes.append("Partition key: decides the shard.")
    target = spec.references
    if target is not None:
        notes.append(f"References `{target.name}` (by `{target.primary_key}`).")
    if not spec.required:
        notes.append(f"Default on insert: `{literal(spec.default)}`.")
    return " ".join(notes)


def _relations(model: type[Model]) -> Declaration:
    properties = tuple(
        Property(
            name,
            f"Array<{relation.model.name}>",
            optional=True,
            doc=f"`{relation.model.name}` documents whose `{relation.field}` references this one; "
            f"present with `include: [{json.dumps(name)}]`.",
        )
        for name, relation in model.relations.items()
    )
    return Declaration(f"{model.name}Relations", f"What `include` may embed in a `{model.name}`.", properties)


def param_doc(endpoint: Endpoint, name: str, literal: Callable[[Any], str] = json.dumps) -> str:
    """The doc of one parameter of an endpoint: whether it is the shard key, its default (as ``literal``
    writes a value: JSON unless told)."""
    param = endpoint.params[name]
    notes = ["Shard key: picks the shard."] if name == endpoint.shard_key else []
    if not param.required:
        notes.append(f"Default: `{literal(param.default)}`.")
    return " ".join(notes)


def _result_expression(endpoint: Endpoint) -> str:
    shape = result_shape(endpoint)
    expression = type_expression(shape)
    return expression if isinstance(shape, PageOf) else f"ValueResult<{expression}>"


def client_method(endpoint: Endpoint) -> Method:
    """The typed client's method that calls ``endpoint`` (its type names are those of the TypeScript export)."""
    kind = "Query" if endpoint.kind == "query" else "Mutation"
    http_method: Literal["GET", "POST"] = "POST" if "POST" in endpoint.methods else "GET"
    doc = "\n\n".join(filter(None, [inspect.getdoc(endpoint.func), f"{kind}: `{http_method} /{endpoint.name}`."]))
    return Method(
        name=endpoint.name,
        doc=doc,
        params_type=f"{pascal_case(endpoint.name)}Params",
        result_type=f"{pascal_case(endpoint.name)}Result",
        params_optional=not any(p.required for p in endpoint.params.values()),
        read=endpoint.kind == "query",
        http_method=http_method,
    )


def _common_declarations() -> tuple[Declaration, ...]:
    served_by = "Array<ServedBy>"
    return (
        Declaration(
            "Consistency",
            "How fresh a read must be: any replica (`stale`), the leader, or the leader after a log round trip.",
            alias=" | ".join(json.dumps(level) for level in CONSISTENCY_LEVELS),
        ),
        Declaration(
            "ErrorCode", "Every error code docraft answers with.", alias=" | ".join(map(json.dumps, ERROR_CLASSES))
        ),
        Declaration(
            "DocraftErrorBody",
            "What went wrong; the code never changes meaning.",
            (
                Property("code", "ErrorCode"),
                Property("message", "string"),
                Property("details", "Record<string, unknown>", True, "Context: the field or parameter at fault, ..."),
            ),
        ),
        Declaration("DocraftError", "The body of every non-2xx answer.", (Property("error", "DocraftErrorBody"),)),
        Declaration(
            "ServedBy",
            "The replica that answered for one shard, and where its log stood.",
            (
                Property("shard", "string"),
                Property("replica", "string"),
                Property("role", "string"),
                Property("term", "number"),
                Property("applied_index", "number"),
                Property("consistency", "Consistency", True, "Reads only: the level used."),
            ),
        ),
        Declaration(
            "ReadOptions",
            "The reserved parameters of every read.",
            (
                Property("consistency", "Consistency", True, "Default: the endpoint's own level."),
                Property("include", "Array<string>", True, "Relations to embed in each document."),
                Property("explain", "boolean", True, "Answer each shard's plan in `plan`."),
            ),
        ),
        Declaration(
            "MutationOptions",
            "Per-call options of every mutation.",
            (
                Property(
                    "idempotencyKey",
                    "string",
                    True,
                    "Sent as `Idempotency-Key` (1 to 128 of `A-Z a-z 0-9 . _ : -`) on every attempt; default: a new "
                    "random key per call. A key is applied at most once (with another request it is refused, "
                    "`idempotency_key_reused`): pass the key of a call whose outcome is unknown to retry it safely.",
                ),
            ),
        ),
        Declaration(
            "Page",
            "One page of documents; pass `next` back as the endpoint's `cursor` for the following page.",
            (
                Property("items", "Array<T>"),
                Property("next", "string | null"),
                Property("served_by", served_by),
                Property("plan", "Array<unknown>", True, "With `explain`: each shard's plan."),
            ),
            type_params=("T",),
        ),
        Declaration(
            "ValueResult",
            "What an endpoint that returns a value (every mutation) answers.",
            (Property("result", "T"), Property("served_by", served_by)),
            type_params=("T",),
        ),
    )
