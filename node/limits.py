"""How much one request may ask of a server: the cluster file's ``[limits]``, and the 4xx for each.

    [limits]                        # optional; every setting a positive integer
    body_bytes = 4194304            # a request body (413 payload_too_large)
    bulk_documents = 10000          # documents in one POST /_bulk/{Model} (413 payload_too_large)
    page_limit = 1000               # the largest `limit` an endpoint takes (400 bad_request)
    include_names = 8               # distinct relation names in one include= (400 bad_request)
    json_depth = 32                 # containers nested in a JSON body (400 bad_request)
    [limits.page_limits]            # per endpoint, instead of page_limit
    get_user = 5000

Integers are 64-bit signed wherever they enter: ``models.types`` checks typed
values (parameters, documents, CSV cells) and ``check_json`` every JSON body.
A body over ``body_bytes`` is refused before it is read (``BodyLimit``), with
the JSON error a client can parse, not a dropped connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import ujson
from tornado import httputil
from tornado.http1connection import HTTP1Connection
from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError
from tornado.web import Application

from models.errors import BadRequest, PayloadTooLarge
from models.types import INT64_MAX, INT64_MIN
from query.endpoints import LIMIT_PARAM, Endpoint

MiB = 1024 * 1024
MAX_JSON_DEPTH = 512  # the highest json_depth a cluster file may set: checking recurses that deep
# How long a refused body may keep arriving after its 413 was sent (see BodyLimit), in seconds.
LINGER = 5.0
# A batch a router sends a shard (/_shard/...) may be larger than the client's request that made it: validation
# fills in defaults. Cluster members' requests may be this many times body_bytes.
INTERNAL_BODY_FACTOR = 4
INTERNAL_PATHS = "/_shard/"
_SETTINGS = ("body_bytes", "bulk_documents", "page_limit", "include_names", "json_depth")


@dataclass(frozen=True)
class Limits:
    """``[limits]``: the most one request may send or ask for; see the module's docstring."""

    body_bytes: int = 4 * MiB
    bulk_documents: int = 10_000
    page_limit: int = 1000
    include_names: int = 8
    json_depth: int = 32
    page_limits: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    def body_limit_of(self, path: str) -> int:
        """The most bytes a request body to ``path`` may have (``INTERNAL_BODY_FACTOR`` times more for ``/_shard/``)."""
        return self.body_bytes * INTERNAL_BODY_FACTOR if path.startswith(INTERNAL_PATHS) else self.body_bytes

    def page_limit_of(self, endpoint: str) -> int:
        """The largest ``limit`` ``endpoint`` takes."""
        return self.page_limits.get(endpoint, self.page_limit)

    def page_arguments(self, endpoint: Endpoint, args: dict[str, Any], given: Collection[str]) -> dict[str, Any]:
        """``args`` with ``endpoint``'s ``limit`` held to its ceiling; ``given`` names the arguments the client sent.

        A ``limit`` the client sent over the ceiling is ``BadRequest``; a
        default over it is lowered to it (the page then has a ``next``).
        """
        limit = args.get(LIMIT_PARAM) if LIMIT_PARAM in endpoint.params else None
        ceiling = self.page_limit_of(endpoint.name)
        if not isinstance(limit, int) or limit <= ceiling:
            return args
        if LIMIT_PARAM not in given:
            return {**args, LIMIT_PARAM: ceiling}
        raise BadRequest(
            f"limit {limit} is over {endpoint.name}'s ceiling of {ceiling} ([limits] page_limit): "
            "follow the page's next cursor for more",
            param=LIMIT_PARAM,
            ceiling=ceiling,
        )

    def includes(self, value: Any) -> list[str]:
        """The relation names of an ``include`` value (``"orders,tags"``), each once, in order.

        Raises ``BadRequest`` for more than ``include_names`` distinct names.
        """
        names = list(dict.fromkeys(n for n in ("" if value is None else str(value)).split(",") if n))
        if len(names) > self.include_names:
            raise BadRequest(
                f"include names {len(names)} relations, more than the {self.include_names} allowed "
                "([limits] include_names)",
                param="include",
            )
        return names

    def check_bulk(self, docs: list[Any]) -> None:
        """Raise ``PayloadTooLarge`` for more documents than one bulk request may carry; nothing is stored then."""
        if len(docs) > self.bulk_documents:
            raise PayloadTooLarge(
                f"{len(docs)} documents in one bulk request, more than {self.bulk_documents} "
                "([limits] bulk_documents): send them in smaller batches; nothing was stored",
                limit=self.bulk_documents,
            )

    def check_json(self, value: Any) -> None:
        """Raise ``BadRequest`` naming where (``$.docs[3].id``) a JSON value nests containers deeper than
        ``json_depth`` or holds an integer a 64-bit signed integer cannot."""
        self._check(value, [], 1)

    def _check(self, value: Any, path: list[Any], depth: int) -> None:
        if value.__class__ is int:
            if not INT64_MIN <= value <= INT64_MAX:
                where = json_path(path)
                raise BadRequest(
                    f"the request body holds an integer beyond 64 bits at {where} ({INT64_MIN} to {INT64_MAX})",
                    path=where,
                )
            return
        entries = value.items() if value.__class__ is dict else enumerate(value) if value.__class__ is list else ()
        if entries and depth > self.json_depth:
            where = json_path(path)
            raise BadRequest(
                f"the request body nests more than {self.json_depth} containers, at {where} ([limits] json_depth)",
                path=where,
            )
        for step, item in entries:
            if item.__class__ in _CHECKED:
                path.append(step)
                self._check(item, path, depth + 1)
                path.pop()


