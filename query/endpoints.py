"""Declaring endpoints: ``@query`` for reads, ``@mutation`` for writes.

    @query(shard_key="id")
    def get_user(db: ReadView, id: int | None = None, country: str | None = None) -> Page: ...

    @mutation(shard_key="id", methods=("GET", "POST"))
    def insert_user(db: WriteView, id: int, first_name: str) -> dict: ...

    @mutation(shard_key="id", permission="admin")
    def erase_user(db: WriteView, id: int) -> dict: ...

Parameters are typed by their annotations and parsed from the URL query
string or a JSON body. ``shard_key`` names the parameter whose value decides
the shard: a query given it reads one shard, a query without it reads every
shard and the router merges; a mutation must always have it, because a write
runs inside exactly one shard's state machine. ``permission`` names what a
caller needs to call it (``query.permissions``): ``read`` for a query and
``write`` for a mutation unless declared otherwise.

Two parameter names mean something to routers: a query's ``cursor`` takes a
page's ``next`` (routers hand cursors out sealed and accept only those,
``query.cursors``), and any endpoint's ``limit`` is capped by the cluster's
``[limits]`` (``node.limits``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from models.errors import BadRequest
from models.types import ListOf, Optional, ValueType, value_type_of
from query.permissions import Permission, permission_named

RESERVED_PARAMS = frozenset({"explain", "consistency", "include"})
CURSOR_PARAM = "cursor"
LIMIT_PARAM = "limit"

CONSISTENCY_LEVELS = ("stale", "leader", "linearizable")

EndpointKind = Literal["query", "mutation"]


@dataclass(frozen=True)
class Param:
    name: str
    type: ValueType
    default: Any
    required: bool


@dataclass(frozen=True)
class Endpoint:
    """A named, typed entry point of the app; immutable once declared."""

    name: str
    func: Callable[..., Any]
    kind: EndpointKind
    methods: tuple[str, ...]
    params: dict[str, Param]
    shard_key: str | None
    consistency: str = "leader"
    returns: Any = None  # what a successful call returns, for schema export: a type, a Model, Page[Model]
    permission: Permission = Permission.READ  # what a caller needs to call it

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def parse(self, query_args: Mapping[str, list[str]], body: Mapping[str, Any] | None) -> dict[str, Any]:
        """Typed arguments from the query string and an optional JSON body.

        Raises ``BadRequest`` naming the parameter that is unknown, missing,
        given twice or of the wrong type. Reserved parameters are skipped.
        """
        args: dict[str, Any] = {}
        for name, texts in query_args.items():
            if name in RESERVED_PARAMS:
                continue
            param = self._param(name)
            list_type = param.type.inner if isinstance(param.type, Optional) else param.type
            try:
                if isinstance(list_type, ListOf) and len(texts) > 1:
                    args[name] = [list_type.item.parse(t) for t in texts]
                else:
                    args[name] = param.type.parse(texts[-1])
            except ValueError as exc:
                raise BadRequest(f"parameter {name!r}: {exc}", param=name) from None
        for name, value in (body or {}).items():
            if name in RESERVED_PARAMS:
                continue
            param = self._param(name)
            if name in args:
                raise BadRequest(f"parameter {name!r} given both in the URL and the body", param=name)
            try:
                args[name] = param.type.check(value)
            except ValueError as exc:
                raise BadRequest(f"parameter {name!r}: {exc}", param=name) from None
        for name, param in self.params.items():
            if name not in args:
                if param.required:
                    raise BadRequest(f"parameter {name!r} is required", param=name)
                args[name] = param.default
        return args

    def _param(self, name: str) -> Param:
        param = self.params.get(name)
        if param is None:
            known = ", ".join(sorted(self.params)) or "none"
            raise BadRequest(f"{self.name} takes no parameter {name!r} (it takes: {known})", param=name)
        return param

    @property
    def takes_cursor(self) -> bool:
        """Whether this is a query with a ``cursor`` parameter, which takes a page's ``next``."""
        return self.kind == "query" and CURSOR_PARAM in self.params

    def shard_key_of(self, args: Mapping[str, Any]) -> Any:
        """The value that picks the shard, or ``None`` for a scatter read."""
        return None if self.shard_key is None else args.get(self.shard_key)


def _declare(
    func: Callable[..., Any],
    kind: EndpointKind,
    methods: tuple[str, ...],
    shard_key: str | None,
    permission: str | Permission,
    consistency: str = "leader",
    returns: Any = None,
) -> Endpoint:

    hints = typing.get_type_hints(func)
    signature = inspect.signature(func)
    params: dict[str, Param] = {}
    for index, (name, p) in enumerate(signature.parameters.items()):
        if index == 0:
            continue  # the database view
        if name in RESERVED_PARAMS:
            raise TypeError(f"endpoint {func.__name__}: {name!r} is a reserved parameter name")
        if name not in hints:
            raise TypeError(f"endpoint {func.__name__}: parameter {name!r} needs a type annotation")
        required = p.default is inspect.Parameter.empty
        params[name] = Param(name, value_type_of(hints[name]), None if required else p.default, required)
    if shard_key is not None and shard_key not in params:
        raise TypeError(f"endpoint {func.__name__}: shard_key {shard_key!r} is not a parameter")
    if consistency not in CONSISTENCY_LEVELS:
        raise TypeError(f"endpoint {func.__name__}: consistency must be one of {', '.join(CONSISTENCY_LEVELS)}")
    result = returns if returns is not None else hints.get("return")
    methods = tuple(m.upper() for m in methods)
    needs = permission_named(permission, f"endpoint {func.__name__}")
    return Endpoint(func.__name__, func, kind, methods, params, shard_key, consistency, result, needs)


def query(
    *,
    shard_key: str | None = None,
    methods: tuple[str, ...] = ("GET",),
    consistency: str = "leader",
    returns: Any = None,
    permission: str | Permission = Permission.READ,
) -> Callable[[Callable[..., Any]], Endpoint]:
    """Declare a read endpoint; it receives a ``ReadView`` and must not write.

    ``consistency`` is the default level (``stale``, ``leader`` or
    ``linearizable``) when a request does not name one. ``returns`` types the
    result for schema export when the return annotation does not (a Model
    class means one document of it). ``permission`` is what a caller needs
    (``read`` unless named); ``TypeError`` for a name that is no permission.
    """

    def wrap(func: Callable[..., Any]) -> Endpoint:
        return _declare(func, "query", methods, shard_key, permission, consistency, returns)

    return wrap


def mutation(
    *,
    shard_key: str,
    methods: tuple[str, ...] = ("POST",),
    returns: Any = None,
    permission: str | Permission = Permission.WRITE,
) -> Callable[[Callable[..., Any]], Endpoint]:
    """Declare a write endpoint; it runs inside the shard's state machine on a ``WriteView``.

    It must be deterministic: use ``db.now`` and ``db.request_id``, never the
    clock or randomness of the process. ``permission`` is what a caller needs
    (``write`` unless named); ``TypeError`` for a name that is no permission.
    """

    def wrap(func: Callable[..., Any]) -> Endpoint:
        endpoint = _declare(func, "mutation", methods, shard_key, permission, returns=returns)

        key = endpoint.params[shard_key]
        if not key.required or isinstance(key.type, Optional):
            raise TypeError(f"mutation {func.__name__}: shard_key {shard_key!r} must be required and not optional")
        return endpoint

    return wrap