_CHECKED = (int, dict, list)


def json_path(steps: list[Any]) -> str:
    """Keys and indexes from the root as a JSONPath: ``["docs", 3, "id"]`` is ``$.docs[3].id``."""
    return "$" + "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in steps)


def parse_limits(table: Any) -> Limits:
    """The ``[limits]`` table (``None`` if absent) as ``Limits``; raises ``ValueError`` naming the setting at fault."""
    table = {} if table is None else table
    if not isinstance(table, dict):
        raise ValueError("[limits] must be a table")
    unknown = sorted(set(table) - {*_SETTINGS, "page_limits"})
    if unknown:
        raise ValueError(f"[limits] has no setting {unknown[0]!r} (known: {', '.join(_SETTINGS)}, page_limits)")
    for name in _SETTINGS:
        if name in table:
            _positive(table[name], f"[limits] {name}")
    if table.get("json_depth", 1) > MAX_JSON_DEPTH:
        raise ValueError(f"[limits] json_depth must be at most {MAX_JSON_DEPTH}")
    per_endpoint = table.get("page_limits", {})
    if not isinstance(per_endpoint, dict):
        raise ValueError("[limits.page_limits] must be a table of endpoint names and ceilings")
    for endpoint, ceiling in per_endpoint.items():
        _positive(ceiling, f"[limits.page_limits] {endpoint}")
    settings = {name: table[name] for name in _SETTINGS if name in table}
    return Limits(**settings, page_limits=MappingProxyType(dict(per_endpoint)))


def _positive(value: Any, what: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")


# -- refusing a body that is too large, before reading it ------------------------------------------


def http_server(application: Application, limits: Limits, **options: Any) -> HTTPServer:
    """An ``HTTPServer`` for ``application`` that refuses bodies over ``limits.body_limit_of`` with a JSON 413.

    ``options`` are ``HTTPServer``'s (``xheaders``, ``ssl_options``...). A
    body that declares its length is refused before any of it is read; a
    chunked one is read, without being kept, up to twice the largest limit,
    then refused; beyond that Tornado closes the connection with a bare 400.
    """
    cap = 2 * INTERNAL_BODY_FACTOR * limits.body_bytes
    buffered = max(cap, MiB)  # a connection's read buffer must also hold headers (64 KiB) and a body chunk (64 KiB)
    return HTTPServer(BodyLimit(application, limits), max_body_size=cap, max_buffer_size=buffered, **options)


class BodyLimit(httputil.HTTPServerConnectionDelegate):
    """Wraps an application: every request whose body is over its limit is answered 413 in the error shape.

    A request that declares a longer ``Content-Length`` is answered at once and
    its connection closed (after taking, for up to ``LINGER`` seconds, what
    the client still sends, so that closing does not reset the connection
    before the client has read the answer); the application never sees it.
    """

    def __init__(self, application: Application, limits: Limits) -> None:
        self.application = application
        self.limits = limits

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        return _LimitedMessage(self.application.start_request(server_conn, request_conn), request_conn, self.limits)

    def on_close(self, server_conn: object) -> None:
        self.application.on_close(server_conn)


class _LimitedMessage(httputil.HTTPMessageDelegate):
    """One request on its way to the application, counted byte by byte."""

    def __init__(
        self, inner: httputil.HTTPMessageDelegate, connection: httputil.HTTPConnection, limits: Limits
    ) -> None:
        self.inner = inner
        self.connection = connection
        self.limit = limits.body_bytes
        self.limits = limits
        self.received = 0

    def headers_received(
        self, start_line: httputil.RequestStartLine | httputil.ResponseStartLine, headers: httputil.HTTPHeaders
    ) -> Awaitable[None] | None:
        if isinstance(start_line, httputil.RequestStartLine):
            self.limit = self.limits.body_limit_of(start_line.path)
        declared = _content_length(headers)
        if declared is not None and declared > self.limit and isinstance(self.connection, HTTP1Connection):
            stream = self.connection.detach()  # Tornado reads no more of this connection: it is ours to answer
            refusing = asyncio.ensure_future(_refuse_and_close(stream, self._refusal(declared), declared))
            _REFUSING.add(refusing)  # the loop keeps only a weak reference to a task
            refusing.add_done_callback(_REFUSING.discard)
            return None
        return self.inner.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self.received += len(chunk)
        if self.received > self.limit:
            return None  # too large already: not kept, answered in finish
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        if self.received <= self.limit:
            self.inner.finish()
            return
        self.inner.on_connection_close()  # drop what it buffered
        status, headers, body = self._refusal(self.received)
        self.connection.write_headers(httputil.ResponseStartLine("HTTP/1.1", 413, status), headers, body)
        self.connection.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()

    def _refusal(self, size: int) -> tuple[str, httputil.HTTPHeaders, bytes]:
        error = PayloadTooLarge(
            f"the request body is {size} bytes, more than the {self.limit} allowed here ([limits] body_bytes)",
            limit=self.limit,
        )
        body = ujson.dumps(error.to_json(), escape_forward_slashes=False).encode()
        headers = httputil.HTTPHeaders(
            {"Content-Type": "application/json; charset=UTF-8", "Content-Length": str(len(body))}
        )
        return "Payload Too Large", headers, body


_REFUSING: set[asyncio.Future[None]] = set()


def _content_length(headers: httputil.HTTPHeaders) -> int | None:
    text = headers.get("Content-Length")
    return int(text) if text is not None and text.strip().isdigit() else None


async def _refuse_and_close(stream: IOStream, refusal: tuple[str, httputil.HTTPHeaders, bytes], declared: int) -> None:
    """Send the 413 on a detached connection, take up to ``declared`` bytes for ``LINGER`` seconds, and close."""
    reason, headers, body = refusal
    headers["Connection"] = "close"
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.get_all())
    try:
        await stream.write(f"HTTP/1.1 413 {reason}\r\n{head}\r\n".encode("latin-1") + body)
        deadline = asyncio.get_running_loop().time() + LINGER
        taken = 0
        while taken < declared:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            taken += len(await asyncio.wait_for(stream.read_bytes(64 * 1024, partial=True), remaining))
    except (StreamClosedError, TimeoutError):
        pass
    finally:
        stream.close()
